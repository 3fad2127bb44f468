"""Lets vLLM's LLaVA module import in a venv without torchvision (the CI's vLLM venv only).

.ci/vllm_env.sh copies this file into the venv's site-packages as ``encslim_ci_pixtral_shim.py``
with a ``.pth`` line that imports it at start-up (the engine's spawned processes included).

Why: vLLM 0.32's ``model_executor/models/llava.py`` imports its ``pixtral`` module, which imports
``_num_image_tokens`` from ``transformers.models.pixtral.image_processing_pixtral``; in transformers
5.19 that module is the torchvision image processor and imports ``torchvision`` at its top. PyPI's
torchvision is a CUDA build that does not import beside the CPU torch ("operator torchvision::nms
does not exist"), and no CPU build is on PyPI. A stub ``torchvision`` package would make transformers
believe torchvision is installed (it checks ``find_spec``) and pick torchvision image processors
everywhere. So instead, only while ``torchvision`` cannot be found, the one module vLLM needs is
answered by a stand-in that holds the torchvision-free helper vLLM imports (the same function from
transformers' PIL pixtral processor); any other name in it raises ImportError naming torchvision.
Nothing else changes: transformers sees no torchvision and uses its PIL image processors.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

TARGET = "transformers.models.pixtral.image_processing_pixtral"


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from transformers.models.pixtral.image_processing_pil_pixtral import _num_image_tokens

        module._num_image_tokens = _num_image_tokens

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)
            raise ImportError(f"{TARGET}.{name} needs torchvision, which this environment lacks "
                              "(encslim's CI vLLM venv: see .ci/vllm_pixtral_shim.py)")

        module.__getattr__ = __getattr__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET or importlib.util.find_spec("torchvision") is not None:
            return None
        return importlib.machinery.ModuleSpec(name, _Loader())


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())

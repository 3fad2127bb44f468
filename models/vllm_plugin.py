"""encslim's vLLM plugin: registers each family's vLLM model with vLLM's model registry.

vLLM finds :func:`register` through the entry point ``vllm.general_plugins`` (setup.cfg; installed
with ``pip install "encslim[vllm]"``) and calls it in each of its processes, before it reads a
model folder. A family serves its kept sets that have no stock class through a vLLM model of its
own, named by its registry record (``Family.serving = "module:Class"``): the class is registered
under its own name, which must be the architecture its checkpoints give in ``config.json``
(``architectures``), and lazily (vLLM imports it only to load such a folder). The family's
transformers classes are registered too (``Family.transformers``), so that vLLM's ``AutoConfig`` and
``AutoProcessor`` read its folders.

Families go through the registry (:mod:`encslim.models.registry`); nothing here names one. Folders
exported with a stock class (``encslim export --format llava``) need no plugin.

Importing this module imports neither vLLM nor torch.
"""

import json
import shlex
from pathlib import Path

from .registry import detect_family, families, resolve


def serving_models():
    """The vLLM models the registered families declare.

    Returns:
        ``{architecture: "module:Class"}``, the architecture being the class's name, one entry per
        family whose record has ``serving``.

    Raises:
        ValueError: two families declare classes of the same name.
    """
    models = {}
    for family in families().values():
        if family.serving is None:
            continue
        architecture = family.serving.split(":")[1]
        if architecture in models:
            raise ValueError(f"families declare two vLLM models named {architecture}: {models[architecture]} and "
                             f"{family.serving}")
        models[architecture] = family.serving
    return models


def serve_command(folder):
    """The ``vllm serve`` command for a folder of a family that has a vLLM model, else ``None``.

    The family is the registry's (:func:`~encslim.models.registry.detect_family` on ``config.json``).
    When the folder's ``architectures[0]`` is not the family's vLLM class name (Eagle v1's original
    ``EagleLlamaForCausalLM`` is vLLM's speculative-decoding draft model), the command names the class
    with ``--hf-overrides`` and the folder stays as the original code reads it. A folder whose
    ``model_type`` is not one of the family's own (MMVP's I-MoF says ``llava``) has no command: vLLM reads
    such a config with another config class (transformers' stock LLaVA), which overrides cannot change.

    Args:
        folder: a model folder (its ``config.json`` is read).

    Returns:
        ``"vllm serve FOLDER"`` (plus ``--hf-overrides '{"architectures": [...]}'`` where needed), or
        ``None``: no readable ``config.json``, its family has no vLLM model, or its ``model_type`` is not
        one of the family's.
    """
    try:
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = detect_family(config) if isinstance(config, dict) else None
    if found is None or found[0].serving is None or config.get("model_type") not in found[0].model_types:
        return None
    architecture = found[0].serving.split(":")[1]
    command = f"vllm serve {shlex.quote(str(folder))}"
    if (config.get("architectures") or [None])[0] != architecture:
        command += " --hf-overrides " + shlex.quote(json.dumps({"architectures": [architecture]}))
    return command


def register():
    """The plugin vLLM calls: registers every family's vLLM model (and its transformers classes).

    Safe to call more than once (vLLM calls it once per process; registering again replaces the entry).

    Returns:
        The architectures registered, sorted.
    """
    from vllm import ModelRegistry

    models = serving_models()
    for family in families().values():
        if family.serving is not None and family.transformers is not None:
            resolve(family.transformers)()
    for architecture, ref in models.items():
        ModelRegistry.register_model(architecture, ref)
    return sorted(models)


__all__ = ["register", "serve_command", "serving_models"]

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

from .registry import families, resolve


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


__all__ = ["register", "serving_models"]

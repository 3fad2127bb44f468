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
exported with a stock class (``encslim export --format llava``) need no plugin. A folder whose ``config.json``
carries a token budget (``token_budget``) is served under it (the family's vLLM model applies the reducer);
one whose family cannot apply that budget is refused here, with the adapter's reason.

Importing this module imports neither vLLM nor torch.
"""

import json
import shlex
from pathlib import Path

from ..errors import ConfigError, EncslimError
from .registry import detect_family, families, get_adapter, register_transformers, resolve
from .tokens import CONFIG_KEY, parse_budget


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


def check_budget(folder, config, model_type):
    """Refuse a folder whose ``config.json`` token budget its family's model cannot apply (in vLLM as anywhere).

    Args:
        folder: the model folder.
        config: its ``config.json`` as a dict.
        model_type: the family's model type of the folder.

    Raises:
        ConfigError: the budget is malformed, or the family takes none / not this one (the adapter's reason).
    """
    budget = parse_budget(config.get(CONFIG_KEY))
    if budget is None:
        return
    register_transformers()  # the family's config class reads config.json
    adapter = get_adapter(model_type)
    try:
        adapter.check_token_budget(adapter.read_config(folder), budget)
    except EncslimError as err:
        reason = str(err).removeprefix(f"token budget {budget.label}: ")
        raise ConfigError(f"carries token budget {budget.label} (config.json token_budget), which it cannot apply: "
                          f"{reason}") from None


def engine_overrides(folder):
    """The engine arguments vLLM needs, besides the folder itself, to serve a model folder.

    The family is the registry's (:func:`~encslim.models.registry.detect_family` on ``config.json``).
    When the folder's ``architectures[0]`` is not the family's vLLM class name (Eagle v1's original
    ``EagleLlamaForCausalLM`` is vLLM's speculative-decoding draft model), the class is named with
    ``hf_overrides`` and the folder stays as the original code reads it. A folder whose ``model_type`` is
    not one of the family's own (MMVP's I-MoF says ``llava``) is refused: vLLM reads such a config with
    another config class (transformers' stock LLaVA), which overrides cannot change.

    Args:
        folder: a model folder (its ``config.json`` is read).

    Returns:
        ``{}`` (no family's folder, e.g. a stock export: vLLM's own classes; or one whose config names the
        family's vLLM class) or ``{"hf_overrides": {"architectures": [class name]}}``.

    Raises:
        ConfigError: no readable ``config.json``; the folder's family has no vLLM model; its
            ``model_type`` is not one of the family's (the message says which, from "is a ..."); or it carries
            a token budget its family cannot apply (:func:`check_budget`).
    """
    try:
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"has no readable config.json ({type(err).__name__})") from None
    found = detect_family(config) if isinstance(config, dict) else None
    if found is None:
        return {}
    family = found[0]
    if family.serving is None:
        raise ConfigError(f"is a {family.name} model, which vLLM does not serve (README 'Serving' lists the "
                          "families it does)")
    if config.get("model_type") not in family.model_types:
        raise ConfigError(f"is a {family.name} model whose config.json says model_type "
                          f"'{config.get('model_type')}', which vLLM reads as another model's (this family's are "
                          f"{', '.join(family.model_types)}), whatever the overrides")
    check_budget(folder, config, config["model_type"])
    architecture = family.serving.split(":")[1]
    if (config.get("architectures") or [None])[0] == architecture:
        return {}
    return {"hf_overrides": {"architectures": [architecture]}}


def serve_command(folder):
    """The ``vllm serve`` command for a folder of a family that has a vLLM model, else ``None``.

    Args:
        folder: a model folder (its ``config.json`` is read).

    Returns:
        ``"vllm serve FOLDER"`` (plus ``--hf-overrides '{"architectures": [...]}'`` where
        :func:`engine_overrides` says so), or ``None``: no readable ``config.json``, no family's folder, its
        family has no vLLM model, its ``model_type`` is not one of the family's, or it carries a token budget its
        family cannot apply.
    """
    try:
        overrides = engine_overrides(folder)
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    except ConfigError:
        return None
    if not isinstance(config, dict) or detect_family(config) is None:
        return None
    command = f"vllm serve {shlex.quote(str(folder))}"
    if overrides:
        command += " --hf-overrides " + shlex.quote(json.dumps(overrides["hf_overrides"]))
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


__all__ = ["check_budget", "engine_overrides", "register", "serve_command", "serving_models"]

"""Which parameters train: LoRA on the LLM (peft), the fusion fully, the encoders frozen/LoRA/full.

LoRA targets are matched by their last name (``q_proj``) **inside the language model only**: a
multi-encoder model has ``q_proj`` layers in its vision encoders too (CLIP, SigLIP), and a plain
``target_modules=["q_proj"]`` would put adapters on them. So the targets are resolved here into
the full module names under ``language_model.`` and handed to peft as an explicit list.

The fusion (projector, cross-attention) is trained fully; with LoRA it goes into peft's
``modules_to_save``, so the adapter folder holds the trained projector next to the LoRA weights
and ``merge_and_unload`` puts it back into a plain model. Fully trained encoders are saved the
same way; ``--train-encoders lora`` puts LoRA on every linear layer of every encoder.
"""

import logging

from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"


def linear_layers(model, prefix):
    """Full names of the ``nn.Linear`` modules under ``prefix`` (``prefix.`` + ...)."""
    start = prefix + "."
    return [name for name, module in model.named_modules() if name.startswith(start) and isinstance(module, nn.Linear)]


def llm_lora_targets(model, targets, llm_prefix):
    """Resolve LoRA target names into full module names inside the language model.

    Args:
        model: the model.
        targets: last names of linear layers (``q_proj``), or ``("all-linear",)``.
        llm_prefix: the language model's module name (:attr:`TrainableParts.language_model`).

    Returns:
        list of full module names, sorted.

    Raises:
        ConfigError: a target matching no linear layer of the LLM (the message lists the names that exist).
    """
    layers = [n for n in linear_layers(model, llm_prefix) if not _is_output_head(model, n)]
    if tuple(targets) == (ALL_LINEAR,):
        return sorted(layers)
    by_last = {}
    for name in layers:
        by_last.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    missing = [t for t in targets if t not in by_last]
    if missing:
        raise ConfigError(
            f"LoRA target(s) {', '.join(missing)} match no linear layer of the language model; its linear layers "
            f"are {', '.join(sorted(by_last)) or 'none'} (pass them to --lora-targets, or {ALL_LINEAR})"
        )
    return sorted(name for t in targets for name in by_last[t])


def _is_output_head(model, name):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is not None and model.get_submodule(name) is head


def prepare_trainable(model, adapter, config):
    """Set what trains; wrap the model with peft when an adapter is trained.

    Args:
        model: the loaded model.
        adapter: its family's adapter (:meth:`Adapter.trainable_parts` names what can train).
        config: a :class:`~encslim.finetune.config.FinetuneConfig`.

    Returns:
        ``(model, summary)``: the model to train (a ``PeftModel`` with LoRA) and a dict with the
        ``lora_modules``, ``modules_to_save``, ``trainable`` and ``total`` parameter counts.

    Raises:
        ConfigError: an unknown layout or a LoRA target matching nothing.
    """
    parts = adapter.trainable_parts(model)
    model.requires_grad_(False)
    lora_modules, to_save = [], []
    if not config.full:
        lora_modules += llm_lora_targets(model, config.lora_targets, parts.language_model)
    else:
        model.get_submodule(parts.language_model).requires_grad_(True)
    if config.train_encoders == "lora":
        lora_modules += [n for prefix in parts.encoders.values() for n in linear_layers(model, prefix)]
    if config.uses_lora:
        if config.train_fusion:
            to_save += list(parts.fusion)
        if config.train_encoders == "full":
            to_save += list(parts.encoders.values())
        model = _wrap_lora(model, config, lora_modules, to_save)
    else:
        if config.train_fusion:
            for name in parts.fusion:
                model.get_submodule(name).requires_grad_(True)
        if config.train_encoders == "full":
            for name in parts.encoders.values():
                model.get_submodule(name).requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    summary = {"lora_modules": len(lora_modules), "modules_to_save": to_save, "trainable": trainable, "total": total}
    logger.info("trainable parameters: %d of %d (%.2f %%), %d LoRA modules", trainable, total,
                100.0 * trainable / max(total, 1), len(lora_modules))
    return model, summary


def _wrap_lora(model, config, target_modules, modules_to_save):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
        target_modules=target_modules, modules_to_save=modules_to_save or None, bias="none",
    )
    return get_peft_model(model, lora)

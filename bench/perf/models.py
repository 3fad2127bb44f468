"""The one model builder of the speed scripts: configs, random native models, saved folders.

Sizes start from the tiny backbones and tiny Llama of :mod:`encslim.models.families.native.tiny` and are
overridden per script::

    encoders = {"clip": (vision("clip", hidden_size=128, patch_size=8), 64)}
    config = build_config(encoders, text(hidden_size=256), grid=8, tokenizer=tokenizer)
    model, processor = build_model(config, tokenizer, seed=0)
    save_model(folder, model, processor)            # -> folder

or at once with the default tokenizer: ``random_model(encoders, text(...), grid=8)`` -> ``(model,
processor)``, ``write_model(folder, encoders, text(...), grid=8)`` -> ``folder``. A config for a checkpoint
that is never built (no tokenizer) takes ``vocab_size`` in ``text`` and an ``image_token_id``.
"""

from ...errors import ConfigError
from ...models.families.native.tiny import FUSION_ALIASES, TINY_BACKBONES, TINY_TEXT


def vision(backbone, **sizes):
    """The ``vision_config`` of ``backbone`` (a tiny backbone name): the tiny sizes, ``sizes`` overriding."""
    config = dict(TINY_BACKBONES[backbone][0], **sizes)
    if "hidden_sizes" in config:  # ConvNeXt: one stage per width
        config["num_stages"] = len(config["hidden_sizes"])
    return config


def text(**sizes):
    """A Llama ``text_config``: the tiny one (untied embeddings), ``sizes`` overriding."""
    return dict(TINY_TEXT["llama"], **sizes)


def build_config(encoders, text_config, fusion="A1", grid=4, tokenizer=None, image_token_id=None):
    """An ``EncslimConfig``.

    Args:
        encoders: ``{slot: (vision_config, image_size)}``, in fusion order.
        text_config: the LLM's config (see :func:`text`).
        fusion: a fusion name of :data:`encslim.models.families.native.tiny.FUSION_ALIASES` (``"A1"``, ...).
        grid: the channel-concat token grid.
        tokenizer: fills the vocabulary size and special token ids; without one ``text_config``
            needs ``vocab_size`` and ``image_token_id`` must be given.
    """
    from ...models.families.native.configuration import EncslimConfig

    if fusion not in FUSION_ALIASES:
        raise ConfigError(f"fusion '{fusion}' unknown; use one of {', '.join(FUSION_ALIASES)}")
    fusion_type, projector = FUSION_ALIASES[fusion]
    fusion_cfg = {"type": fusion_type}
    if fusion_type == "channel_concat":
        fusion_cfg.update(projector=projector, grid=grid)
    encs = [{"name": name, "vision_config": dict(vc), "image_size": size} for name, (vc, size) in encoders.items()]
    ids = {}
    if tokenizer is not None:
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        text_config = dict(text_config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, **ids)
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return EncslimConfig(text_config=text_config, encoders=encs, fusion=fusion_cfg, image_token_id=image_token_id,
                         **ids)


def build_model(config, tokenizer, seed=0):
    """``(model, processor)``: the random model ``config`` describes (weights from ``seed``), in eval mode."""
    import torch

    from ...models.families.native.modeling import EncslimForConditionalGeneration
    from ...models.families.native.adapter import register_auto_classes
    from ...models.families.native.processing import EncslimProcessor

    register_auto_classes()
    torch.manual_seed(seed)
    model = EncslimForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, EncslimProcessor.from_config(tokenizer, config)


def save_model(folder, model, processor):
    """Save ``model`` and ``processor`` (weights, config, processor, tokenizer) to ``folder``; return ``folder``."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def random_model(encoders, text_config, fusion="A1", grid=4, seed=0):
    """``(model, processor)``: :func:`build_config` with the default tokenizer, then :func:`build_model`."""
    from ...models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return build_model(build_config(encoders, text_config, fusion, grid, tokenizer), tokenizer, seed)


def write_model(folder, encoders, text_config, fusion="A1", grid=4, seed=0):
    """Save :func:`random_model` to ``folder``; return ``folder``."""
    return save_model(folder, *random_model(encoders, text_config, fusion, grid, seed))


def saved_shapes(config):
    """``{key: shape}`` of the checkpoint ``save_pretrained`` writes for ``config`` (no model built)."""
    from ...models.registry import get_adapter
    from ...models.families.native.adapter import register_auto_classes
    from ...prune.verify import expected_layouts

    register_auto_classes()
    shapes, _ = expected_layouts(get_adapter(config.model_type), config)[0]
    return shapes

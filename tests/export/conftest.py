"""Fixtures of the export tests: tiny native models with hand-set structure, probe inputs."""

import pytest


def write_native(out, fusion="A1", encoders=("clip",), seed=0, text=None, **encoder_changes):
    """Write a tiny native model whose encoder entries get ``encoder_changes`` (e.g. ``cls="keep"``).

    ``grid`` in ``encoder_changes`` sets the channel_concat fusion grid instead (pooling); ``text``
    overrides entries of the tiny LLM's config (the serving tests' head size of 32).
    """
    import torch

    from encslim.models.families.native.configuration import EncslimConfig
    from encslim.models.families.native.modeling import EncslimForConditionalGeneration
    from encslim.models.families.native.adapter import register_auto_classes
    from encslim.models.families.native.processing import EncslimProcessor
    from encslim.models.families.native.tiny import tiny_config
    from encslim.models.tokenizer import build_tokenizer

    register_auto_classes()
    tokenizer = build_tokenizer()
    base = tiny_config(fusion, encoders, tokenizer=tokenizer).to_dict()
    fusion_cfg = dict(base["fusion"])
    if "grid" in encoder_changes and fusion_cfg["type"] == "channel_concat":
        fusion_cfg["grid"] = encoder_changes.pop("grid")
    encs = [dict(e, **encoder_changes) for e in base["encoders"]]
    config = EncslimConfig(text_config=dict(base["text_config"], **(text or {})), encoders=encs, fusion=fusion_cfg,
                           image_token_id=base["image_token_id"], pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = EncslimForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    EncslimProcessor.from_config(tokenizer, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def custom_native(tmp_path_factory):
    """Factory: ``custom_native(name, fusion=..., encoders=..., **encoder_changes)`` -> folder (cached)."""
    cache = {}

    def make(name, **kwargs):
        if name not in cache:
            cache[name] = write_native(tmp_path_factory.mktemp("native") / name, **kwargs)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def tiny_hybrid_dir(tmp_path_factory):
    """A tiny random deepseek_vl_hybrid folder (siglip + sam)."""
    from encslim.models.families.deepseek_vl_hybrid.tiny import create_tiny_hybrid

    return create_tiny_hybrid(tmp_path_factory.mktemp("hybrid") / "hybrid")


def native_logits(model_dir, prompts=None, images=None):
    """``(batch, logits)`` of a native folder on probe images and chat prompts, loaded fresh."""
    import torch

    from encslim.export.common import probe_images, probe_prompts
    from encslim.models.loading import load_model

    model, processor, adapter = load_model(model_dir)
    prompts = prompts or probe_prompts(adapter, processor, 2)
    batch = processor(text=prompts, images=images or probe_images(len(prompts)))
    with torch.no_grad():
        return batch, model(**batch).logits


def leftovers(parent):
    """Hidden temporary folders an atomic write would leave behind in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)

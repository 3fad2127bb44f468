"""Tiny random native models, for the quickstart, the tests and users who want to try encslim."""

import torch

from ....errors import ConfigError
from ....files import atomic_output_dir

# Tiny vision backbones: a few layers, 32 channels; each sees the image at its own size.
TINY_BACKBONES = {
    "clip": ({"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}, 32),
    "siglip": ({"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}, 32),
    "dinov2": ({"model_type": "dinov2", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}, 32),
    "convnext": ({"model_type": "convnext", "hidden_sizes": [16, 32], "depths": [1, 1],
                  "num_stages": 2, "patch_size": 4}, 64),
    "sam": ({"model_type": "sam_vision_model", "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "patch_size": 8, "output_channels": 32, "global_attn_indexes": [1],
             "window_size": 4}, 64),
}

TINY_TEXT = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
              "tie_word_embeddings": False},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
              "tie_word_embeddings": False},
}

FUSION_ALIASES = {"A1": ("channel_concat", "linear_first"), "A2": ("channel_concat", "layernorm_first"),
                  "B": ("sequence_concat", None), "C": ("cross_attention", None),
                  "channel_concat": ("channel_concat", "linear_first"),
                  "sequence_concat": ("sequence_concat", None), "cross_attention": ("cross_attention", None)}


def tiny_config(fusion="channel_concat", encoders=("clip", "siglip", "dinov2"), text="llama",
                tokenizer=None, projector=None):
    """An ``EncslimConfig`` with tiny backbones. Slot names are the backbone names."""
    from .configuration import EncslimConfig
    from ...tokenizer import build_tokenizer

    if fusion not in FUSION_ALIASES:
        raise ConfigError(f"fusion '{fusion}' unknown; use one of {', '.join(FUSION_ALIASES)}")
    unknown = [e for e in encoders if e not in TINY_BACKBONES]
    if unknown or not encoders:
        raise ConfigError(f"unknown tiny encoder(s) {unknown}; choose from {', '.join(TINY_BACKBONES)}")
    if len(set(encoders)) != len(encoders):
        raise ConfigError(f"encoders must be distinct, got {', '.join(encoders)}")
    if text not in TINY_TEXT:
        raise ConfigError(f"text model '{text}' unknown; choose from {', '.join(TINY_TEXT)}")
    fusion_type, default_projector = FUSION_ALIASES[fusion]
    tokenizer = tokenizer or build_tokenizer()
    fusion_cfg = {"type": fusion_type}
    if fusion_type == "channel_concat":
        fusion_cfg.update(projector=projector or default_projector, grid=4)
    elif fusion_type == "cross_attention":
        fusion_cfg.update(num_queries=8, num_heads=4)
    enc_cfgs = []
    for name in encoders:
        vision, size = TINY_BACKBONES[name]
        enc = {"name": name, "vision_config": dict(vision), "image_size": size}
        if fusion_type == "sequence_concat":
            enc["grid"] = 2 if name in ("convnext", "sam") else None
        enc_cfgs.append(enc)
    text_cfg = dict(TINY_TEXT[text], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return EncslimConfig(text_config=text_cfg, encoders=enc_cfgs, fusion=fusion_cfg,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def build_tiny(fusion="channel_concat", encoders=("clip", "siglip", "dinov2"), text="llama", seed=0,
               projector=None, tokenizer=None):
    """``(model, processor)``: a tiny random native model, seeded."""
    from .modeling import EncslimForConditionalGeneration
    from .adapter import register_auto_classes
    from .processing import EncslimProcessor
    from ...tokenizer import build_tokenizer

    register_auto_classes()
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_config(fusion, encoders, text, tokenizer, projector)
    torch.manual_seed(seed)
    model = EncslimForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, EncslimProcessor.from_config(tokenizer, config)


def create_tiny(out, fusion="channel_concat", encoders=("clip", "siglip", "dinov2"), text="llama", seed=0,
                projector=None, overwrite=False):
    """Write a tiny random native model folder (weights, config, processor, tokenizer) to ``out``."""
    model, processor = build_tiny(fusion, encoders, text, seed, projector)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def create(out, *, seed=0, overwrite=False, fusion="channel_concat", encoders="clip,siglip,dinov2", text="llama"):
    """``create-tiny --family native``: :func:`create_tiny` with the CLI's spelling of the encoders (``a,b``)."""
    names = tuple(e.strip() for e in encoders.split(",") if e.strip())
    create_tiny(out, fusion=fusion, encoders=names, text=text, seed=seed, overwrite=overwrite)

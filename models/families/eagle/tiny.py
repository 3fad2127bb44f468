"""Tiny random Eagle checkpoints with the real key names and config keys (CPU tests and trials).

The towers keep every module of the real ones at small widths and depths; the input is 256 px
(CLIP at 84) instead of 1024 (CLIP at 336), the fused grid stays 32x32 (1024 image tokens).
"""

import torch

from ....errors import ConfigError
from ....files import atomic_output_dir
from .configuration import TOWER_NAMES, EagleConfig, join_towers
from .towers import tiny_specs

TINY_INPUT = 256
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}
X5 = ("clip-448", "convnext-1024", "sam-1024", "det-1024", "pix2struct-1024")


def parse_tower_list(towers):
    """Tower names from a ``,``/``;``-separated string or a list; ``ConfigError`` naming unknown ones."""
    if isinstance(towers, str):
        towers = [t for t in towers.replace(";", ",").split(",")]
    towers = [t.strip() for t in towers if t and t.strip()]
    unknown = [t for t in towers if t not in TOWER_NAMES]
    if unknown or not towers:
        raise ConfigError(f"unknown Eagle tower(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(TOWER_NAMES)}")
    if len(set(towers)) != len(towers):
        raise ConfigError(f"Eagle towers must be distinct, got {', '.join(towers)}")
    return towers


def tiny_eagle_config(towers=X5, tokenizer=None):
    from ...tokenizer import build_tokenizer

    towers = parse_tower_list(towers)
    tokenizer = tokenizer or build_tokenizer()
    specs = tiny_specs()
    return EagleConfig(
        mm_vision_tower=join_towers(towers) if len(towers) > 1 else towers[0] + ";",
        mm_projector_type="mlp2x_gelu", eagle_tower_specs={t: specs[t] for t in towers},
        eagle_input_image_size=TINY_INPUT, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, architectures=["EagleLlamaForCausalLM"], **TINY_TEXT)


def build_tiny_eagle(towers=X5, seed=0, tokenizer=None):
    """``(model, processor)``: a tiny random Eagle, seeded. Layer scales and norms get seeded noise so
    that every tower visibly changes the output."""
    from ...tokenizer import build_tokenizer
    from .modeling import EagleVisionLlamaForCausalLM, register_auto_classes
    from .processing import EagleProcessor

    register_auto_classes()
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_eagle_config(towers, tokenizer)
    torch.manual_seed(seed)
    model = EagleVisionLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.model.vision_tower.named_parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, EagleProcessor.from_config(tokenizer, config)


def create_tiny_eagle(out, towers=X5, seed=0, overwrite=False):
    """Write a tiny random Eagle folder (safetensors, config.json, tokenizer) to ``out``."""
    model, processor = build_tiny_eagle(towers, seed)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def create(out, *, seed=0, overwrite=False, towers=",".join(X5)):
    """``create-tiny --family eagle``: :func:`create_tiny_eagle` with the towers as the CLI spells them (``a,b``)."""
    create_tiny_eagle(out, towers=parse_tower_list(towers), seed=seed, overwrite=overwrite)

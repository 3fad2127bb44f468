"""A tiny random I-MoF (``create-tiny --family imof``): MMVP's config keys and key names at tiny sizes.

The config carries every key tsb0601/MMVP's LLaVA-1.5 ``config.json`` has (``mm_use_im_start_end``,
``tune_mm_mlp_adapter``, ...); CLIP at 56 px (4x4 patches), DINOv2 with a 5x5 table interpolated to 4x4.
"""

import torch

from ....files import atomic_output_dir
from .configuration import TOWERS, ImofConfig
from .modeling import ImofLlamaForCausalLM, register_auto_classes
from .processing import ImofProcessor

CLIP_TINY_SPEC = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                  "image_size": 56, "patch_size": 14, "projection_dim": 32}
DINO_TINY_SPEC = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 70}  # 5x5 table, 4x4 at 56 px
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}


def tiny_imof_config(tokenizer=None):
    from ...tokenizer import build_tokenizer

    tokenizer = tokenizer or build_tokenizer()
    return ImofConfig(
        mm_vision_tower="openai/clip-vit-large-patch14-336", mm_projector_type="mlp2x_gelu",
        mm_hidden_size=CLIP_TINY_SPEC["hidden_size"], mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True,
        tune_mm_mlp_adapter=False, imof_clip_spec=dict(CLIP_TINY_SPEC), imof_dino_spec=dict(DINO_TINY_SPEC),
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, architectures=["LlavaLlamaForCausalLM"], **TINY_TEXT)


def build_tiny_imof(seed=0, tokenizer=None):
    """``(model, processor)``: a tiny random I-MoF, seeded; the towers' weights (layer scales, norms,
    position tables) get seeded noise so that each tower visibly changes the output."""
    from ...tokenizer import build_tokenizer

    register_auto_classes()
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_imof_config(tokenizer)
    torch.manual_seed(seed)
    model = ImofLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for tower in TOWERS:
            for param in model.model.tower(tower).parameters():
                param.add_(torch.randn_like(param) * 0.05)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, ImofProcessor.from_config(tokenizer, config, template="vicuna_v1")


def create_tiny_imof(out, seed=0, overwrite=False):
    """Write a tiny random I-MoF folder (safetensors, config.json, tokenizer, processor record) to ``out``."""
    model, processor = build_tiny_imof(seed)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out

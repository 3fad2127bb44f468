"""A tiny random Eagle2 (``create-tiny --family eagle2``): Eagle2-9B's config keys and key names at tiny sizes.

The config follows nvidia/Eagle2-9B's ``config.json`` (every key of ``vision_config``, ``llm_config``), the
tokenizer adds Eagle2's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and Qwen2's chat tokens.
"""

import json
from pathlib import Path

import torch

from ....files import CONFIG_NAME, atomic_output_dir
from .configuration import CONVNEXT_SPEC_KEY, IMG_CONTEXT, IMG_END, IMG_START, MOE_VERSION, Eagle2ChatConfig
from .modeling import Eagle2ChatModel, register_auto_classes
from .processing import Eagle2Processor

TINY_SIGLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 112, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
               "model_type": "siglip_vision_model"}
TINY_CONVNEXT = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}
TINY_ORDER = ("palisiglip", "convnext-1024")
TINY_HEAD_CLASSES = 10


def tiny_eagle2_config(tokenizer, order=TINY_ORDER):
    """Eagle2-9B's config keys at tiny sizes: 112 px tiles (SigLIP 8x8 -> 4x4 after the shuffle), ConvNeXt
    at 128 px (4x4), 16 image tokens."""
    vision = {
        "model_type": "MOB", "moe_version_type": MOE_VERSION, "vision_path": "MOB:" + ";".join(order),
        "grid_size": 8, "input_image_size": 112, "image_size": 112, "convnext_img_size": 128,
        "mm_vision_select_layer": -2, "hidden_size": "lazy_calculation", "normalize_type": "siglip",
        "freeze_backbones": None, "delay_load": True, "vision_tower_convnext_path": "convnext_xxlarge.clip_laion2b_soup",
        "vision_tower_siglip_path": "siglip-so400m-patch14-448", "siglip_vision_config": dict(TINY_SIGLIP),
        CONVNEXT_SPEC_KEY: dict(TINY_CONVNEXT),
    }
    llm = {**TINY_TEXT, "vocab_size": len(tokenizer), "architectures": ["Qwen2ForCausalLM"],
           "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    return Eagle2ChatConfig(vision_config=vision, llm_config=llm, select_layer=-1, force_image_size=112,
                            downsample_ratio=0.5, template="qwen2-chat", dynamic_image_size=True, use_thumbnail=True,
                            max_dynamic_patch=12, architectures=["Eagle2ChatModel"])


def tiny_tokenizer():
    from ...tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["You are a helpful assistant. system user assistant"])
    tokenizer.add_tokens([IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


def perturb(model):
    """``model`` with seeded noise on its tower weights and on ``mlp1``'s LayerNorm affine (not the identity),
    so that each tower visibly changes the output; draws from torch's global generator."""
    with torch.no_grad():
        for param in model.vision_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for param in model.mlp1[0].parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def build_tiny_eagle2(seed=0, order=TINY_ORDER):
    """``(model, processor)``: a tiny random Eagle2, seeded; tower weights get seeded noise so each tower
    visibly changes the output."""
    register_auto_classes()
    tokenizer = tiny_tokenizer()
    config = tiny_eagle2_config(tokenizer, order)
    config.convnext_head_classes = TINY_HEAD_CLASSES
    torch.manual_seed(seed)
    model = perturb(Eagle2ChatModel(config).eval())
    config.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    model.language_model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.language_model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, Eagle2Processor.from_config(tokenizer, config)


def _save(model, folder):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder, "model.safetensors")), metadata={"format": "pt"})
    Path(folder, CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")


def create_tiny_eagle2(out, seed=0, overwrite=False):
    """Write a tiny random Eagle2 folder (safetensors with the real key names, config.json, tokenizer) to ``out``."""
    return _create(out, seed, overwrite)


def _create(out, seed=0, overwrite=False, order=TINY_ORDER):
    model, processor = build_tiny_eagle2(seed, order)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        _save(model, tmp)
        processor.save_pretrained(tmp)
    return out

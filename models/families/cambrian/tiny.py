"""Tiny random Cambrian-1 checkpoints with the real key names and config keys, and tiny encoder folders.

``create_tiny_cambrian(OUT)`` writes the checkpoint to ``OUT`` (as Cambrian's own: no encoders in it,
no encoder folders named; ``create-tiny`` names them in ``config.json``, ``record_encoders``) and one
folder per encoder in its original layout under ``OUT/encoders/``:
open_clip folders for SigLIP and ConvNeXt (``visual.trunk.*`` keys, plus a text tower and heads the
loader must ignore), transformers folders for CLIP (a whole ``CLIPModel``) and DINOv2.

Geometry, scaled down from Cambrian-8B's: a 4x4 image grid (``image_token_len`` 16, 20 image tokens
with the newlines), SigLIP 6x6 -> 4x4, CLIP 4x4, DINOv2 at 70 px (5x5, its 7x7 position table
interpolated) -> 4x4, ConvNeXt's four stages -> 8x8 (2x2 windows: the only encoder with position
embeddings, like ConvNeXt's 4x4 windows in the real model); SVA width 32 (16 heads of 2), depth 2;
sampler layers after decoder layers 0 and 2 of 4.
"""

import json
import re
from pathlib import Path

import torch

from ....files import atomic_output_dir
from .configuration import CambrianConfig

HUB_IDS = ["siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336", "facebook/dinov2-giant-res378",
           "clip-convnext-XXL-multi-stage"]
SLOTS = ["siglip", "clip", "dinov2", "convnext"]
TOKEN_LENS = [16, 16, 16, 64]
SIGLIP_TRUNK = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_hidden": 64, "patch_size": 14, "image_size": 84}
CONVNEXT_TRUNK = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "norm_eps": 1e-5}
CLIP_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
               "image_size": 56, "patch_size": 14, "projection_dim": 16}
DINO = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 98, "patch_size": 14}
SPECS = {"siglip": {"image_size": 84, "width": 32}, "clip": {"image_size": 56, "width": 32},
         "dinov2": {"image_size": 70, "width": 48}, "convnext": {"image_size": 64, "width": 120}}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}


def tiny_cambrian_config(tokenizer, slots=SLOTS):
    index = [SLOTS.index(s) for s in slots]
    return CambrianConfig(
        mm_vision_tower_aux_list=[HUB_IDS[i] for i in index], mm_vision_tower_aux_token_len_list=[TOKEN_LENS[i] for i in index],
        mm_projector_type="sva", vision_hidden_size=32, connector_depth=2, num_query_group=1, query_num_list=[16],
        image_token_len=16, image_position=20, connector_only=False, num_of_vision_sampler_layers=2,
        start_of_vision_sampler_layers=0, stride_of_vision_sampler_layers=2, mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", cambrian_encoder_specs={s: SPECS[s] for s in slots},
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, architectures=["CambrianLlamaForCausalLM"], **TINY_TEXT)


def _noisy(module, scale=0.05):
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * scale)
    return module


def _save_open_clip(folder, timm_name, trunk, overrides, preprocess, extra):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = {f"visual.trunk.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
    if timm_name.startswith("convnext"):  # timm names the layer scale gamma (Eagle's copy renames it weight)
        state = {re.sub(r"(\.blocks\.\d+)\.weight$", r"\1.gamma", k): v for k, v in state.items()}
    state.update(extra)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": False,
                                                            "image_size": overrides.get("image_size", 64)},
                            "text_cfg": {"width": 8, "layers": 1}},
              "preprocess_cfg": preprocess, "encslim_trunk": overrides}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tiny_encoders(root, seed=0):
    """Write the four tiny encoder folders under ``root``; returns ``{slot: folder}``."""
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    from ...convnext import ConvNeXt
    from .encoders import TimmViT

    root = Path(root)
    torch.manual_seed(seed + 1)
    siglip = _noisy(TimmViT(**SIGLIP_TRUNK))
    _save_open_clip(root / "siglip", "vit_so400m_patch14_siglip_384", siglip, SIGLIP_TRUNK,
                    {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
                    {"visual.trunk.attn_pool.latent": torch.randn(1, 1, 32), "text.positional_embedding": torch.randn(4, 8)})
    convnext = _noisy(ConvNeXt(CONVNEXT_TRUNK["depths"], CONVNEXT_TRUNK["dims"], 1e-5, 1e-6, 0))
    _save_open_clip(root / "convnext", "convnext_xxlarge", convnext, CONVNEXT_TRUNK,
                    {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
                    {"visual.trunk.head.norm.weight": torch.ones(64), "visual.head.proj.weight": torch.randn(16, 64)})
    clip = CLIPModel(CLIPConfig(vision_config=CLIP_VISION, text_config={
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "vocab_size": 64, "max_position_embeddings": 16}, projection_dim=16))
    _noisy(clip.vision_model)
    clip.save_pretrained(str(root / "clip"))
    dino = _noisy(Dinov2Model(Dinov2Config(**DINO)))
    dino.save_pretrained(str(root / "dinov2"))
    return {s: str(root / s) for s in SLOTS}


def build_tiny_cambrian(seed=0, tokenizer=None):
    """``(model, tokenizer)``: a tiny random Cambrian LLM + connector (no encoders attached), seeded."""
    from ...tokenizer import build_tokenizer
    from .modeling import CambrianLlamaForCausalLM, register_auto_classes

    register_auto_classes()
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_cambrian_config(tokenizer)
    torch.manual_seed(seed)
    model = CambrianLlamaForCausalLM(config).eval()
    inner = model.model
    with torch.no_grad():
        for name, param in inner.named_parameters():
            if not name.startswith(("layers.", "embed_tokens", "norm")):
                param.add_(torch.randn_like(param) * 0.05)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def create_tiny_cambrian(out, seed=0, overwrite=False, record_encoders=False):
    """Write a tiny random Cambrian folder to ``out`` and its encoder folders to ``out/encoders/<slot>``.

    Args:
        out: the folder to write.
        seed: the random seed.
        overwrite: replace an existing ``out``.
        record_encoders: name the encoder folders in ``config.json`` (``encslim_encoder_paths``, absolute), so
            that every command finds them without ``--encoder`` (default: no, as Cambrian's own checkpoints).

    Returns:
        ``{slot: folder}`` of the encoders (pass them as ``--encoder slot=folder``).
    """
    from ...external import CONFIG_KEY
    from .processing import CambrianProcessor

    model, tokenizer = build_tiny_cambrian(seed)
    paths = {s: str(Path(out).resolve() / "encoders" / s) for s in SLOTS}
    if record_encoders:
        setattr(model.config, CONFIG_KEY, paths)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        CambrianProcessor(tokenizer, model.config, {}).save_pretrained(tmp)
        write_tiny_encoders(Path(tmp) / "encoders", seed)
    return paths


def create(out, *, seed=0, overwrite=False):
    """``create-tiny --family cambrian``: the folder and its encoders, named in its ``config.json``; returns the
    note naming the encoder folders."""
    paths = create_tiny_cambrian(out, seed=seed, overwrite=overwrite, record_encoders=True)
    return ("its encoders are outside the checkpoint, as Cambrian's; config.json names their folders "
            "(encslim_encoder_paths), which every command reads; flags override them, these are the same: "
            + " ".join(f"--encoder {slot}={path}" for slot, path in paths.items()))

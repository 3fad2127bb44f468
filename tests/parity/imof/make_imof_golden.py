"""Golden outputs of I-MoF as the ORIGINAL code computes them (tsb0601/MMVP, transformers 4.31).

Builds a small random I-MoF with MMVP's own classes (``LLaVA/llava/model``: ``LlavaConfig``,
``LlavaLlamaForCausalLM``, ``CLIPVisionTower``, ``DINOVisionTower``), saves it as MMVP's trainer saves it
(transformers 4.31 ``save_pretrained`` with ``safe_serialization=False``: ``pytorch_model-*.bin`` shards,
``pytorch_model.bin.index.json``, every layer's ``rotary_emb.inv_freq``), and records on one NON-SQUARE
image: the preprocessed pixels (``mm_utils.process_images``), each tower's features, and the logits of
the full model, of each tower zeroed before its projector (the paper's mask) and of DINOv2 removed
(MMVP's own CLIP-only path, ``prepare_inputs_labels_for_multimodal``). The patches (hub downloads
replaced by builds from configs, smaller widths and depths) are listed in README.md beside this file.

Run it in its own venv (README.md), never in CI:

    /tmp/venv_mmvp/bin/python tests/parity/imof/make_imof_golden.py MMVP/LLaVA DINOV2 TOKENIZER OUT
"""

import json
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

MODEL_NAME = "openai/clip-vit-large-patch14-336"
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# widths and depths shrunk; heads of width 64 as in every CLIP and DINOv2 (encslim reads the sizes of a config
# without ``imof_*_spec`` from the checkpoint's shapes, and the head count as width // 64)
CLIP_SHRUNK = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 2,
               "projection_dim": 128}
CLIP_REAL = {"image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
DINO_SHRUNK = {"embed_dim": 128, "depth": 2, "num_heads": 2}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 2048, "tie_word_embeddings": False}
SHARD = "3MB"  # several shards and an index, as a 7B checkpoint has


def patch_hub(dinov2_src):
    """Replace MMVP's hub downloads by builds from configs (see README.md)."""
    import transformers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    sys.path.insert(0, str(dinov2_src))
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    config = CLIPVisionConfig(**CLIP_REAL, **CLIP_SHRUNK)
    CLIPVisionConfig.from_pretrained = classmethod(lambda cls, name, **kw: config)
    CLIPVisionModel.from_pretrained = classmethod(lambda cls, name, **kw: cls(config))
    CLIPImageProcessor.from_pretrained = classmethod(lambda cls, name, **kw: cls(  # the real preprocessor_config
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3, do_center_crop=True,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD))

    def hub_load(repo, name, **kw):  # dinov2/hub/backbones.py _make_dinov2_model + vit_large, shrunk
        assert (repo, name) == ("facebookresearch/dinov2", "dinov2_vitl14"), (repo, name)
        return DinoVisionTransformer(img_size=518, patch_size=14, mlp_ratio=4, init_values=1.0, ffn_layer="mlp",
                                     block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
                                     interpolate_offset=0.1, block_fn=partial(NestedTensorBlock,
                                                                              attn_class=MemEffAttention),
                                     **DINO_SHRUNK)

    torch.hub.load = hub_load
    return transformers.__version__


def vocab_size(tokenizer_dir):
    data = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def build(tokenizer_dir):
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    config = LlavaConfig(
        vocab_size=vocab_size(tokenizer_dir), mm_vision_tower=MODEL_NAME, mm_projector_type="mlp2x_gelu",
        mm_hidden_size=CLIP_SHRUNK["hidden_size"], mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True,
        tune_mm_mlp_adapter=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, **TEXT)
    config.architectures = ["LlavaLlamaForCausalLM"]
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(config)
    model.get_vision_tower().load_model()  # what initialize_vision_modules does when training starts
    model.get_dino_vision_tower().load_model()
    with torch.no_grad():  # towers off their init: every weight (position tables included) matters
        for tower in (model.get_model().vision_tower, model.get_model().dino_tower):
            for param in tower.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        model.get_model().dino_tower.vision_tower.pos_embed.normal_(0.0, 0.5)
    return model.eval()


def image():
    """A seeded 300x200 (non-square) RGB image: padded to a square by expand2square before the processor."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    pixels[40:160, 60:140] = (250, 30, 30)
    from PIL import Image

    return Image.fromarray(pixels)


def logits(model, input_ids, pixels, prepare):
    attention = torch.ones_like(input_ids)
    _, attention, _, embeds, _ = prepare(input_ids, attention, None, None, pixels)
    out = model.model(inputs_embeds=embeds, attention_mask=attention, return_dict=True)
    return model.lm_head(out.last_hidden_state)


def zeroed(tower):
    forward = tower.forward
    tower.forward = lambda images: torch.zeros_like(forward(images))
    return forward


def main(mmvp_llava, dinov2_src, tokenizer_dir, out):
    sys.path.insert(0, str(mmvp_llava))
    version = patch_hub(dinov2_src)
    assert version == "4.31.0", version
    from llava.mm_utils import process_images
    from safetensors.torch import save_file

    out = Path(out)
    model = build(tokenizer_dir)
    model.save_pretrained(out / "model", safe_serialization=False, max_shard_size=SHARD)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, out / "model" / name)
    inner = model.get_model()
    pixels = process_images([image()], inner.vision_tower.image_processor, model.config)
    input_ids = torch.tensor([[1, 7, 8, -200, 9, 10, 11, 12]])
    golden = {"pixel_values": pixels, "input_ids": input_ids}
    with torch.no_grad():
        golden["features_clip"] = inner.vision_tower(pixels)
        golden["features_dinov2"] = inner.dino_tower(pixels)
        golden["logits_full"] = logits(model, input_ids, pixels, model.prepare_inputs_labels_for_multimodal_withdino)
        golden["logits_removed_dinov2"] = logits(model, input_ids, pixels,
                                                 model.prepare_inputs_labels_for_multimodal)
        for name, tower in (("clip", inner.vision_tower), ("dinov2", inner.dino_tower)):
            forward = zeroed(tower)
            golden[f"logits_zero_{name}"] = logits(model, input_ids, pixels,
                                                   model.prepare_inputs_labels_for_multimodal_withdino)
            tower.forward = forward
    save_file({k: v.contiguous() for k, v in golden.items()}, str(out / "golden.safetensors"),
              metadata={"transformers": version, "torch": torch.__version__})
    print({k: tuple(v.shape) for k, v in golden.items()})


if __name__ == "__main__":
    main(*sys.argv[1:5])

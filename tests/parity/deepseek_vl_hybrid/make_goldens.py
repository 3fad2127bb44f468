"""Goldens of DeepSeek-VL hybrid from the ORIGINAL code: transformers 4.54.0, which introduced
``deepseek_vl_hybrid`` (and ``deepseek_vl``).

Builds a small random ``DeepseekVLHybridForConditionalGeneration`` with the real input sizes
(SigLIP at 384 px, patch 16: 24x24 = 576 image tokens; SAM at 1024 px, patch 16, window 14) and
tiny widths and depths, saves it (and its processor) as 4.54's ``save_pretrained`` does, and
records, on a NON-SQUARE image (320x200, padded to a square by the processor):

- ``pixel_values`` (384) and ``high_res_pixel_values`` (1024) of 4.54's processor;
- each tower's features: ``siglip`` = ``get_low_res_image_features``, ``sam`` =
  ``get_high_res_image_features`` (what the aligner receives);
- the logits of the full model, and of each single-tower zero mask (that tower's features
  replaced by zeros before the aligner, the paper's mask), through the model's own forward;
- the logits of a stock ``DeepseekVLForConditionalGeneration`` (4.54) holding the SAM-removed
  model: ``linear1 = [0 ; vision_proj]``, ``linear1.bias = [high_res_vision_proj.bias ;
  vision_proj.bias]``, ``linear2 = proj``, on the hybrid processor's low-res pixels.

Run it in its own venv (README.md beside it), never in CI:

    python -m venv --system-site-packages /tmp/venv_dsvl
    /tmp/venv_dsvl/bin/pip install --no-deps transformers==4.54.0 tokenizers==0.21.4 huggingface-hub==0.34.4
    /tmp/venv_dsvl/bin/python tests/parity/deepseek_vl_hybrid/make_goldens.py tests/parity/deepseek_vl_hybrid/hybrid
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

# The system site's `kernels` needs a newer huggingface-hub than 4.54 accepts; 4.54 only imports it for
# optional hub kernels, which this model never uses: hide it (importlib then reports it absent).
sys.modules.setdefault("kernels", None)
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

VERSION = "4.54.0"
TEXT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "tie_word_embeddings": False}
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "patch_size": 16, "image_size": 384}  # real: SigLIP-L 384 px, patch 16
# real: SAM-B at 1024 px, window 14, global blocks [2, 5, 8, 11] of 12 (the aligner reads the first global
# block's output); here 3 blocks, global [1, 2]: the one read is not the last (4.54's hidden_states of the
# last block are the neck's output, so a first global block that is the last would crash 4.54's neck)
SAM = {"model_type": "sam_vision_model", "hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 3,
       "num_attention_heads": 2, "patch_size": 16, "image_size": 1024, "window_size": 14,
       "global_attn_indexes": [1, 2], "output_channels": 16}  # SAM-B: 256
WORDS = ["User", ":", "Assistant", "What", "is", "in", "the", "image", "?", "a", "red", "square"]
PROMPT = "User: <image_placeholder>\nWhat is in the image?\n\nAssistant:"


def tokenizer():
    """A small word-level tokenizer with DeepSeek-VL's image token (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>", "<image_placeholder>"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image_placeholder>", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image_placeholder>"},
                                   padding_side="left")


def source_image():
    """A 320x200 RGB image with structure at every scale (seeded)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:200, 0:320]
    base = np.stack([x * 0.8, y * 1.2, (x + y) * 0.5], -1) % 256
    noise = rng.integers(0, 60, size=(200, 320, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    array[40:90, 60:140] = (220, 30, 30)
    return Image.fromarray(array, "RGB"), array


def build(tok):
    from transformers import (DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration,
                              DeepseekVLHybridImageProcessor, DeepseekVLHybridProcessor)

    config = DeepseekVLHybridConfig(
        text_config=dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(SIGLIP), high_res_vision_config=dict(SAM),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    model = DeepseekVLHybridForConditionalGeneration(config).eval()
    with torch.no_grad():  # SAM's branch and alpha start at ~0 (init): seeded noise so that each mask shows
        for name, param in model.model.named_parameters():
            if name.startswith(("high_res_vision", "aligner.")):
                param.add_(torch.randn_like(param) * 0.1)
    image_processor = DeepseekVLHybridImageProcessor(
        size={"height": 384, "width": 384}, high_res_size={"height": 1024, "width": 1024},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])  # SigLIP's; SAM keeps the CLIP default
    processor = DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tok, num_image_tokens=576)
    return model, processor


def zero_masked_logits(model, inputs, slot):
    """The model's own forward with ``slot``'s features replaced by zeros before the aligner."""
    inner = model.model
    name = "get_low_res_image_features" if slot == "siglip" else "get_high_res_image_features"
    original = getattr(inner, name)
    setattr(inner, name, lambda pixels: torch.zeros_like(original(pixels)))
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        delattr(inner, name)


def stock_without_sam(model):
    """4.54's stock DeepseekVLForConditionalGeneration holding the hybrid with SAM removed (the exact fold)."""
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration

    config = model.config
    stock = DeepseekVLForConditionalGeneration(DeepseekVLConfig(
        text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
        image_token_id=config.image_token_id)).eval()
    hybrid, aligner = model.state_dict(), model.model.aligner
    state = {k: v for k, v in hybrid.items() if k.startswith(("model.vision_model.", "model.language_model.",
                                                                "lm_head."))}
    half = aligner.vision_proj.out_features
    state["model.aligner.linear1.weight"] = torch.cat(
        [torch.zeros(half, aligner.vision_proj.in_features), aligner.vision_proj.weight.detach()], 0)
    state["model.aligner.linear1.bias"] = torch.cat(
        [aligner.high_res_vision_proj.bias.detach(), aligner.vision_proj.bias.detach()], 0)
    state["model.aligner.linear2.weight"] = aligner.proj.weight.detach()
    state["model.aligner.linear2.bias"] = aligner.proj.bias.detach()
    stock.load_state_dict(state, strict=True)
    return stock


def as_uint8(pixels, mean, std):
    """The processor's pixels as the uint8 image they normalise (checked exact): 4x smaller goldens."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    raw = ((pixels * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    back = (raw.float() / 255 - mean) / std
    assert (back - pixels).abs().max().item() < 1e-5, "pixels are not a normalised uint8 image"
    return raw


def main(out):
    from transformers import DeepseekVLHybridProcessor

    assert transformers.__version__ == VERSION, transformers.__version__
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    tok = tokenizer()
    model, processor = build(tok)
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    image, array = source_image()
    # the processor AS SAVED, reloaded by 4.54: its __init__ sets background_color from high_res_image_mean
    # (given in the saved file), so the padding differs from the in-memory one built above (127 grey)
    processor = DeepseekVLHybridProcessor.from_pretrained(str(out / "model"))
    inputs = processor(text=[PROMPT], images=[image], return_tensors="pt")
    with torch.no_grad():
        siglip = model.model.get_low_res_image_features(inputs["pixel_values"])
        sam = model.model.get_high_res_image_features(inputs["high_res_pixel_values"])
        full = model(**inputs).logits
    masked = {slot: zero_masked_logits(model, inputs, slot) for slot in ("siglip", "sam")}
    stock = stock_without_sam(model)
    low_only = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        stock_logits = stock(**low_only).logits
    fold_gap = (stock_logits - masked["sam"]).abs().max().item()
    processor_ = processor.image_processor
    tensors = {"source_image": torch.from_numpy(array), "input_ids": inputs["input_ids"],
               "attention_mask": inputs["attention_mask"],
               "pixels_uint8": as_uint8(inputs["pixel_values"], processor_.image_mean, processor_.image_std),
               "high_res_pixels_uint8": as_uint8(inputs["high_res_pixel_values"], processor_.high_res_image_mean,
                                                 processor_.high_res_image_std),
               "features_siglip": siglip,
               "features_sam": sam, "logits_full": full, "logits_zero_siglip": masked["siglip"],
               "logits_zero_sam": masked["sam"], "logits_stock_deepseek_vl": stock_logits}
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "prompt": PROMPT,
            "stock_vs_zero_sam_max_abs_diff": f"{fold_gap:.3g}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "golden.safetensors"), metadata=meta)
    (out / "golden_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out}: siglip {tuple(siglip.shape)}, sam {tuple(sam.shape)}, logits {tuple(full.shape)}; "
          f"|stock - zero-sam| {fold_gap:.3g}; |zero-sam - full| {(masked['sam'] - full).abs().max():.3g}; "
          f"|zero-siglip - full| {(masked['siglip'] - full).abs().max():.3g}")


if __name__ == "__main__":
    main(sys.argv[1])

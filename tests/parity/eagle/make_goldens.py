"""Golden outputs of Eagle v1 X5 as NVlabs/EAGLE's ORIGINAL code computes them (transformers 4.44.2).

Builds a small random Eagle-X5 (``clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024``) with
the original classes imported from an extracted NVlabs/EAGLE tree, saves it with the original
``EagleLlamaForCausalLM.save_pretrained`` (what ``train.py``'s ``trainer._save`` calls), and records:
the preprocessed pixels of a non-square image (``mm_utils.process_images`` with ``pad``), each
tower's features as the concat receives them, and the logits of the full model and of every
single-tower zero mask. Every patch and why: README.md beside this file. Run in its own venv, never
in CI:

    /tmp/venv_eagle/bin/python tests/parity/eagle/make_goldens.py /tmp/eagle_src tests/parity/eagle/x5
"""

import enum
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

EAGLE_COMMIT = "fef95f103b5e9899acbbe2c237e5b99147ab7e8e"
TOWERS = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 336, "patch_size": 14, "projection_dim": 32}
CONVNEXT = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
SAM = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "global_attn_indexes": [1, 3],
       "mlp_dim": 64, "output_channels": 256}  # window 14, 1024 px, patch 16: real
EVA = {"embed_dim": 32, "depth": 6, "num_heads": 2}  # blocks 2, 5 global, the rest 16x16 windows
PIX2STRUCT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "d_kv": 16, "d_ff": 64}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}
QUESTION = "What is shown in the picture? Answer briefly."


def install_torchvision_stub():
    """timm 0.9.11 imports torchvision names at import time (none of them run for ConvNeXt); PyPI's
    torchvision does not import beside this CPU torch, so placeholders stand in for them."""

    class Placeholder:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub: not available in the Eagle parity generator")

    class StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (Placeholder,), {})

    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional", "torchvision.datasets", "torchvision.models",
             "torchvision.models.feature_extraction"]
    for name in names:
        module = StubModule(name)
        module.__path__ = []
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, module)
    sys.modules["torchvision.transforms.functional"].InterpolationMode = enum.Enum(
        "InterpolationMode", {k: k.lower() for k in ("NEAREST", "NEAREST_EXACT", "BILINEAR", "BICUBIC", "BOX",
                                                      "HAMMING", "LANCZOS")})


class FromConfig:
    """Stands in for a transformers class inside one original module: ``from_pretrained(hub id)``
    builds the class from a small config instead of downloading."""

    def __init__(self, build):
        self.build = build

    def from_pretrained(self, name, *args, **kwargs):
        return self.build(name)


def byte_tokenizer(folder):
    """A byte-level tokenizer (every byte one token) with <unk> <s> </s> <pad>, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", padding_side="right")
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def patch_original(src):
    """Import the original modules and swap their hub downloads / hard-coded widths (README.md)."""
    sys.path.insert(0, str(src))
    install_torchvision_stub()
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Pix2StructConfig,
                              Pix2StructForConditionalGeneration, Pix2StructImageProcessor, Pix2StructProcessor,
                              SamConfig, SamImageProcessor, SamModel, SamProcessor, T5TokenizerFast)

    from eagle.model.multimodal_encoder import (convnext_encoder, hr_clip_encoder, pix2struct_encoder,
                                                sam_encoder)
    from eagle.model.multimodal_encoder.vision_models import convnext, eva_vit

    hr_clip_encoder.CLIPImageProcessor = FromConfig(lambda name: CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}))
    hr_clip_encoder.CLIPVisionModel = FromConfig(lambda name: CLIPVisionModel(CLIPVisionConfig(**CLIP)))

    def small_convnext(name):  # the original function, its depths/dims overridden through **kwargs
        model = convnext.convnext_xxlarge(False, **CONVNEXT)
        return model
    convnext_encoder.convnext_xxlarge = small_convnext
    load_convnext = convnext_encoder.ConvNextVisionTower.load_model

    def load_model(self):
        load_convnext(self)
        self.vision_tower.hidden_size = CONVNEXT["dims"][-1]  # was setattr(..., 3072)
    convnext_encoder.ConvNextVisionTower.load_model = load_model

    sam_encoder.SamModel = FromConfig(lambda name: SamModel(SamConfig(vision_config=SAM)))
    sam_encoder.SamProcessor = FromConfig(lambda name: SamProcessor(SamImageProcessor()))

    def pix2struct_model(name):
        config = Pix2StructConfig(vision_config=PIX2STRUCT, text_config={
            "vocab_size": 64, "hidden_size": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2})
        return Pix2StructForConditionalGeneration(config)

    def pix2struct_processor(name):  # google/pix2struct-large's preprocessor_config.json
        from tokenizers import Tokenizer, models
        image = Pix2StructImageProcessor(do_convert_rgb=True, do_normalize=True, is_vqa=False, max_patches=2048,
                                         patch_size={"height": 16, "width": 16})
        text = T5TokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2},
                                                                           unk_token="<unk>")), extra_ids=0)
        return Pix2StructProcessor(image, text)
    pix2struct_encoder.Pix2StructForConditionalGeneration = FromConfig(pix2struct_model)
    pix2struct_encoder.AutoProcessor = FromConfig(pix2struct_processor)

    build_eva = eva_vit.build_eva_vit
    real_eva = eva_vit.EVAViT

    def small_eva(args, model_name=None, image_size=224, window_attn=True):
        eva_vit.EVAViT = lambda **kw: real_eva(**{**kw, **EVA})
        try:
            model, config = build_eva(args, model_name=model_name, image_size=image_size, window_attn=window_attn)
        finally:
            eva_vit.EVAViT = real_eva
        config.update(hidden_dim=EVA["embed_dim"], depth=EVA["depth"], num_heads=EVA["num_heads"])
        return model, config
    eva_vit.build_eva_vit = small_eva


def encslim_specs():
    """The shrunk sizes under encslim's ``eagle_tower_specs`` key (the original ignores the key)."""
    return {"clip-448": {**CLIP, "input_image_size": 336},
            "convnext-1024": dict(CONVNEXT),
            "sam-1024": {k: v for k, v in SAM.items()},
            "det-1024": dict(EVA),
            "pix2struct-1024": dict(PIX2STRUCT)}


def build_model(tokenizer):
    from eagle.model.language_model.eagle_llama import EagleConfig, EagleLlamaForCausalLM

    widths = [CLIP["hidden_size"], CONVNEXT["dims"][-1], 4 * SAM["output_channels"], EVA["embed_dim"],
              PIX2STRUCT["hidden_size"]]
    config = EagleConfig(
        mm_vision_tower=TOWERS, mm_projector_type="mlp2x_gelu", mm_hidden_size=sum(widths),
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="flat",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
        tokenizer_padding_side="right", tokenizer_model_max_length=2048, eagle_tower_specs=encslim_specs(),
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **TEXT)
    torch.manual_seed(0)
    model = EagleLlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # layer scales (1e-6), norms and position tables get visible structure
        for name, param in model.get_model().vision_tower.named_parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
        for name, param in model.get_model().vision_tower.named_parameters():
            if name.endswith(("position_embedding.weight", "pos_embed")):
                param.normal_(0.0, 0.5, generator=gen)
    return model


def source_image():
    """A seeded 300x200 (wider than tall) RGB image: smooth gradients plus noise."""
    from PIL import Image

    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:200, 0:300]
    base = np.stack([x * 255 / 299, y * 255 / 199, (x + y) * 255 / 498], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), pixels


def run_original(model, tokenizer, image):
    """Pixels, per-tower features, and logits (full model, then each tower zeroed) by the original code."""
    from eagle import conversation
    from eagle.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from eagle.mm_utils import process_images, tokenizer_image_token

    tower = model.get_vision_tower()
    pixels = process_images([image], tower.image_processor, model.config)  # expand2square + CLIP processor
    conv = conversation.conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    names = TOWERS.split(";")
    out = {"pixel_values": pixels, "input_ids": input_ids}
    with torch.no_grad():
        concat = tower(pixels)
        start = 0
        for name, width in zip(names, [t.shape[-1] for t in _split_widths(model)]):
            out[f"features.{name}"] = concat[..., start:start + width].contiguous()
            start += width
        assert start == concat.shape[-1] == model.config.mm_hidden_size
        out["logits"] = model(input_ids=input_ids, images=pixels).logits
        for index, name in enumerate(names):  # the paper's mask: that tower's features are zeros
            hook = tower.vision_towers[index].register_forward_hook(lambda mod, args, output: torch.zeros_like(output))
            try:
                out[f"logits_zero.{name}"] = model(input_ids=input_ids, images=pixels).logits
            finally:
                hook.remove()
    return out, prompt


def _split_widths(model):
    config = model.config
    return [torch.empty(0, w) for w in (CLIP["hidden_size"], CONVNEXT["dims"][-1], 4 * SAM["output_channels"],
                                        EVA["embed_dim"], PIX2STRUCT["hidden_size"])][:len(config.mm_vision_tower
                                                                                          .split(";"))]


def main(src, out):
    import transformers
    from safetensors.torch import save_file

    assert transformers.__version__ == "4.44.2", transformers.__version__
    out = Path(out)
    model_dir = out / "model"
    patch_original(src)
    tokenizer = byte_tokenizer(model_dir)
    model = build_model(tokenizer)
    # train.py's safe_save_model_for_hf_trainer: trainer._save(state_dict={k: v.cpu()}) -> save_pretrained,
    # safetensors by default. On a GPU, .cpu() copies each tensor, so EVA's shared RoPE tables are written
    # under every alias; clone() does the same here (a shared CPU tensor makes 4.44's save_pretrained refuse).
    model.save_pretrained(str(model_dir), state_dict={k: v.clone() for k, v in model.state_dict().items()})
    image, source = source_image()
    results, prompt = run_original(model, tokenizer, image)
    pixels = results.pop("pixel_values")
    # the CLIP processor rescales a uint8 bicubic resize: the 1024x1024 uint8 image gives the pixels exactly
    mean = torch.tensor(model.get_vision_tower().image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.get_vision_tower().image_processor.image_std).view(1, 3, 1, 1)
    resized = torch.round((pixels * std + mean) * 255).clamp(0, 255)
    assert ((resized / 255 - mean) / std - pixels).abs().max() < 1e-5
    image_end = int((results["input_ids"][0] == -200).nonzero()) + model.get_vision_tower().num_tokens
    after = slice(image_end, None)  # the text positions after the image run
    tensors = {"source_image": torch.from_numpy(source).contiguous(),
               "pixels_uint8": resized.to(torch.uint8).contiguous(),
               "pixel_values_every_8th": pixels[..., ::8, ::8].contiguous(),
               "input_ids": results.pop("input_ids").contiguous(),
               "logits": results.pop("logits").contiguous()}
    for key, value in results.items():
        tensors[key] = value[:, after].contiguous() if key.startswith("logits_zero.") else value.contiguous()
    meta = {"eagle_commit": EAGLE_COMMIT, "transformers": transformers.__version__, "torch": torch.__version__,
            "prompt": prompt, "question": QUESTION, "towers": TOWERS, "image_end": str(image_end)}
    save_file(tensors, str(out / "golden.safetensors"), metadata=meta)
    (out / "golden.json").write_text(json.dumps({**meta, "shapes": {k: list(v.shape) for k, v in tensors.items()}},
                                                indent=2) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Golden outputs of a small random Cambrian-1 built and run by the ORIGINAL code (cambrian-mllm/cambrian).

Never run in CI. Run it in its own venv with the original's pins and the original's source tree (README.md
beside this file says how); it writes ``OUT/model`` (the checkpoint as the original saves it: the LLM and
the connector, no encoders), ``OUT/encoders/<slot>`` (each encoder folder as the original loads it from the
hub: open_clip folders for SigLIP and ConvNeXt, transformers folders for CLIP and DINOv2),
``OUT/image.png`` (a non-square image) and ``OUT/golden.safetensors``:

- ``pixels_<slot>``: ``mm_utils.process_images`` for each encoder (every 2nd row and column; ConvNeXt's
  1024x1024: every 4th);
- ``features_<slot>``: each tower's output (``encode_images``) on those pixels (ConvNeXt's 9216 tokens:
  every 4th);
- ``input_ids``: ``mm_utils.tokenizer_image_token`` of the prompt (one ``-200``);
- ``logits``: the prompt pass of ``CambrianLlamaForCausalLM.generate`` (``prepare_inputs_labels_for_multimodal``,
  then ``forward`` with the vision features stored on the model, so the sampler layers inside the LLM run);
- ``logits_zero_<slot>``: the same with that encoder's features zeroed after ``mm_projector_aux_i`` (the
  paper's mask, by a forward hook on that module);
- ``logits_removed_<slot>``: the original run on a pruned folder whose config lists the other three encoders
  (``CambrianMetaModel`` then builds only those towers, projectors and K/V projections), its checkpoint the
  full one's tensors without that encoder's and renumbered.

Patches (all here; the original's files are used unchanged):
- torchvision: PyPI's does not import beside this torch; ``torchvision_stub.py`` supplies the transforms
  open_clip's eval preprocessing runs and placeholders for the rest. ``multimodal_encoder/diffusion_encoder``
  (imported by the builder, needs diffusers, never built for Cambrian-1): a placeholder module.
- timm's ``vit_so400m_patch14_siglip_384`` and ``convnext_xxlarge`` entrypoints are wrapped to build shrunk
  widths and depths (every other argument is timm's); the open_clip text towers are shrunk in the configs.
- The hub: every id the original downloads is served from a local Hugging Face cache folder built here
  (``models--org--name/snapshots/<hash>`` + ``refs/main``), with HF_HUB_OFFLINE=1.
- ``unfreeze_mm_vision_tower: true`` in the config: with delay_load the original hard-codes SigLIP's width
  (1152) and ConvNeXt-XXL's (5760) for the aux projectors; this key makes it load the towers at construction
  and read their widths (it also turns on grad in the towers' forward, which changes no value).
- ``process_images`` ends with ``.half().cuda()``: both are identities during that call (fp32 on CPU).
- Every module, the towers included, runs in eval mode (the original never calls ``eval()`` on its towers:
  ConvNeXt-XXL's drop path 0.1 would be active); attention ``sdpa``, fp32.
"""

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HUB = {"siglip": "timm/ViT-SO400M-14-SigLIP-384", "clip": "openai/clip-vit-large-patch14-336",
       "dinov2": "facebook/dinov2-giant", "convnext": "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"}
AUX = ["siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336", "facebook/dinov2-giant-res378",
       "clip-convnext-XXL-multi-stage"]
SLOTS = ["siglip", "clip", "dinov2", "convnext"]
TOKEN_LENS = [576, 576, 576, 9216]
SIGLIP_SHRINK = {"embed_dim": 32, "depth": 2, "num_heads": 16, "mlp_ratio": 2.0}  # 16 heads as SO400M
CONVNEXT_SHRINK = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
IMAGE_SIZE = (320, 240)  # width, height: 4:3, the 24x24 grid unpads to 18x24
IMAGE_POSITION = 91  # Cambrian-8B's
VOCAB = 256
STRIDES = {"siglip": (2, 1), "clip": (2, 1), "dinov2": (2, 1), "convnext": (4, 4)}  # (pixel rows/cols, tokens) kept


def _prepare_imports(cache):
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
                       "HF_HOME": str(cache.parent / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    sys.path.insert(0, str(HERE))
    import torchvision_stub

    torchvision_stub.install()
    # the diffusion tower (needs diffusers) is imported by the builder but never built for Cambrian-1
    sys.modules["cambrian.model.multimodal_encoder.diffusion_encoder"] = torchvision_stub._Module("diffusion_encoder")


def _shrink_timm():
    from timm.models import _registry

    def wrap(name, extra):
        real = _registry._model_entrypoints[name]
        _registry._model_entrypoints[name] = lambda pretrained=False, **kw: real(pretrained, **{**kw, **extra})

    wrap("vit_so400m_patch14_siglip_384", SIGLIP_SHRINK)
    wrap("convnext_xxlarge", CONVNEXT_SHRINK)


def _noisy(module, scale=0.05):
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def _open_clip_folder(folder, model_cfg, preprocess_cfg, custom_text):
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    cls = CustomTextCLIP if custom_text else CLIP
    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    model = _noisy(cls(**cfg))
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")


def write_encoders(root):
    """The four encoder folders, as their hub repositories hold them (shrunk)."""
    import torch
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, Dinov2Config,
                              Dinov2Model)

    text = {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
    torch.manual_seed(1)
    _open_clip_folder(root / "siglip", {
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 384, "timm_model_name": "vit_so400m_patch14_siglip_384",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {**text, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                     "norm_kwargs": {"eps": 1e-6}}},
        {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"},
        custom_text=True)
    _open_clip_folder(root / "convnext", {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "convnext_xxlarge", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 256},
        "text_cfg": text},
        {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        custom_text=False)
    clip = CLIPModel(CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                       "image_size": 336, "patch_size": 14, "projection_dim": 16},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 16}, projection_dim=16))
    _noisy(clip)
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        root / "clip")
    dino = Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                                    image_size=518, patch_size=14, use_swiglu_ffn=True, layerscale_value=1.0))
    _noisy(dino)
    with torch.no_grad():  # structure at every scale, so the 37x37 -> 27x27 resampling shows
        dino.embeddings.position_embeddings.normal_(0.0, 1.0)
    dino.save_pretrained(root / "dinov2")
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dinov2")


def hub_cache(encoders, cache):
    """A Hugging Face cache folder serving each encoder folder under its hub id."""
    for slot, repo in HUB.items():
        base = cache / f"models--{repo.replace('/', '--')}"
        snap = base / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(encoders / slot, snap)
        (base / "refs").mkdir(parents=True)
        (base / "refs" / "main").write_text(snap.name)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(VOCAB - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def cambrian_config(aux_idx):
    from cambrian.model.language_model.cambrian_llama import CambrianConfig

    return CambrianConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        architectures=["CambrianLlamaForCausalLM"], mm_projector_type="sva", mm_hidden_size=None,
        mm_vision_tower_aux_list=[AUX[i] for i in aux_idx],
        mm_vision_tower_aux_token_len_list=[TOKEN_LENS[i] for i in aux_idx],
        vision_hidden_size=32, connector_depth=3, num_query_group=1, query_num_list=[576], image_token_len=576,
        image_position=IMAGE_POSITION, connector_only=False, num_of_vision_sampler_layers=10,
        start_of_vision_sampler_layers=0, stride_of_vision_sampler_layers=3, mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", image_aspect_ratio="pad", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, unfreeze_mm_vision_tower=True, tokenizer_padding_side="right",
        tokenizer_model_max_length=2048, use_mm_proj=True)


def build_model(out):
    import torch
    from cambrian.model.language_model.cambrian_llama import CambrianLlamaForCausalLM

    torch.manual_seed(0)
    model = CambrianLlamaForCausalLM(cambrian_config(range(4)))
    with torch.no_grad():
        model.model.image_newline.normal_(0.0, 64 ** -0.5)  # torch.empty in CambrianMetaModel
        model.model.vision_query.mul_(32 ** -0.5)
        for name, p in model.named_parameters():
            if not name.startswith(("model.layers.", "model.embed_tokens", "model.norm", "lm_head")):
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer().save_pretrained(out)
    return model


def pruned_folder(full, drop, out):
    """``full`` without encoder ``drop``: its config's lists and its tensors, the rest renumbered."""
    from safetensors.torch import load_file, save_file

    keep = [i for i in range(4) if i != drop]
    renum = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in load_file(str(full / "model.safetensors")).items():
        found = re.search(r"(mm_projector_aux_|k_proj_|v_proj_|pos_embed_)(\d+)", key)
        if found and int(found.group(2)) == drop:
            continue
        if found:
            key = key[:found.start(2)] + str(renum[int(found.group(2))]) + key[found.end(2):]
        state[key] = value
    shutil.copytree(full, out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((full / "config.json").read_text())
    config["mm_vision_tower_aux_list"] = [AUX[i] for i in keep]
    config["mm_vision_tower_aux_token_len_list"] = [TOKEN_LENS[i] for i in keep]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@contextlib.contextmanager
def fp32_on_cpu():
    """``process_images``'s ``.half().cuda()`` as identities."""
    import torch

    saved = torch.Tensor.half, torch.Tensor.cuda
    torch.Tensor.half = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.half, torch.Tensor.cuda = saved


def load(folder):
    from cambrian.model.language_model.cambrian_llama import CambrianLlamaForCausalLM

    model = CambrianLlamaForCausalLM.from_pretrained(str(folder), attn_implementation="sdpa").eval()
    for tower in model.get_vision_tower_aux_list():  # as model/builder.load_pretrained_model does
        if not tower.is_loaded:
            tower.load_model()
        tower.eval()  # the original does not; see the module docstring
    return model


def prompt_pass(model, input_ids, images, image_sizes):
    """The first forward of ``CambrianLlamaForCausalLM.generate``: logits (1, L, V)."""
    import torch

    with torch.no_grad():
        (_, position_ids, attention_mask, _, embeds, _, feats, masks, sizes, context) = \
            model.prepare_inputs_labels_for_multimodal(input_ids, None, torch.ones_like(input_ids), None, None,
                                                       images, image_sizes=image_sizes)
        model.vision_tower_aux_feature_list, model.vision_tower_aux_attention_masks_list = feats, masks
        model.final_vision_feature_size, model.global_context_feature = sizes, context
        return model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits


def main(out):
    out = Path(out).resolve()
    work = Path(tempfile.mkdtemp(prefix="cambrian_golden_"))
    _prepare_imports(work / "hub")
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file

    _shrink_timm()
    sys.path.insert(0, os.environ.get("CAMBRIAN_SRC", "/tmp/camb_orig"))
    from cambrian.mm_utils import process_images, tokenizer_image_token

    assert transformers.__version__ == "4.37.2", transformers.__version__
    if out.exists():
        shutil.rmtree(out)
    write_encoders(out / "encoders")
    hub_cache(out / "encoders", work / "hub")
    build_model(out / "model")
    model = load(out / "model")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(IMAGE_SIZE, Image.BILINEAR)
    image.save(out / "image.png")
    with fp32_on_cpu():
        pixels = process_images([image], [t.image_processor for t in model.get_vision_tower_aux_list()], model.config)
    words = " ".join(f"w{(7 * i) % (VOCAB - 4)}" for i in range(IMAGE_POSITION - 1))
    prompt = f"{words} <image>\nw5 w9 w11 w200 w3 w17"
    ids = torch.tensor([tokenizer_image_token(prompt, tokenizer())])
    assert int((ids[0] == -200).nonzero()) == IMAGE_POSITION
    sizes = [image.size]
    golden = {"input_ids": ids}
    with torch.no_grad():
        features = model.encode_images(pixels)
    for slot, pix, feat in zip(SLOTS, pixels, features):  # strided, to keep the file small (STRIDES)
        golden[f"pixels_{slot}"] = pix[:, :, ::STRIDES[slot][0], ::STRIDES[slot][0]].contiguous()
        golden[f"features_{slot}"] = feat[:, ::STRIDES[slot][1]].contiguous()
    golden["logits"] = prompt_pass(model, ids, pixels, sizes)
    for i, slot in enumerate(SLOTS):
        hook = getattr(model.model, f"mm_projector_aux_{i}").register_forward_hook(lambda m, a, o: torch.zeros_like(o))
        golden[f"logits_zero_{slot}"] = prompt_pass(model, ids, pixels, sizes)
        hook.remove()
        pruned = load(pruned_folder(out / "model", i, work / f"without_{slot}"))
        assert len(pruned.get_vision_tower_aux_list()) == 3
        golden[f"logits_removed_{slot}"] = prompt_pass(pruned, ids, [p for j, p in enumerate(pixels) if j != i], sizes)
    save_file({k: v.contiguous() for k, v in golden.items()}, str(out / "golden.safetensors"), metadata={
        "transformers": transformers.__version__, "torch": torch.__version__,
        "cambrian_commit": os.environ.get("CAMBRIAN_COMMIT", "unknown"), "prompt": prompt})
    shutil.rmtree(work)
    print(f"wrote {out}: logits {tuple(golden['logits'].shape)}")


if __name__ == "__main__":
    main(sys.argv[1])

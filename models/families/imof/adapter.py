"""I-MoF (Interleaved Mixture of Features, tsb0601/MMVP) in its original checkpoint layout.

Read from ``LLaVA/llava/model`` of tsb0601/MMVP:

- ``llava_arch.LlavaMetaModel``: a LLaVA-1.5 Llama with TWO towers built from the same
  ``mm_vision_tower`` (``openai/clip-vit-large-patch14-336``) and two ``mlp2x_gelu`` projectors
  built from the same config (``mm_hidden_size`` 1024 -> ``hidden_size``): ``vision_tower`` +
  ``mm_projector`` (CLIP) and ``dino_tower`` + ``dino_mm_projector`` (DINOv2).
- ``multimodal_encoder/clip_encoder.CLIPVisionTower``: ``self.vision_tower = CLIPVisionModel``
  (transformers 4.37, so keys ``model.vision_tower.vision_tower.vision_model.*``);
  ``hidden_states[mm_vision_select_layer]`` (-2), CLS dropped for ``patch``.
- ``multimodal_encoder/dino_encoder.DINOVisionTower``: ``self.vision_tower =
  torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')`` (keys
  ``model.dino_tower.vision_tower.*``, torch.hub naming) and ``self.clip_vision_tower =
  CLIPVisionModel`` (a second CLIP copy used only for ``dtype``/``device``: keys
  ``model.dino_tower.clip_vision_tower.vision_model.*``). Features: ``forward_features(images)
  ["x_prenorm"]`` (the last block's output BEFORE the final ``norm``), CLS dropped for ``patch``.
  ``select_layer`` is ignored. Its input is the SAME tensor as CLIP's (the CLIP processor's
  336 px crop, CLIP mean/std), so DINOv2's 37x37 position table is interpolated to 24x24.
- ``prepare_inputs_labels_for_multimodal_withdino``: per image, ``merged = torch.empty(2 * N, D);
  merged[0::2] = clip; merged[1::2] = dino`` (both AFTER their projectors), spliced in at the one
  ``-200`` placeholder: the LLM sees ``c0 d0 c1 d1 ... c575 d575`` (1152 tokens).

The fusion is class B (DESIGN §1): removing a tower drops its tokens (and both its tower and its
projector), which is exact. Without DINOv2 the model is LLaVA-1.5 (a stock
``LlavaForConditionalGeneration``, :meth:`ImofAdapter.to_llava`).

Detection (:func:`is_imof_config`): the original writes no key naming DINO (``LlavaMetaModel``
builds both towers for every config with ``mm_vision_tower``), so a ``llava`` (MMVP's own
``LlavaConfig.model_type``) or ``llava_llama`` config with LLaVA-1.5's keys and one
``openai``/``laion`` tower is taken as I-MoF; the checkpoint must then hold the DINOv2 tower
(strict loading says so otherwise). Eagle (``;`` in ``mm_vision_tower``), Cambrian
(``mm_vision_tower_aux_list``) and stock transformers LLaVA (``vision_config``) do not match.

encslim-only config keys (absent from real checkpoints; defaults are the real model):
``imof_towers`` (the towers left, ``["clip", "dinov2"]``), ``imof_clip_spec`` (CLIPVisionConfig
overrides), ``imof_dino_spec`` (DINOv2 sizes) and ``imof_dino_clip_copy`` (whether the DINO tower
holds its unused CLIP copy; set from the checkpoint when loading).
"""

import json
import math
import re
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ....errors import ConfigError, ModelLoadError
from ....files import CONFIG_NAME, atomic_output_dir
from ...adapter import Slot, TrainableParts
from ...layout import (LayoutAdapter, Mlp, TokenizerMixin, check_keys, from_pretrained, header_shapes, left_pad,
                     make_config, meta_shapes, read_config_json, under_vision_model)
from ...masking import FusionClass, check_mask_set, mask_feature
from ...plan import Delete, RemovalPlan, check_drop

MODEL_TYPE = "imof_llama"
ORIGINAL_MODEL_TYPES = ("llava", "llava_llama")  # MMVP's LlavaConfig says "llava"; later LLaVA "llava_llama"
IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"
TOWERS = ("clip", "dinov2")  # slot names, in interleaving order (even, odd positions)
CLIP_PREFIX = "model.vision_tower."
DINO_PREFIX = "model.dino_tower."
DINO_CLIP_COPY = "model.dino_tower.clip_vision_tower."
PROJECTORS = {"clip": "model.mm_projector.", "dinov2": "model.dino_mm_projector."}
TOWER_PREFIXES = {"clip": CLIP_PREFIX, "dinov2": DINO_PREFIX}
IMOF_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size")
PROCESSOR_FILE = "processor_config.json"

CLIP_DEFAULT_SPEC = {  # openai/clip-vit-large-patch14-336
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
DINO_DEFAULT_SPEC = {  # dinov2_vitl14 as dinov2/hub/backbones.py builds it
    "embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0, "patch_size": 14, "img_size": 518,
    "init_values": 1.0, "num_register_tokens": 0, "interpolate_offset": 0.1, "interpolate_antialias": False,
}
CLIP_TINY_SPEC = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                  "image_size": 56, "patch_size": 14, "projection_dim": 32}
DINO_TINY_SPEC = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 70}  # 5x5 table, 4x4 at 56 px
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": False}


def _spec(defaults, spec, what):
    unknown = set(spec or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} size key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(spec or {})}


# ------------------------------------------------------------------------------------------ config
def is_imof_config(config_dict):
    """Whether a ``config.json`` dict is I-MoF (see the module docstring): by keys, not ``model_type`` alone."""
    tower = str(config_dict.get("mm_vision_tower") or "")
    return (config_dict.get("model_type") in (MODEL_TYPE, *ORIGINAL_MODEL_TYPES)
            and all(k in config_dict for k in IMOF_KEYS)
            and tower.startswith(("openai", "laion")) and ";" not in tower  # build_vision_tower's condition
            and "mm_vision_tower_aux_list" not in config_dict and "vision_config" not in config_dict)


class ImofConfig(LlamaConfig):
    """``imof_llama``: Llama plus LLaVA-1.5's vision keys and encslim's ``imof_*`` keys."""

    model_type = MODEL_TYPE

    def __init__(self, mm_vision_tower="openai/clip-vit-large-patch14-336", mm_projector_type="mlp2x_gelu",
                 mm_hidden_size=1024, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                 image_aspect_ratio="pad", imof_towers=TOWERS, imof_clip_spec=None, imof_dino_spec=None,
                 imof_dino_clip_copy=True, **kwargs):
        self.mm_vision_tower = mm_vision_tower
        self.mm_projector_type = mm_projector_type
        self.mm_hidden_size = int(mm_hidden_size)
        self.mm_vision_select_layer = int(mm_vision_select_layer)
        self.mm_vision_select_feature = mm_vision_select_feature
        self.image_aspect_ratio = image_aspect_ratio
        self.imof_towers = [t for t in TOWERS if t in set(imof_towers)]
        self.imof_clip_spec = dict(imof_clip_spec or {})
        self.imof_dino_spec = dict(imof_dino_spec or {})
        self.imof_dino_clip_copy = bool(imof_dino_clip_copy)
        super().__init__(**kwargs)

    def clip_spec(self):
        return _spec(CLIP_DEFAULT_SPEC, self.imof_clip_spec, "CLIP")

    def dino_spec(self):
        return _spec(DINO_DEFAULT_SPEC, self.imof_dino_spec, "DINOv2")

    def clip_vision_config(self):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(**self.clip_spec())

    @property
    def image_size(self):
        """The one input size both towers see: the CLIP processor's crop."""
        return self.clip_spec()["image_size"]

    def tower_tokens(self, tower):
        """Tokens tower ``tower`` delivers per image (CLS kept with ``cls_patch``)."""
        spec = self.clip_spec() if tower == "clip" else self.dino_spec()
        extra = 1 if self.mm_vision_select_feature == "cls_patch" else 0
        return (self.image_size // spec["patch_size"]) ** 2 + extra

    def tower_width(self, tower):
        return self.clip_spec()["hidden_size"] if tower == "clip" else self.dino_spec()["embed_dim"]


def _check_config(config, where):
    problems = []
    if not config.imof_towers:
        problems.append(f"imof_towers names none of {', '.join(TOWERS)}")
    for tower in TOWERS:
        if config.tower_width(tower) != config.mm_hidden_size:
            problems.append(f"mm_hidden_size is {config.mm_hidden_size} but the {tower} tower delivers "
                            f"{config.tower_width(tower)} channels (both projectors are built from mm_hidden_size)")
    if config.tower_tokens("clip") != config.tower_tokens("dinov2"):
        problems.append(f"CLIP gives {config.tower_tokens('clip')} tokens but DINOv2 {config.tower_tokens('dinov2')}; "
                        "interleaving needs equal counts")
    if config.image_size % config.dino_spec()["patch_size"]:
        problems.append(f"the {config.image_size} px input is not a multiple of DINOv2's patch size")
    if config.mm_vision_select_feature not in ("patch", "cls_patch"):
        problems.append(f"mm_vision_select_feature '{config.mm_vision_select_feature}' unknown (patch, cls_patch)")
    if not re.match(r"^(linear|mlp\d+x_gelu)$", str(config.mm_projector_type)):
        problems.append(f"mm_projector_type '{config.mm_projector_type}' unknown (linear, mlp2x_gelu)")
    if problems:
        raise ModelLoadError(f"{where}: {'; '.join(problems)}")
    return config


def read_imof_config(path):
    """The :class:`ImofConfig` of a folder (``model_type`` ``imof_llama``, ``llava`` or ``llava_llama``)."""
    data = read_config_json(path)
    if not is_imof_config(data):
        missing = [k for k in IMOF_KEYS if k not in data]
        raise ModelLoadError(f"{path}/{CONFIG_NAME} is not an I-MoF config"
                             + (f": it lacks {', '.join(missing)}" if missing else ""))
    config = make_config(ImofConfig, data, path, "I-MoF")
    return _check_config(config, f"{path}/{CONFIG_NAME}")


# ------------------------------------------------------------------------------------------- DINOv2
class PatchEmbed(nn.Module):
    """dinov2/layers/patch_embed.py ``PatchEmbed``: conv ``proj``, ``norm`` Identity, flattened."""

    def __init__(self, patch_size, embed_dim, img_size):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """dinov2/layers/attention.py ``MemEffAttention`` without xFormers (its plain-torch path)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads), 2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """dinov2/layers/layer_scale.py ``LayerScale``: ``x * gamma``."""

    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """dinov2/layers/block.py ``NestedTensorBlock`` in eval: ``x + ls1(attn(norm1 x))``, ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, dim, num_heads, mlp_ratio, init_values):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """dinov2/models/vision_transformer.py ``DinoVisionTransformer`` (``block_chunks=0``, ffn ``mlp``):
    the module tree of ``dinov2_vitl14`` and its ``forward_features``."""

    def __init__(self, spec=None):
        super().__init__()
        spec = _spec(DINO_DEFAULT_SPEC, spec, "DINOv2")
        dim = spec["embed_dim"]
        self.patch_size = spec["patch_size"]
        self.num_register_tokens = spec["num_register_tokens"]
        self.interpolate_offset = spec["interpolate_offset"]
        self.interpolate_antialias = spec["interpolate_antialias"]
        self.patch_embed = PatchEmbed(self.patch_size, dim, spec["img_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.num_register_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, spec["num_heads"], spec["mlp_ratio"], spec["init_values"])
                                    for _ in range(spec["depth"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

    def interpolate_pos_encoding(self, x, w, h):
        """The original's bicubic resize of the patch table by ``scale_factor`` (with its 0.1 offset)."""
        previous_dtype = x.dtype
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        m = int(math.sqrt(n))
        if self.interpolate_offset:
            kwargs = {"scale_factor": (float(w0 + self.interpolate_offset) / m,
                                       float(h0 + self.interpolate_offset) / m)}
        else:
            kwargs = {"size": (w0, h0)}
        patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                        antialias=self.interpolate_antialias, **kwargs)
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens(self, x):
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.num_register_tokens:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x):
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, self.num_register_tokens + 1:],
                "x_prenorm": x}


# -------------------------------------------------------------------------------------------- towers
def _clip_holder(config):
    """``CLIPVisionModel`` one level down under ``vision_model``: transformers 4.37's key names
    (transformers 5's ``CLIPVisionModel`` holds the transformer's modules itself)."""
    from transformers import CLIPVisionModel

    return under_vision_model(CLIPVisionModel(config.clip_vision_config()))


def _select(features, select_feature):
    return features[:, 1:] if select_feature == "patch" else features


class CLIPVisionTower(nn.Module):
    """clip_encoder.py ``CLIPVisionTower.forward``: ``hidden_states[select_layer]``, CLS dropped for ``patch``."""

    def __init__(self, config):
        super().__init__()
        self.select_layer = config.mm_vision_select_layer
        self.select_feature = config.mm_vision_select_feature
        self.vision_tower = _clip_holder(config)

    def forward(self, images):
        model = self.vision_tower.vision_model
        dtype = model.embeddings.patch_embedding.weight.dtype
        out = model(images.to(dtype), output_hidden_states=True)
        return _select(out.hidden_states[self.select_layer], self.select_feature).to(images.dtype)


class DINOVisionTower(nn.Module):
    """dino_encoder.py ``DINOVisionTower.forward``: ``forward_features(images)["x_prenorm"]``, CLS dropped
    for ``patch``. ``clip_vision_tower`` (never run) is the original's CLIP copy, kept for its keys."""

    def __init__(self, config):
        super().__init__()
        self.select_feature = config.mm_vision_select_feature
        if config.imof_dino_clip_copy:
            self.clip_vision_tower = _clip_holder(config)
        self.vision_tower = DinoVisionTransformer(config.dino_spec())

    def forward(self, images):
        dtype = self.vision_tower.patch_embed.proj.weight.dtype
        out = self.vision_tower.forward_features(images.to(dtype))
        return _select(out["x_prenorm"], self.select_feature).to(images.dtype)


def build_vision_projector(config):
    """multimodal_projector/builder.py ``build_vision_projector``: ``linear`` or ``mlp{N}x_gelu``."""
    kind = config.mm_projector_type
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    depth = int(re.match(r"^mlp(\d+)x_gelu$", kind).group(1))
    modules = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, depth):
        modules += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*modules)


def interleave(parts):
    """Token-interleave equally long ``(B, N, H)`` tensors: ``a0 b0 a1 b1 ...`` (one tensor: itself)."""
    if len(parts) == 1:
        return parts[0]
    b, n, h = parts[0].shape
    return torch.stack(parts, dim=2).reshape(b, n * len(parts), h)


class ImofLlamaModel(LlamaModel):
    """``LlavaLlamaModel`` of MMVP: ``LlamaModel`` + ``vision_tower``/``mm_projector`` + ``dino_tower``/
    ``dino_mm_projector`` (only the towers of ``imof_towers``)."""

    config_class = ImofConfig

    def __init__(self, config):
        super().__init__(config)
        if "clip" in config.imof_towers:
            self.vision_tower = CLIPVisionTower(config)
        if "dinov2" in config.imof_towers:
            self.dino_tower = DINOVisionTower(config)
        if "clip" in config.imof_towers:
            self.mm_projector = build_vision_projector(config)
        if "dinov2" in config.imof_towers:
            self.dino_mm_projector = build_vision_projector(config)

    def tower(self, name):
        return self.vision_tower if name == "clip" else self.dino_tower

    def projector(self, name):
        return self.mm_projector if name == "clip" else self.dino_mm_projector


class ImofLlamaForCausalLM(LlamaForCausalLM):
    """``LlavaLlamaForCausalLM`` of MMVP. ``forward(input_ids, pixel_values, ...)`` runs the whole model
    (the ``-200`` placeholder run expanded, as :class:`ImofProcessor` writes it); without pixels it is the LM."""

    config_class = ImofConfig
    _no_split_modules = ["LlamaDecoderLayer", "CLIPVisionTower", "DINOVisionTower"]

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = ImofLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
        if pixel_values is not None:
            adapter = ImofAdapter()
            batch = {"input_ids": input_ids, "pixel_values": pixel_values}
            inputs_embeds, input_ids = adapter.embed(self, adapter.encode(self, batch), batch), None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


def register_auto_classes():
    """Make ``AutoConfig``/``AutoModelForCausalLM`` know ``imof_llama``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, ImofConfig)
    except ValueError:
        pass
    try:
        AutoModelForCausalLM.register(ImofConfig, ImofLlamaForCausalLM)
    except ValueError:
        pass


# ----------------------------------------------------------------------------------------- processor
class ImofProcessor(TokenizerMixin):
    """Images -> ``pixel_values`` (B, 3, S, S) for both towers; prompts -> ids with the placeholder run expanded.

    Images follow ``mm_utils.process_images``: ``expand2square`` with the CLIP mean colour when
    ``image_aspect_ratio`` is ``pad``, then CLIP-336's ``CLIPImageProcessor`` (shortest edge 336,
    bicubic, centre crop, CLIP mean/std); DINOv2 gets the same tensor. Prompts follow
    ``conversation.conv_vicuna_v1`` (LLaVA-1.5) and ids ``mm_utils.tokenizer_image_token``, with the
    ``-200`` placeholder repeated once per image token of the towers not removed.
    """

    def __init__(self, tokenizer, image_size, tower_tokens, template=None, pad=True):
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        from ..eagle.processing import CLIP_MEAN, CLIP_STD, guess_template

        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.tower_tokens = dict(tower_tokens)
        self.template = template or guess_template(tokenizer)
        self.pad = pad
        self.image_token = IMAGE_PLACEHOLDER
        self.image_mean, self.image_std = list(CLIP_MEAN), list(CLIP_STD)
        self.image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": self.image_size}, crop_size={"height": self.image_size, "width": self.image_size},
            resample=3, do_center_crop=True, do_normalize=True, image_mean=self.image_mean, image_std=self.image_std)

    @classmethod
    def from_config(cls, tokenizer, config, template=None):
        return cls(tokenizer, config.image_size, {t: config.tower_tokens(t) for t in config.imof_towers},
                   template=template, pad=getattr(config, "image_aspect_ratio", None) == "pad")

    @classmethod
    def from_pretrained(cls, path, config):
        from transformers import AutoTokenizer

        saved = Path(path) / PROCESSOR_FILE
        template = json.loads(saved.read_text()).get("template") if saved.is_file() else None
        return cls.from_config(AutoTokenizer.from_pretrained(str(path)), config, template)

    def save_pretrained(self, folder):
        self.tokenizer.save_pretrained(str(folder))
        Path(folder, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "ImofProcessor", "template": self.template, "image_size": self.image_size,
             "pad": self.pad}, indent=2) + "\n")

    def num_image_tokens(self, masked=frozenset(), mask_mode="removal"):
        gone = set(masked) if mask_mode == "removal" else set()
        return sum(n for t, n in self.tower_tokens.items() if t not in gone)

    def pixel_values(self, images):
        from ..eagle.processing import expand2square

        background = tuple(int(x * 255) for x in self.image_mean)
        prepared = [expand2square(im.convert("RGB"), background) if self.pad else im.convert("RGB") for im in images]
        return torch.as_tensor(self.image_processor(prepared, return_tensors="pt")["pixel_values"])

    def build_prompt(self, question, with_image=True):
        from ..eagle.processing import chat_prompt

        return chat_prompt(self.template, question, with_image)

    def prompt_ids(self, prompt, num_image_tokens):
        """``tokenizer_image_token`` with each placeholder repeated ``num_image_tokens`` times."""
        from ..eagle.processing import tokenizer_image_token

        return tokenizer_image_token(self.tokenizer, prompt, num_image_tokens)

    def text_inputs(self, prompts, num_image_tokens):
        """LEFT-padded ``input_ids``/``attention_mask`` of ``prompts``."""
        return left_pad([self.prompt_ids(p, num_image_tokens) for p in prompts], self.pad_token_id)


# ------------------------------------------------------------------------------------------- loading
def _expected_shapes(config):
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    return meta_shapes(ImofLlamaForCausalLM, config, skip=tied)


def strict_load(path, config, dtype=None, device_map=None):
    """``from_pretrained`` refusing any missing, unexpected or mis-shaped key (naming them).

    The one tolerated difference: the DINO tower's unused CLIP copy
    (``model.dino_tower.clip_vision_tower.*``) is built exactly when the checkpoint holds it.
    """
    shapes = header_shapes(path, "I-MoF")
    if "dinov2" in config.imof_towers:
        if not any(k.startswith(DINO_PREFIX) for k in shapes):
            raise ModelLoadError(f"{path} holds no DINOv2 tower ({DINO_PREFIX}vision_tower.*): a LLaVA-1.5 "
                                 "checkpoint without it is not I-MoF (or set imof_towers to [\"clip\"])")
        config.imof_dino_clip_copy = any(k.startswith(DINO_CLIP_COPY) for k in shapes)
    check_keys(path, shapes, _expected_shapes(config), f"I-MoF config (towers {', '.join(config.imof_towers)})")
    return from_pretrained(ImofLlamaForCausalLM, path, config, dtype, device_map)


# ------------------------------------------------------------------------------------------- adapter
class ImofAdapter(LayoutAdapter):
    """I-MoF (``imof_llama``, or MMVP's ``llava``/``llava_llama`` configs): slots ``clip`` and ``dinov2``, class B."""

    model_type = MODEL_TYPE
    model_class = ImofLlamaForCausalLM

    def matches(self, config_dict):
        return is_imof_config(config_dict)

    def read_config(self, path):
        return read_imof_config(path)

    def slots(self, config):
        return [Slot(t, t, config.image_size, config.tower_tokens(t), config.tower_width(t), removal_exact=True)
                for t in config.imof_towers]

    def fusion_class(self, config):
        return FusionClass.B

    def fusion_settings(self, config):
        return {"type": "token_interleave", "order": list(config.imof_towers), "projector": config.mm_projector_type,
                "mask": "removal drops the tower's tokens; zero/mean replace its features before its projector"}

    # ------------------------------------------------------------------ loading and inputs
    def load(self, path, device="cpu", dtype=None, device_map=None):
        register_auto_classes()
        config = self.read_config(path)
        model = strict_load(path, config, dtype, device_map)
        if device_map is None:
            model.to(device)
        return model.eval(), ImofProcessor.from_pretrained(path, config)

    def image_token_id(self, config):
        return IMAGE_TOKEN_INDEX

    def prompt_inputs(self, processor, prompts, masked=frozenset(), mask_mode="removal"):
        return processor.text_inputs(prompts, processor.num_image_tokens(masked, mask_mode))

    # ------------------------------------------------------------------ the split forward
    def encode(self, model, batch, slots=None):
        pixels = batch.get("pixel_values")
        if pixels is None:
            return {}
        pixels = pixels.to(model.device, model.dtype)
        towers = model.config.imof_towers
        return {t: model.model.tower(t)(pixels) for t in towers if slots is None or t in set(slots)}

    def fuse(self, model, features, masked=frozenset(), mask_mode="removal", mask_values=None):
        """Each tower's projected tokens, interleaved (``prepare_inputs_labels_for_multimodal_withdino``);
        masked towers' tokens dropped (removal) or their features replaced before the projector."""
        config = model.config
        masked = check_mask_set(config.imof_towers, masked, mask_mode, mask_values)
        ref = next(v for k, v in features.items() if k not in masked) if set(features) - masked \
            else next(iter(features.values()))
        parts = []
        for tower in config.imof_towers:
            if tower in masked and mask_mode == "removal":
                continue
            feature = features[tower] if tower not in masked else \
                mask_feature(ref, config.tower_width(tower), mask_mode, (mask_values or {}).get(tower))
            parts.append(model.model.projector(tower)(feature))
        return interleave(parts)

    def embed(self, model, features, batch, masked=frozenset(), mask_mode="removal", mask_values=None):
        input_ids = batch["input_ids"].to(model.device)
        image = input_ids == IMAGE_TOKEN_INDEX
        embeds = model.get_input_embeddings()(input_ids.masked_fill(image, 0))
        if not features:
            return embeds
        fused = self.fuse(model, features, masked, mask_mode, mask_values)
        return embeds.masked_scatter(image.unsqueeze(-1), fused.to(embeds.dtype))

    # ------------------------------------------------------------------ modules and parameters
    def encoders(self, model):
        return {t: model.model.tower(t) for t in model.config.imof_towers}

    def parts(self, model):
        inner = model.model
        llm = nn.ModuleList([inner.embed_tokens, inner.layers, inner.norm, model.lm_head])
        fusion = nn.ModuleList([inner.projector(t) for t in model.config.imof_towers])
        return {"fusion": fusion, "language_model": llm}

    def slot_parameters(self, model):
        return {t: {"vision": sum(p.numel() for p in model.model.tower(t).parameters()),
                    "fusion": sum(p.numel() for p in model.model.projector(t).parameters())}
                for t in model.config.imof_towers}

    def trainable_parts(self, model):
        towers = model.config.imof_towers
        return TrainableParts(language_model="model.layers", fusion=tuple(PROJECTORS[t][:-1] for t in towers),
                              encoders={t: TOWER_PREFIXES[t][:-1] for t in towers})

    # ------------------------------------------------------------------ removal and export
    def removal_plan(self, config, drop):
        return removal_plan(config, drop)

    def export_targets(self, config, kept):
        return ["hf"] + (["llava"] if not self.llava_blockers(config, kept) else [])

    def llava_blockers(self, config, kept):
        reasons = []
        if list(kept) != ["clip"]:
            reasons.append("a stock LLaVA holds the CLIP tower alone; drop dinov2 first (encslim prune --drop dinov2)")
        if config.mm_projector_type != "mlp2x_gelu":
            reasons.append(f"LLaVA's projector is mlp2x_gelu, this one is {config.mm_projector_type}")
        return reasons

    def export_blockers(self, config, kept, fmt):
        if fmt == "hf":
            return []
        if fmt == "llava":
            return self.llava_blockers(config, kept)
        return [f"{fmt} export is not available for I-MoF; --format hf writes its own layout, --format llava "
                "a stock LlavaForConditionalGeneration once dinov2 is dropped"]

    def export_notes(self, config):
        notes = ["architecture written as ImofLlamaForCausalLM (model_type imof_llama): MMVP's own code names it "
                 "LlavaLlamaForCausalLM with model_type llava"]
        if "clip" not in config.imof_towers:
            notes.append("without the CLIP tower this folder does not load in MMVP's own code; load it with encslim")
        return notes

    def to_llava(self, model, processor):
        """``(LlavaConfig, state_dict, LlavaProcessor)`` of a CLIP-only I-MoF: stock
        ``LlavaForConditionalGeneration`` computing exactly what this model computes."""
        return llava_conversion(model, processor)


def removal_plan(config, drop):
    """Drop towers ``drop``: delete the tower and its projector; ``imof_towers`` lists the rest. Exact (class B)."""
    towers = list(config.imof_towers)
    drop = check_drop(towers, drop)
    kept = [t for t in towers if t not in drop]
    deletes = [Delete(prefix, t) for t in drop for prefix in (TOWER_PREFIXES[t], PROJECTORS[t])]
    notes = ["B: a removed tower's tokens leave the interleaved sequence, so deleting it and its projector is exact"]
    if kept == ["clip"]:
        notes.append("CLIP alone is LLaVA-1.5: encslim export --format llava writes a stock "
                     "LlavaForConditionalGeneration")
    return RemovalPlan(model_type=MODEL_TYPE, fusion_class=FusionClass.B.value, slots=towers, drop=drop,
                       delete_keys=deletes, config_patch=[{"op": "set", "path": "imof_towers", "value": kept}],
                       exact=True, notes=notes)


# --------------------------------------------------------------------------------------- LLaVA export
def llava_conversion(model, processor):
    """See :meth:`ImofAdapter.to_llava`. If the tokenizer has no ``<image>`` token it is added, and the
    embedding and LM head grow one (never read) row: stock LLaVA looks the image ids up before replacing them.

    Raises:
        ConfigError: the model is not CLIP-only with an ``mlp2x_gelu`` projector.
    """
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil


    config = model.config
    reasons = ImofAdapter().llava_blockers(config, config.imof_towers)
    if reasons:
        raise ConfigError(f"this I-MoF model cannot be a stock LLaVA: {'; '.join(reasons)}")
    tokenizer = processor.tokenizer
    state = {}
    rules = [("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
             ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
             ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
             ("model.", "model.language_model."), ("lm_head.", "lm_head.")]
    for key, tensor in model.state_dict().items():
        old, new = next((o, n) for o, n in rules if key.startswith(o))
        state[new + key[len(old):]] = tensor
    vocab = config.vocab_size
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id is None or image_id == tokenizer.unk_token_id:
        tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id >= vocab:
        grow = image_id + 1 - vocab
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                state[key] = torch.cat([state[key], state[key].new_zeros(grow, state[key].shape[1])])
        vocab = image_id + 1
    base = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version", "dtype",
                                           "torch_dtype"}
    text = {k: v for k, v in config.to_dict().items() if k in base}
    text.update(model_type="llama", vocab_size=vocab)
    strategy = "default" if config.mm_vision_select_feature == "patch" else "full"
    vision = config.clip_vision_config()
    llava_config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text, image_token_index=image_id,
        image_seq_length=config.tower_tokens("clip"), vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.tie_word_embeddings), pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
    )
    size = config.image_size
    image_processor = LlavaImageProcessorPil(
        do_pad=processor.pad, do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(processor.image_mean), image_std=list(processor.image_std), do_convert_rgb=True,
    )
    llava_processor = LlavaProcessor(  # no chat template: export --format llava writes it from build_prompt
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy=strategy, image_token=IMAGE_PLACEHOLDER, num_additional_image_tokens=1,
    )
    return llava_config, state, llava_processor


# ---------------------------------------------------------------------------------------------- tiny
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


register_auto_classes()
ADAPTER = ImofAdapter()

__all__ = ["ImofAdapter", "ImofConfig", "ImofLlamaForCausalLM", "ImofProcessor", "DinoVisionTransformer",
           "build_tiny_imof", "create_tiny_imof", "interleave", "is_imof_config", "read_imof_config",
           "removal_plan", "strict_load", "tiny_imof_config"]

"""Cambrian-1's four vision encoders, loaded from the user's local folders, and their preprocessing.

Cambrian checkpoints do not hold the encoders: ``CambrianMetaModel`` keeps them in a plain list
(``vision_tower_aux_list``, outside the module tree, so outside ``state_dict``) and each loads its
own hub id. encslim does the same with a local folder per slot (:mod:`encslim.models.external`),
in the folder layout the hub id has:

- ``siglip`` (``multimodal_encoder/siglip_encoder.SiglipVisionTower``): an open_clip folder of
  ``timm/ViT-SO400M-14-SigLIP-384`` (``open_clip_config.json`` + ``open_clip_model.safetensors``
  or ``open_clip_pytorch_model.bin``). The original runs ``clip_model.visual.trunk.forward_features``,
  a timm ``VisionTransformer``; :class:`TimmViT` re-implements that forward (patch conv, absolute
  position table, pre-norm blocks with exact-erf GELU, final ``norm``; no class token) with timm's
  parameter names, so ``visual.trunk.*`` loads as it is. 729 tokens are resized to 576 (24x24).
- ``clip`` (``clip_encoder.ClipVisionTower``): a transformers folder of
  ``openai/clip-vit-large-patch14-336``; ``CLIPVisionModel``, ``hidden_states[mm_vision_select_layer]``
  (-2), the CLS token dropped (``patch``).
- ``dinov2`` (``dino_encoder.DinoVisionTower``): a transformers folder of ``facebook/dinov2-giant``;
  ``Dinov2Model`` run at the id's ``-res`` size (378), ``last_hidden_state`` without CLS, 27x27
  resized to 24x24. Its position table is resampled as transformers 4.37.2 (Cambrian's pin) does,
  not as transformers 5 does (:func:`interpolate_pos_encoding_437`; tests/parity/cambrian/).
- ``convnext`` (``clip_convnext_encoder.CLIPConvNextTower``): an open_clip folder of
  ``laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup``; the timm ConvNeXt trunk's stem and
  four stages (Eagle's re-implementation, :mod:`encslim.models.convnext`, with timm's ``gamma``
  for the layer scale), each stage's output resized to 96x96 and concatenated (``multi-stage``).

Every resize is ``F.interpolate(bilinear, align_corners=False)`` in float32, as the towers'
``interpolate`` methods do. Weights are read with safetensors; a ``.bin`` only with
``torch.load(weights_only=True)``. Keys are checked strictly against the module (missing or
mis-shaped: an error naming them); the parts of a folder Cambrian never runs (the text tower,
SigLIP's attention-pool head, ConvNeXt's head) are ignored.

Preprocessing (``mm_utils.process_images``): per encoder, ``expand2square`` with the colour of its
processor's ``image_mean`` (``int(x * 255)``), a PIL resize to its input size (bicubic), then its
normalisation. The open_clip towers' ``ProcessorWrapper`` reports CLIP's mean as ``image_mean``
whatever the model's own normalisation, so SigLIP and ConvNeXt pad with CLIP's mean colour; that
quirk of the original is kept.
"""

import json
import math
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import ConfigError, ModelLoadError
from ...convnext import ConvNeXt
from ...layout import BackboneDeviceMixin, Mlp
from ...llava_processing import CLIP_MEAN, CLIP_STD, expand2square  # LLaVA's, as Cambrian's mm_utils

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPEN_CLIP_CONFIG = "open_clip_config.json"
TRUNK_PREFIX = "visual.trunk."
TRUNK_OVERRIDES = "encslim_trunk"  # open_clip_config.json key of tiny folders: the trunk's sizes
# timm model name -> the trunk sizes timm builds it with
TIMM_VITS = {
    "vit_so400m_patch14_siglip_384": {"embed_dim": 1152, "depth": 27, "num_heads": 16, "mlp_hidden": 4304,
                                      "patch_size": 14, "image_size": 384},
    "vit_so400m_patch14_siglip_224": {"embed_dim": 1152, "depth": 27, "num_heads": 16, "mlp_hidden": 4304,
                                      "patch_size": 14, "image_size": 224},
}
TIMM_CONVNEXTS = {
    "convnext_xxlarge": {"depths": [3, 4, 30, 3], "dims": [384, 768, 1536, 3072], "norm_eps": 1e-5},
    "convnext_large": {"depths": [3, 3, 27, 3], "dims": [192, 384, 768, 1536], "norm_eps": 1e-6},
}
WANTED = {  # what each slot kind needs, for messages
    "siglip": "an open_clip folder of timm/ViT-SO400M-14-SigLIP-384 (open_clip_config.json + weights)",
    "clip": "a transformers folder of openai/clip-vit-large-patch14-336 (config.json model_type clip)",
    "dinov2": "a transformers folder of facebook/dinov2-giant (config.json model_type dinov2)",
    "convnext": "an open_clip folder of laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
}


# ------------------------------------------------------------------------------------ modules
class TimmAttention(nn.Module):
    """timm ``Attention`` (fused qkv with bias, no q/k norm): SDPA, then ``proj``."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    """timm ``Block`` without layer scale: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_heads, mlp_hidden, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    """timm ``VisionTransformer.forward_features`` of the SigLIP trunk (``class_token=False``, no ``norm_pre``)."""

    def __init__(self, embed_dim, depth, num_heads, mlp_hidden, patch_size, image_size):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, embed_dim))
        self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.embed_dim = embed_dim

    def forward_features(self, x):
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))


def resample_tokens(features, tokens):
    """(B, N, C) -> (B, tokens, C): bilinear (align_corners=False) on the square grids, in float32."""
    b, n, c = features.shape
    if n == tokens:
        return features
    side, target = int(n ** 0.5), int(tokens ** 0.5)
    grid = features.view(b, side, side, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(target, target), mode="bilinear", align_corners=False)
    return grid.to(features.dtype).permute(0, 2, 3, 1).flatten(1, 2)


class Tower(BackboneDeviceMixin, nn.Module):
    """One encoder: ``forward(pixels)`` -> (B, token_len, width); ``vision_tower`` is the backbone."""

    def __init__(self, slot, kind, vision_tower, token_len, preprocess):
        super().__init__()
        self.slot, self.kind, self.token_len = slot, kind, int(token_len)
        self.vision_tower = vision_tower
        self.preprocess = preprocess  # {"image_size", "mean", "std", "pad_mean"}


class SiglipTower(Tower):
    def forward(self, images):
        features = self.vision_tower.forward_features(images.to(self.device, self.dtype))
        return resample_tokens(features, self.token_len)


class ClipTower(Tower):
    def __init__(self, *args, select_layer=-2, select_feature="patch"):
        super().__init__(*args)
        self.select_layer, self.select_feature = select_layer, select_feature

    def forward(self, images):
        out = self.vision_tower(images.to(self.device, self.dtype), output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            features = features[:, 1:]
        return resample_tokens(features.to(images.dtype), self.token_len)


def interpolate_pos_encoding_437(embeddings, tokens, height, width):
    """DINOv2's position table resampled as transformers 4.37 does (Cambrian's pinned version).

    ``Dinov2Embeddings.interpolate_pos_encoding`` of transformers 4.37.2: bicubic (align_corners False)
    with ``scale_factor = (h // patch + 0.1) / sqrt(N)`` per side. transformers 5 resizes to an explicit
    ``size`` instead, which samples other points of the 37x37 table: at Cambrian's 378 px the tower's
    outputs move by O(1) (tests/parity/cambrian/: 1.2 of 3.9 on a small random tower; 2e-6 with this).
    Installed on the ``Dinov2Model``'s embeddings as a bound method (``embeddings`` is that module).
    """
    num_patches = tokens.shape[1] - 1
    num_positions = embeddings.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return embeddings.position_embeddings
    class_pos = embeddings.position_embeddings[:, :1]
    patch_pos = embeddings.position_embeddings[:, 1:]
    dim = tokens.shape[-1]
    patch = embeddings.config.patch_size
    side = math.sqrt(num_positions)
    rows, cols = height // patch + 0.1, width // patch + 0.1
    grid = patch_pos.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.to(torch.float32), scale_factor=(float(rows / side), float(cols / side)),
                         mode="bicubic", align_corners=False).to(patch_pos.dtype)
    if grid.shape[-2:] != (int(rows), int(cols)):
        raise ValueError(f"DINOv2 position table resampled to {tuple(grid.shape[-2:])}, not {(int(rows), int(cols))}")
    return torch.cat((class_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


class DinoTower(Tower):
    def forward(self, images):
        features = self.vision_tower(images.to(self.device, self.dtype)).last_hidden_state[:, 1:]
        return resample_tokens(features.to(images.dtype), self.token_len)


class ConvNextTower(Tower):
    def __init__(self, *args, multi_stage=True):
        super().__init__(*args)
        self.multi_stage = multi_stage

    def forward(self, images):
        side = int(self.token_len ** 0.5)
        x = self.vision_tower.stem(images.to(self.device, self.dtype))
        stages = []
        for stage in self.vision_tower.stages:
            x = stage(x)
            stages.append(x)
        if not self.multi_stage:
            stages = stages[-1:]
        out = []
        for feature in stages:
            feature = F.interpolate(feature.float(), size=(side, side), mode="bilinear", align_corners=False)
            out.append(feature.to(x.dtype).flatten(2, 3).permute(0, 2, 1))
        return torch.cat(out, -1)


# ------------------------------------------------------------------------------------ folders
def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} does not load: {str(err).splitlines()[0]}") from err


def folder_kind(folder):
    """``(kind, detail)`` of an encoder folder: ``siglip``/``convnext`` (open_clip), ``clip``/``dinov2``
    (transformers), else ``(None, what it holds)``."""
    folder = Path(folder)
    if (folder / OPEN_CLIP_CONFIG).is_file():
        vision = _json(folder / OPEN_CLIP_CONFIG).get("model_cfg", {}).get("vision_cfg", {})
        name = str(vision.get("timm_model_name") or "")
        if "siglip" in name:
            return "siglip", name
        if name.startswith("convnext"):
            return "convnext", name
        return None, f"an open_clip model ({name or 'not a timm trunk'})"
    if (folder / "config.json").is_file():
        model_type = str(_json(folder / "config.json").get("model_type") or "")
        if model_type in ("clip", "clip_vision_model"):
            return "clip", model_type
        if model_type == "dinov2":
            return "dinov2", model_type
        return None, f"a {model_type or 'model without model_type'} model"
    return None, "neither open_clip_config.json nor config.json"


def _weight_files(folder, names):
    folder = Path(folder)
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(_json(index).get("weight_map", {}).values()))]
    return []


def read_tensors(folder, prefix, slot):
    """The tensors of an encoder folder whose keys start with ``prefix`` (the prefix stripped)."""
    files = _weight_files(folder, ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                                   "pytorch_model.bin"))
    if not files:
        raise ModelLoadError(f"encoder folder {folder} (slot {slot}) holds no weights (model.safetensors, "
                             "open_clip_model.safetensors or a .bin)")
    out = {}
    for path in files:
        if path.suffix == ".bin":
            import pickle

            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, OSError) as err:
                raise ModelLoadError(f"{path} does not load as plain tensors (weights_only=True): "
                                     f"{str(err).splitlines()[0]}; convert it to safetensors") from err
            out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            continue
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = handle.get_tensor(key)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{path} is not a readable safetensors file: {err}") from err
    return out


def strict_fill(module, state, folder, slot, ignored=()):
    """``module.load_state_dict(state)`` refusing missing or mis-shaped keys; keys under ``ignored`` prefixes
    (parts the original never runs) and other unexpected keys are left out."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    mismatched = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or mismatched:
        what = "; ".join(f"{len(keys)} {label} key(s): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                         for label, keys in (("missing", missing), ("mis-shaped", mismatched)) if keys)
        raise ModelLoadError(f"encoder folder {folder} (slot {slot}) does not hold the encoder its config "
                             f"describes: {what}")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def _preprocess_json(folder):
    path = Path(folder) / "preprocessor_config.json"
    return _json(path) if path.is_file() else {}


def vit_args(state, known, folder, slot):
    """The SigLIP trunk's sizes from its weights (width, depth, MLP width, patch, position table) and
    ``known`` (the timm name's sizes: the head count, which no shape holds)."""
    try:
        width, _, patch, _ = state["patch_embed.proj.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        side = int(round(state["pos_embed"].shape[1] ** 0.5))
    except KeyError as err:
        raise ModelLoadError(f"encoder folder {folder} (slot {slot}) holds no timm ViT trunk: "
                             f"visual.trunk.{err.args[0]} is missing") from None
    return {"embed_dim": width, "depth": depth, "num_heads": known.get("num_heads", 16), "mlp_hidden": mlp_hidden,
            "patch_size": patch, "image_size": side * patch}


def convnext_args(state, known, folder, slot):
    """The ConvNeXt trunk's sizes from its weights (stage widths and depths) and ``known`` (the LayerNorm eps)."""
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("stages.")})
    try:
        dims = [state[f"stages.{s}.blocks.0.conv_dw.weight"].shape[0] for s in stages]
    except KeyError as err:
        raise ModelLoadError(f"encoder folder {folder} (slot {slot}) holds no timm ConvNeXt trunk: "
                             f"visual.trunk.{err.args[0]} is missing") from None
    depths = [len({k.split(".")[3] for k in state if k.startswith(f"stages.{s}.blocks.")}) for s in stages]
    return {"depths": depths, "dims": dims, "norm_eps": known.get("norm_eps", 1e-5)}


def _check_width(tower, width, folder, slot):
    if width is not None and int(width) != int(tower):
        raise ModelLoadError(f"encoder folder {folder} (slot {slot}) gives {tower}-wide features, but the checkpoint's "
                             f"aux projector for {slot} takes {width}; pass the encoder this model was trained with")


def build_tower(slot, kind, folder, config):
    """The :class:`Tower` of ``slot`` from its local ``folder``, loaded strictly.

    open_clip folders are read as the hub stores them (``open_clip_config.json`` and
    ``open_clip_pytorch_model.bin``/``.safetensors``); the trunk's sizes come from its weights, the head count
    and LayerNorm eps from the timm model name (``encslim_trunk`` in the config, written by older tiny
    folders, overrides them). The features' width is checked against the aux projector's.
    """
    geometry, token_len = config.geometry(slot), config.token_len(slot)
    hub_id = config.hub_id(slot)
    known_width = (config.cambrian_encoder_specs.get(slot) or {}).get("width")  # the checkpoint's, when read
    if kind in ("siglip", "convnext"):
        cfg = _json(Path(folder) / OPEN_CLIP_CONFIG)
        name = cfg["model_cfg"]["vision_cfg"]["timm_model_name"]
        pre = cfg.get("preprocess_cfg", {})
        table = TIMM_VITS if kind == "siglip" else TIMM_CONVNEXTS
        if name not in table and TRUNK_OVERRIDES not in cfg:
            raise ModelLoadError(f"encoder folder {folder} (slot {slot}) is timm model {name}; encslim knows "
                                 f"{', '.join(table)}")
        state = read_tensors(folder, TRUNK_PREFIX, slot)
        derive = vit_args if kind == "siglip" else convnext_args
        args = {**derive(state, table.get(name, {}), folder, slot), **cfg.get(TRUNK_OVERRIDES, {})}
        mean = tuple(pre.get("mean", (0.5,) * 3 if kind == "siglip" else CLIP_MEAN))
        std = tuple(pre.get("std", (0.5,) * 3 if kind == "siglip" else CLIP_STD))
        preprocess = {"image_size": geometry["image_size"], "mean": mean, "std": std, "pad_mean": CLIP_MEAN}
        if kind == "siglip":
            _check_width(args["embed_dim"], known_width, folder, slot)
            trunk = TimmViT(args["embed_dim"], args["depth"], args["num_heads"], args["mlp_hidden"], args["patch_size"],
                            args.get("image_size", geometry["image_size"]))
            strict_fill(trunk, state, folder, slot)
            return SiglipTower(slot, kind, trunk, token_len, preprocess)
        multi = "multi-stage" in hub_id.lower()
        _check_width(sum(args["dims"]) if multi else args["dims"][-1], known_width, folder, slot)
        trunk = ConvNeXt(args["depths"], args["dims"], args["norm_eps"], 1e-6, 0)
        state = {k[:-len("gamma")] + "weight" if k.endswith(".gamma") else k: v for k, v in state.items()}
        strict_fill(trunk, state, folder, slot)
        return ConvNextTower(slot, kind, trunk, token_len, preprocess, multi_stage=multi)
    pre = _preprocess_json(folder)
    if kind == "clip":
        from transformers import CLIPVisionModel

        # a whole CLIPModel folder (openai/clip-vit-large-patch14-336): its text tower is not Cambrian's
        model = hf_encoder(CLIPVisionModel, folder, slot, ("text_model.", "text_projection.", "visual_projection.",
                                                            "logit_scale"))
        _check_width(model.config.hidden_size, known_width, folder, slot)
        preprocess = {"image_size": int(model.config.image_size), "mean": tuple(pre.get("image_mean", CLIP_MEAN)),
                      "std": tuple(pre.get("image_std", CLIP_STD)), "pad_mean": tuple(pre.get("image_mean", CLIP_MEAN))}
        return ClipTower(slot, kind, model, token_len, preprocess, select_layer=config.mm_vision_select_layer,
                         select_feature=config.mm_vision_select_feature)
    from transformers import Dinov2Model

    model = hf_encoder(Dinov2Model, folder, slot, ())
    _check_width(model.config.hidden_size, known_width, folder, slot)
    model.embeddings.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding_437, model.embeddings)
    mean = tuple(pre.get("image_mean", IMAGENET_MEAN))
    preprocess = {"image_size": geometry["image_size"], "mean": mean, "std": tuple(pre.get("image_std", IMAGENET_STD)),
                  "pad_mean": mean}
    return DinoTower(slot, kind, model, token_len, preprocess)


def hf_encoder(model_class, folder, slot, ignored):
    """``model_class.from_pretrained(folder)`` (transformers maps the folder's key names), refusing missing or
    mis-shaped keys and unexpected ones outside the ``ignored`` prefixes (parts Cambrian never runs)."""
    from transformers.utils import logging as hf_logging

    from ...loading import _DropLoadReport, check_load_report

    logger = hf_logging.get_logger("transformers.modeling_utils")
    quiet = _DropLoadReport()
    logger.addFilter(quiet)
    try:
        model, info = model_class.from_pretrained(str(folder), output_loading_info=True, ignore_mismatched_sizes=True)
    finally:
        logger.removeFilter(quiet)
    info = dict(info)
    info["unexpected_keys"] = [k for k in info.get("unexpected_keys") or () if not k.startswith(tuple(ignored))]
    try:
        check_load_report(folder, info)
    except ModelLoadError as err:
        raise ModelLoadError(f"encoder folder for slot {slot}: {err}") from None
    return model


def check_encoder_folders(config, paths, model_dir):
    """``{slot: folder}`` for every slot of ``config``, each of the slot's kind; one-line errors otherwise.

    Raises:
        ConfigError: a slot without a folder (naming every slot and the option that gives them), a
            folder of another backbone, or a name that is not a slot.
    """
    slots = config.slot_names
    unknown = sorted(set(paths) - set(slots))
    if unknown:
        raise ConfigError(f"--encoder names {', '.join(unknown)}, which {model_dir} does not have; its encoder "
                          f"slots are {', '.join(slots)}")
    missing = [s for s in slots if s not in paths]
    if missing:
        from .hub import search_report

        options = " ".join(f"--encoder {s}=PATH" for s in missing)
        raise ConfigError(f"{model_dir} is a Cambrian checkpoint without its vision encoders, and the local Hugging "
                          f"Face cache does not hold {', '.join(missing)}: {search_report(config, missing)}; "
                          f"download them once (huggingface-cli download HUB_ID) or pass {options}")
    for slot in slots:
        folder = Path(paths[slot])
        if not folder.is_dir():
            raise ConfigError(f"--encoder {slot}={folder}: no such folder; pass {WANTED[config.kind(slot)]}")
        kind, detail = folder_kind(folder)
        if kind != config.kind(slot):
            raise ConfigError(f"--encoder {slot}={folder} holds {detail if kind is None else 'a ' + kind + ' model'}, "
                              f"but slot {slot} ({config.hub_id(slot)}) needs {WANTED[config.kind(slot)]}")
    return {s: str(paths[s]) for s in slots}


# ------------------------------------------------------------------------------------ pixels
def pixel_tensor(image, preprocess):
    """``process_images`` for one encoder: pad square, resize (bicubic), ``/255``, normalise: (3, S, S)."""
    import numpy as np

    size = int(preprocess["image_size"])
    background = tuple(int(x * 255) for x in preprocess["pad_mean"])
    image = expand2square(image.convert("RGB"), background).resize((size, size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(preprocess["mean"], dtype=np.float32)
    std = np.asarray(preprocess["std"], dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())

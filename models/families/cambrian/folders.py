"""Cambrian-1's encoder folders: what a folder holds, its tensors, strict filling, the trunk sizes from weights.

open_clip folders are read as the hub stores them (``open_clip_config.json`` plus
``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``; a ``.bin`` only with
``torch.load(weights_only=True)``); transformers folders (CLIP, DINOv2) through ``from_pretrained`` with
the load report checked. :func:`check_encoder_folders` refuses a missing slot (naming the hub ids and the
cache folders searched, :mod:`.hub`), a folder of another backbone or an unknown slot, in one line.
"""

import json
from pathlib import Path

import torch

from ....errors import ConfigError, ModelLoadError

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

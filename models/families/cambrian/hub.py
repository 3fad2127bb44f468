"""Cambrian-1's encoders found in the local Hugging Face cache, offline, by the ids the original loads.

The original downloads each encoder from the hub at run time (``multimodal_encoder/*_encoder.py``), so a
user who ran Cambrian once has all four in the local cache. The hub repository of an entry of
``mm_vision_tower_aux_list`` follows the original's own mapping:

- SigLIP (``siglip_encoder.extract_res_interp``): ``siglip/CLIP-ViT-SO400M-14-384`` ->
  ``timm/ViT-SO400M-14-SigLIP-384`` (open_clip's ``hf-hub:`` id), ``siglip/CLIP-ViT-SO400M-14`` ->
  ``timm/ViT-SO400M-14-SigLIP``;
- ConvNeXt (``clip_convnext_encoder.extract_res_interp``): ``clip-convnext-XXL*`` ->
  ``laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup``, ``clip-convnext-L*`` ->
  ``laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup``;
- DINOv2 (``dino_encoder.extract_res_interp``): the known base id the name starts with (``-res378`` and
  ``-interpN`` stripped: ``facebook/dinov2-giant-res378`` -> ``facebook/dinov2-giant``);
- CLIP (``clip_encoder.extract_interp``): the name before ``-interp``.

The cache is read with ``huggingface_hub.snapshot_download(..., local_files_only=True)`` (never the
network) in ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub`` and ``~/.cache/huggingface/hub``,
read when called (not when imported). A snapshot counts when it holds the file its loader opens first
(``open_clip_config.json`` for open_clip folders, ``config.json`` for transformers folders).
"""

import os
from pathlib import Path

SIGLIP_IDS = (("siglip/CLIP-ViT-SO400M-14-384", "timm/ViT-SO400M-14-SigLIP-384"),
              ("timm/ViT-SO400M-14-SigLIP-384", "timm/ViT-SO400M-14-SigLIP-384"),
              ("siglip/CLIP-ViT-SO400M-14", "timm/ViT-SO400M-14-SigLIP"),
              ("timm/ViT-SO400M-14-SigLIP", "timm/ViT-SO400M-14-SigLIP"))
CONVNEXT_IDS = (("clip-convnext-L", "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"),
                ("clip-convnext-XXL", "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"))
DINO_IDS = ("facebook/dinov2-small", "facebook/dinov2-base", "facebook/dinov2-large",
            "facebook/dinov2-giant-imagenet1k-1-layer", "facebook/dinov2-giant")
MARKER = {"siglip": "open_clip_config.json", "convnext": "open_clip_config.json", "clip": "config.json",
          "dinov2": "config.json"}


def hub_repo(kind, name):
    """The hub repository the original loads for an ``mm_vision_tower_aux_list`` entry, or ``None``."""
    name = str(name)
    if kind == "siglip":
        return next((repo for prefix, repo in SIGLIP_IDS if name.startswith(prefix)), None)
    if kind == "convnext":
        return next((repo for prefix, repo in CONVNEXT_IDS if name.startswith(prefix)), None)
    if kind == "dinov2":
        return next((prefix for prefix in DINO_IDS if name.startswith(prefix)), None)
    if kind == "clip":
        return name.split("-interp")[0]
    return None


def cache_dirs():
    """The Hugging Face cache folders to search, in order, without repeats (from the environment now)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    found = []
    for value in (os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE"),
                  os.path.join(home, "hub"), os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")):
        if value and str(Path(value).expanduser()) not in found:
            found.append(str(Path(value).expanduser()))
    return found


def find_cached(kind, name):
    """``(folder or None, searched)``: the cached snapshot of the encoder ``name`` (``kind``), and the
    ``models--org--name`` folders looked in (for the message when none holds it)."""
    repo = hub_repo(kind, name)
    if repo is None:
        return None, []
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    searched = []
    for cache in cache_dirs():
        searched.append(str(Path(cache) / f"models--{repo.replace('/', '--')}"))
        try:
            folder = snapshot_download(repo, cache_dir=cache, local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            continue
        if (Path(folder) / MARKER[kind]).is_file():
            return str(Path(folder)), searched
    return None, searched


def resolve_missing(config, paths):
    """``{slot: folder}`` found in the cache for the slots of ``config`` that ``paths`` leaves without one."""
    found = {}
    for slot in config.slot_names:
        if slot not in paths:
            folder, _ = find_cached(config.kind(slot), config.hub_id(slot))
            if folder is not None:
                found[slot] = folder
    return found


def search_report(config, slots):
    """One clause per slot: the hub id looked up and the cache folders searched."""
    parts = []
    for slot in slots:
        repo = hub_repo(config.kind(slot), config.hub_id(slot))
        _, searched = find_cached(config.kind(slot), config.hub_id(slot))
        where = ", ".join(searched) if searched else "no cache folder"
        parts.append(f"{slot} ({config.hub_id(slot)} -> hub id {repo}; searched {where})")
    return "; ".join(parts)

"""Shared pieces of the families that load an original checkpoint layout (Eagle, Eagle2, I-MoF).

Each family keeps its own modules, key names and tolerated differences; what is the same for all of
them lives here:

- reading ``config.json`` into the family's config class (:func:`read_config_json`, :func:`make_config`);
- the key shapes of a folder's weights (safetensors or transformers 4.x ``.bin``), from the headers only
  (:func:`header_shapes`);
- the keys tolerated in every Llama-based checkpoint (:data:`ROTARY_INV_FREQ`, :func:`tolerate`);
- the strict key check against a meta-device model (:func:`meta_shapes`, :func:`check_keys`) and the
  ``from_pretrained`` call after it (:func:`from_pretrained`);
- LEFT-padded token rows and the tokenizer helpers of the processors (:func:`left_pad`,
  :func:`pad_token_id`, :class:`TokenizerMixin`);
- the adapter methods that are the same for all three (:class:`LayoutAdapter`);
- module-tree helpers of the towers: a backbone one level down under ``vision_model`` (transformers
  4.37's key names, :func:`under_vision_model`), the ``dtype``/``device`` of a tower's backbone
  (:class:`BackboneDeviceMixin`), the plain fc1 -> GELU -> fc2 :class:`Mlp` (timm's and DINOv2's) and
  a tower's sizes over its defaults (:func:`tower_spec`);
- the name of transformers' key/value cache argument (:data:`CACHE_KWARG`).

Every error is a one-line :class:`~encslim.errors.ModelLoadError` that names the family and folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin

from ..errors import ModelLoadError
from ..files import CONFIG_NAME
from .adapter import Adapter, Batch, Config, Masked, Model, Processor
from .checkpoint import Checkpoint
from .keys import key_problems

logger = logging.getLogger(__name__)

SHOWN_KEYS = 3  # keys named per kind of problem in a strict-load error
# transformers 4.3x Llama checkpoints store each layer's rotary table (``model.layers.N.self_attn.rotary_emb.inv_freq``,
# a buffer computed from the config); later transformers recompute it and hold no such key: tolerated, not loaded
ROTARY_INV_FREQ = re.compile(r"(?:^|\.)rotary_emb\.inv_freq$")
SAME_MODEL = "the checkpoint and config.json must come from the same model"
IMAGE_PLACEHOLDER = "<image>"
# transformers renamed the key/value cache argument and output field ``past_key_values`` -> ``cache`` (the old
# name warns, then goes in 5.40): use whichever this transformers has. The native family keeps its own copy of
# this line: its modeling file ships alone as remote code.
CACHE_KWARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
               else "past_key_values")


# ------------------------------------------------------------------------------------------- config
def read_config_json(path: str | os.PathLike[str]) -> Any:
    """The dict of ``path/config.json``; ``ModelLoadError`` (its first line) when it does not load."""
    try:
        return json.loads(Path(path, CONFIG_NAME).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} does not load: {str(err).splitlines()[0]}") from err


def make_config(config_class: Any, data: Mapping[str, Any], path: str | os.PathLike[str], family: str) -> Config:
    """``config_class(**data)`` without ``model_type``; ``ModelLoadError`` naming ``family`` when it refuses."""
    data = {k: v for k, v in data.items() if k != "model_type"}
    try:
        return config_class(**data)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path}/{CONFIG_NAME} does not make an {family} config: {err}") from err


# ------------------------------------------------------------------------------------------ weights
def header_shapes(path: str | os.PathLike[str], family: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a folder's weights, read from the file headers (no tensor loaded).

    The weights are :class:`~encslim.models.folder.Checkpoint`'s: safetensors (index, else single file),
    else transformers 4.x's ``pytorch_model*.bin`` (index, else single file).

    Args:
        path: the model folder.
        family: the family's name for the message (``"Eagle"``, ``"Eagle2"``, ``"I-MoF"``).

    Raises:
        ModelLoadError: no weights, or a file that does not read (naming it and the family).
    """
    try:
        return Checkpoint.open(path).shapes()
    except ModelLoadError as err:
        raise ModelLoadError(f"{family} weights: {err}") from err


def tolerate(*patterns: re.Pattern[str] | None) -> re.Pattern[str]:
    """One compiled pattern matching what any of ``patterns`` (compiled, ``None`` skipped) matches."""
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns if p is not None))


def meta_shapes(model_class: Any, config: Config, skip: Iterable[str] = ()) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``model_class(config)``'s state dict, built on the meta device (no memory);
    keys in ``skip`` (a tied ``lm_head.weight``) left out."""
    with torch.device("meta"):
        model = model_class(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in set(skip)}


def check_keys(path: str | os.PathLike[str], shapes: Mapping[str, Sequence[int]],
               expected: Mapping[str, Sequence[int | None]], what: str,
               tolerated: re.Pattern[str] | None = None) -> list[str]:
    """Refuse a checkpoint whose keys are not exactly the model's: missing, unexpected or mis-shaped.

    Args:
        path: the model folder (named in the message).
        shapes: ``{key: shape}`` of the checkpoint (:func:`header_shapes`).
        expected: ``{key: shape}`` of the model (:func:`meta_shapes`).
        what: what the checkpoint must match, e.g. ``"Eagle config (clip-448;convnext-1024)"``.
        tolerated: a compiled pattern; keys it ``search``-es may be missing or unexpected (they
            are derived, or built to fit). ``None``: none.

    Returns:
        The sorted tolerated keys the checkpoint lacks (the caller recomputes them).

    Raises:
        ModelLoadError: one line, ``N missing/unexpected/mis-shaped key(s): first keys (+M more)``
            (:func:`~encslim.models.folder.key_problems`, the one strict comparison).
    """
    problems = key_problems(expected, shapes, tolerated)
    if problems:
        raise ModelLoadError(f"{path} does not match its {what}: {'; '.join(problems.listed())}; {SAME_MODEL}")
    extra = sorted(k for k in shapes if k not in expected)
    if extra:  # tolerated ones: named in the load's report, not loaded
        logger.info("%s: %d checkpoint key(s) tolerated and not loaded (derived, recomputed): %s", path, len(extra),
                    ", ".join(extra[:SHOWN_KEYS]) + (f" (+{len(extra) - SHOWN_KEYS} more)" if len(extra) > SHOWN_KEYS
                                                     else ""))
    return list(problems.tolerated_missing)


def from_pretrained(model_class: Any, path: str | os.PathLike[str], config: Config, dtype: torch.dtype | None = None,
                    device_map: str | dict[str, Any] | None = None) -> Model:
    """``model_class.from_pretrained(path, config=config)``, passing ``dtype``/``device_map`` only when set."""
    kwargs: dict[str, Any] = {"config": config}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    return model_class.from_pretrained(str(path), **kwargs)


# ------------------------------------------------------------------------------------------- tokens
def pad_token_id(tokenizer: Any, fallbacks: Iterable[str] = ("pad_token_id", "unk_token_id", "eos_token_id")) -> int:
    """The first of the tokenizer's ``fallbacks`` ids that is set; 0 when none is."""
    found: int = next((i for i in (getattr(tokenizer, name, None) for name in fallbacks) if i is not None), 0)
    return found


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` (B, L) long tensors of the id lists ``rows``, LEFT-padded with
    ``pad_id`` to the longest (mask 1 on the real tokens)."""
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row):] = torch.tensor(row)
            mask[i, length - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class TokenizerMixin:
    """``pad_token_id`` and ``batch_decode`` of a processor holding ``self.tokenizer``.

    ``PAD_FALLBACKS``: the tokenizer ids tried in order for padding (:func:`pad_token_id`).
    """

    PAD_FALLBACKS = ("pad_token_id", "unk_token_id", "eos_token_id")
    tokenizer: Any  # set by the processor (a transformers tokenizer)

    @property
    def pad_token_id(self) -> int:
        """The id rows are padded with (:func:`pad_token_id`)."""
        return pad_token_id(self.tokenizer, self.PAD_FALLBACKS)

    def batch_decode(self, ids: Any, **kwargs: Any) -> list[str]:
        """The texts of token id rows ``ids``, special tokens skipped."""
        texts: list[str] = self.tokenizer.batch_decode(ids, skip_special_tokens=True, **kwargs)
        return texts


# ------------------------------------------------------------------------------------------ adapter
class LayoutAdapter(Adapter):
    """What the original-layout adapters share: ``<image>`` prompts, the processor's inputs, the meta model.

    ``model_class``: the family's top-level model class (built by :meth:`empty_model`). A family whose
    token rows depend on the mask overrides :meth:`prompt_inputs`.
    """

    model_class: Any = None  # the family's transformers model class

    def empty_model(self, config: Config) -> Model:
        with torch.device("meta"):
            return self.model_class(config)

    def image_placeholder(self, processor: Processor) -> str:
        return IMAGE_PLACEHOLDER

    def prompt_inputs(self, processor: Processor, prompts: Sequence[str], masked: Masked = frozenset(),
                      mask_mode: str = "removal") -> Batch:
        """The processor's LEFT-padded ``input_ids``/``attention_mask`` of ``prompts``."""
        inputs: Batch = processor.text_inputs(prompts)
        return inputs

    def prepare_batch(self, processor: Processor, images: Sequence[Any] | None, prompts: Sequence[str],
                      masked: Masked = frozenset(), mask_mode: str = "removal") -> Batch:
        """Prompts with ``<image>`` first where they lack it (when there are images); pixels of every image."""
        prompts = [p if images is None or IMAGE_PLACEHOLDER in p else f"{IMAGE_PLACEHOLDER}\n{p}" for p in prompts]
        batch = self.prompt_inputs(processor, prompts, masked, mask_mode)
        if images is not None:
            batch["pixel_values"] = processor.pixel_values(list(images))
        return batch

    def pixel_inputs(self, processor: Processor, images: Sequence[Any], masked: Masked = frozenset()) -> Batch:
        return {"pixel_values": processor.pixel_values(list(images))}

    def how_to_load(self, folder: str | os.PathLike[str], model: Model) -> str:
        return f'import encslim\nmodel, processor, adapter = encslim.load_model("{folder}")\n'


# ------------------------------------------------------------------------------------------- towers
def under_vision_model(model: nn.Module) -> nn.Module:
    """A plain module holding ``model`` as ``vision_model``.

    transformers 5's ``CLIPVisionModel``/``SiglipVisionModel`` hold the transformer's modules
    themselves; the original checkpoints (transformers 4.37) name them under ``vision_model.``, so the
    model sits one level down.
    """
    holder = nn.Module()
    holder.vision_model = model
    return holder


class BackboneDeviceMixin:
    """``dtype`` and ``device`` of a tower: those of its backbone ``self.vision_tower``'s first parameter."""

    vision_tower: nn.Module  # set by the tower

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype."""
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The backbone's device."""
        return next(self.vision_tower.parameters()).device


class Mlp(nn.Module):
    """timm's / DINOv2's ``Mlp``: fc1 -> GELU -> fc2 (dropout 0, no norm)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


def tower_spec(defaults: Mapping[str, Any], spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A tower's sizes: ``spec`` over ``defaults``.

    Args:
        defaults: the real model's sizes.
        spec: the overrides (``None``: none); a ``model_type`` key is ignored.

    Returns:
        The merged dict.

    Raises:
        ValueError: ``spec`` names a size the tower does not have.
    """
    unknown = set(spec or {}) - set(defaults) - {"model_type"}
    if unknown:
        raise ValueError(f"unknown tower size key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(spec or {})}

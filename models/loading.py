"""Load any supported model folder through its family's adapter, refusing weights that do not fit."""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelLoadError
from ..files import CONFIG_NAME, read_json
from .keys import KeyProblems

if TYPE_CHECKING:
    from .adapter import Adapter
    from .folder import ModelFolder

FolderLike = str | os.PathLike[str]  # a model folder's path, or a ModelFolder (which is one)

DTYPES = ("float32", "bfloat16", "float16")
SHOWN_KEYS = 3  # keys named per kind of problem in a load error
LOAD_FIX = ("the weights must be the ones config.json describes: re-save the model with save_pretrained "
            "(or encslim export --format hf), or fix the checkpoint's key names")


def _keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return f"{', '.join(keys[:SHOWN_KEYS])}{more}"


def _extra_prefix(missing: Iterable[str], unexpected: Iterable[str]) -> str | None:
    """The prefix (``model.``) that, stripped from the unexpected keys, gives missing ones; else ``None``."""
    unexpected = list(unexpected)
    heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(heads) != 1 or not all("." in k for k in unexpected):
        return None
    prefix = f"{heads.pop()}."
    stripped = {k[len(prefix):] for k in unexpected}
    return prefix if stripped & set(missing) else None


def check_load_report(path: FolderLike, info: Mapping[str, Any]) -> None:
    """Raise ``ModelLoadError`` if a transformers load report lists any missing, unexpected or mis-shaped key.

    Args:
        path: the model folder (named in the message).
        info: what ``from_pretrained(..., output_loading_info=True)`` returns with the model:
            ``missing_keys`` (parameters the checkpoint lacks: transformers initialises them
            randomly), ``unexpected_keys`` (checkpoint tensors the model has no place for),
            ``mismatched_keys`` (``(key, checkpoint shape, model shape)``, with
            ``ignore_mismatched_sizes=True``) and ``error_msgs``. Keys transformers
            legitimately skips (non-persistent buffers, a tied ``lm_head.weight``, its
            ``_keys_to_ignore_on_load_*``) are not in it.

    Raises:
        ModelLoadError: one line naming the count and the first keys of each problem, and the fix.
    """
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda item: item[0])
    errors = [str(e).splitlines()[0] for e in info.get("error_msgs") or () if str(e).strip()]
    # transformers made the key comparison; the report is phrased as every strict check phrases it
    report = KeyProblems(missing=tuple(missing), unexpected=tuple(unexpected),
                         mismatched=tuple((key, tuple(ckpt), tuple(model)) for key, ckpt, model in mismatched))
    problems = report.listed(missing_note=" (they would be random)")
    if errors:
        problems.append(f"{len(errors)} load error(s): {errors[0]}")
    if not problems:
        return
    fix = LOAD_FIX
    prefix = _extra_prefix(missing, unexpected)
    if prefix:
        fix = f"the checkpoint's keys carry an extra '{prefix}' prefix: strip it and re-save; {fix}"
    raise ModelLoadError(f"{path}: the weights do not match config.json: {'; '.join(problems)}; {fix}")


def unpickling_error(path: FolderLike, err: BaseException) -> ModelLoadError:
    """The ``ModelLoadError`` of a ``.bin`` weights file that ``torch.load(weights_only=True)`` refuses."""
    bins = sorted(p.name for p in Path(path).glob("*.bin")) if Path(path).is_dir() else []
    where = f"{path}/{bins[0]}" if len(bins) == 1 else f"{path} ({_keys(bins)})" if bins else str(path)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.DOTALL)
    reason = found.group(1).strip() if found else next((x.strip() for x in text.splitlines() if x.strip()), "")
    return ModelLoadError(
        f"{where} is not a plain weights file: torch.load(weights_only=True) refuses it "
        f"({reason[:160] or type(err).__name__}); re-save the model as safetensors (save_pretrained) from a "
        f"source you trust, or remove the file"
    )


class _DropLoadReport(logging.Filter):
    """Drops transformers' multi-line LOAD REPORT table: :func:`check_load_report` says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def load_pretrained(model_class: Any, path: FolderLike, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(path, **kwargs)`` that refuses weights that do not fit the config.

    transformers loads a checkpoint with missing keys (initialised randomly), unexpected ones
    (dropped) or mis-shaped ones with a warning at most; this reads its load report instead and
    raises (see :func:`check_load_report`). A ``.bin`` that ``torch.load(weights_only=True)``
    refuses becomes a one-line error naming the file.

    Raises:
        ModelLoadError: the weights do not match, or a ``.bin`` does not unpickle safely.
    """
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    quiet = _DropLoadReport()
    logger.addFilter(quiet)
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
    except pickle.UnpicklingError as err:
        raise unpickling_error(path, err) from err
    finally:
        logger.removeFilter(quiet)
    check_load_report(path, info)
    return model


def read_config(path: FolderLike) -> Any:
    """The ``config.json`` of a model folder as a dict; ``ModelLoadError`` if there is none."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{path} is not a folder; pass a model folder that holds config.json")
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(f"{path} holds no config.json, so it is not a model folder; pass a saved model folder")
    return read_json(folder / CONFIG_NAME, "re-save the model", ModelLoadError)


def open_folder(path: FolderLike, encoders: Mapping[str, Any] | None = None, weights: bool = True) -> ModelFolder:
    """``path`` as a checked :class:`~encslim.models.folder.ModelFolder` (one passes through): the config,
    the family and every weight header (safetensors, or transformers 4.x's ``.bin``) read once, each shard
    checked before any work.

    Raises:
        ModelLoadError: not a model folder, a truncated or garbled shard (one line naming it and the fix).
        ConfigError: ``encoders`` names a slot the model does not have.
    """
    from .folder import ModelFolder

    return ModelFolder.open(path, encoders=encoders, weights=weights)


def adapter_for(path: FolderLike, encoders: Mapping[str, Any] | None = None) -> Adapter:
    """The adapter of the model family stored at ``path`` (a folder or a ``ModelFolder``), its weights
    checked (:func:`open_folder`) and bound to the folder's encoder folders."""
    return open_folder(path, encoders).adapter


def load_model(path: FolderLike, device: str = "cpu", dtype: str = "float32",
               device_map: str | dict[str, Any] | None = None,
               encoders: Mapping[str, Any] | None = None) -> tuple[Any, Any, Adapter]:
    """Load a model folder.

    The folder is opened first (:func:`open_folder`: one read of config and headers, the shard check)
    so a truncated or garbled shard is refused in one line before any weight is read.

    Args:
        path: a local folder with ``config.json`` and safetensors weights, or a
            :class:`~encslim.models.folder.ModelFolder` (its encoder folders are used).
        device: where to put the model (ignored with ``device_map``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device_map: e.g. ``"auto"`` to spread a model larger than one device (needs accelerate).
        encoders: ``{slot: folder}`` of encoders the checkpoint does not hold (Cambrian).

    Returns:
        ``(model, processor, adapter)``; the adapter is bound to the folder's encoder folders.

    Raises:
        ModelLoadError: not a model folder, unsupported family, a truncated or corrupt shard, or weights
            that do not load or do not match the config (missing, unexpected or mis-shaped keys: never
            random weights).
        ConfigError: ``encoders`` names a slot the model does not have.
    """
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype '{dtype}' unknown; use one of {', '.join(DTYPES)}")
    folder = open_folder(path, encoders)
    adapter = folder.adapter
    path = folder.path
    try:
        model, processor = adapter.load(str(path), device=device, dtype=getattr(torch, dtype), device_map=device_map)
    except pickle.UnpicklingError as err:
        raise unpickling_error(path, err) from err
    except ConfigError:
        raise  # a user error that already names the problem and the fix (e.g. a missing --encoder folder)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the model in {path}: {str(err).splitlines()[0]}") from err
    return model, processor, adapter

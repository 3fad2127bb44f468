"""Load any supported model folder through its family's adapter."""

import json
from pathlib import Path

from ..errors import ModelLoadError
from .adapter import get_adapter

DTYPES = ("float32", "bfloat16", "float16")


def read_config(path):
    """The ``config.json`` of a model folder as a dict; ``ModelLoadError`` if there is none."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{path} is not a folder; pass a model folder that holds config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} holds no config.json, so it is not a model folder; pass a saved model folder")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{config_file} is not valid JSON ({err}); re-save the model") from err


def adapter_for(path):
    """The adapter of the model family stored at ``path``."""
    data = read_config(path)
    model_type = data.get("model_type")
    if not model_type:
        raise ModelLoadError(f"{path}/config.json has no model_type; it is not a transformers model folder")
    return get_adapter(model_type)


def load_model(path, device="cpu", dtype="float32", device_map=None):
    """Load a model folder.

    Args:
        path: a local folder with ``config.json`` and safetensors weights.
        device: where to put the model (ignored with ``device_map``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device_map: e.g. ``"auto"`` to spread a model larger than one device (needs accelerate).

    Returns:
        ``(model, processor, adapter)``.

    Raises:
        ModelLoadError: not a model folder, unsupported family, or weights that do not load.
    """
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype '{dtype}' unknown; use one of {', '.join(DTYPES)}")
    adapter = adapter_for(path)
    try:
        model, processor = adapter.load(str(path), device=device, dtype=getattr(torch, dtype), device_map=device_map)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the model in {path}: {str(err).splitlines()[0]}") from err
    return model, processor, adapter

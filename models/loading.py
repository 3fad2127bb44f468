"""Load any supported model folder through its family's adapter."""

from pathlib import Path

from ..errors import ModelLoadError
from ..files import CONFIG_NAME, read_json
from .adapter import adapter_for_config

DTYPES = ("float32", "bfloat16", "float16")


def read_config(path):
    """The ``config.json`` of a model folder as a dict; ``ModelLoadError`` if there is none."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{path} is not a folder; pass a model folder that holds config.json")
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(f"{path} holds no config.json, so it is not a model folder; pass a saved model folder")
    return read_json(folder / CONFIG_NAME, "re-save the model", ModelLoadError)


def adapter_for(path):
    """The adapter of the model family stored at ``path``."""
    data = read_config(path)
    if not data.get("model_type"):
        raise ModelLoadError(f"{path}/config.json has no model_type; it is not a transformers model folder")
    return adapter_for_config(data)


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

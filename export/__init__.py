"""Export: HF folders, stock-class conversion (LLaVA, each family's stock formats), remote code, ONNX.

One function per format of the stage, all with the same shape ``export_<format>(model_dir, out, *,
overwrite=False, ...) -> manifest``; a family's stock format (``Family.exports``, reached by
removing slots) is written by :func:`~encslim.export.stock.export_stock`. :func:`export_model`
dispatches on the format name (the registry's :func:`~encslim.models.registry.export_formats`). Every
export verifies the written folder against the source before publishing it (atomically) with a
model card and a manifest. Imports are lazy: ``import encslim.export`` loads no torch.
"""

from functools import partial
from importlib import import_module

# the stage's own writers: format name -> "module:function"; every other format of
# models.registry.export_formats() is a family's stock format, written by STOCK
FORMATS = {
    "hf": "encslim.export.hf_folder:export_hf",
    "llava": "encslim.export.llava:export_llava",
    "remote-code": "encslim.export.remote_code:export_remote_code",
    "onnx": "encslim.export.to_onnx:export_onnx",
}
STOCK = "encslim.export.stock:export_stock"

_LAZY = {target.split(":")[1]: target for target in (*FORMATS.values(), STOCK)}


def _load(target):
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


def exporter(fmt):
    """The export function of format ``fmt``, called as ``exporter(fmt)(model_dir, out, **options)``.

    Args:
        fmt: one of :func:`~encslim.models.registry.export_formats`.

    Returns:
        The stage's own writer of ``fmt``, or the stock writer bound to ``fmt``.

    Raises:
        ConfigError: ``fmt`` is unknown (the message lists the formats).
    """
    from ..errors import ConfigError
    from ..models.registry import export_formats

    if fmt in FORMATS:
        return _load(FORMATS[fmt])
    if fmt not in export_formats():
        raise ConfigError(f"export format '{fmt}' unknown; use one of {', '.join(export_formats())}")
    return partial(_load(STOCK), fmt=fmt)


def export_model(model_dir, out, fmt="hf", **options):
    """Export ``model_dir`` to ``out`` in format ``fmt`` (see :func:`exporter`); returns the manifest."""
    return exporter(fmt)(model_dir, out, **options)


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'encslim.export' has no attribute {name!r}")
    value = _load(target)
    globals()[name] = value
    return value


__all__ = ["FORMATS", "exporter", "export_model", *_LAZY]

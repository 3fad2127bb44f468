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


# the settings each of the stage's own formats takes (beyond overwrite/ranking/bench/atol)
FORMAT_OPTIONS = {"hf": ("max_shard_size", "dtype"), "llava": ("max_shard_size",),
                  "remote-code": ("max_shard_size", "dtype"), "onnx": ()}
STOCK_OPTIONS = ("max_shard_size",)  # a family's stock format (encslim.export.stock)


def export_model(model_dir, out, config=None, overwrite=False, ranking=None, bench=None, **overrides):
    """Export ``model_dir`` in each format of an :class:`~encslim.export.config.ExportConfig`.

    Args:
        model_dir: the model folder (or an opened ``ModelFolder``).
        out: the output folder; with several formats, ``out/<format>`` for each.
        config: an ``ExportConfig``, a dict of its fields, a format name (``"onnx"``) or ``None`` (hf).
        overwrite: replace existing output folders.
        ranking: ranking folder (or ranking.json) for the model card's CUR/IG table.
        bench: folder with bench.json for the model card.
        **overrides: ``ExportConfig`` fields (``fmt="onnx"`` is ``formats=["onnx"]``).

    Returns:
        The manifest written (one format), or ``{format: manifest}`` (several).

    Raises:
        ConfigError: an unknown format or setting, or a format the model cannot reach.
    """
    from pathlib import Path

    from .config import ExportConfig

    if isinstance(config, str):
        config = {"formats": [config]}
    if "fmt" in overrides:
        overrides["formats"] = [overrides.pop("fmt")]
    config = ExportConfig.build(config, **overrides)
    manifests = {}
    for fmt in config.formats:
        target = out if len(config.formats) == 1 else Path(out) / fmt
        manifests[fmt] = exporter(fmt)(model_dir, target, **format_options(config, fmt, overwrite, ranking, bench))
    return manifests[config.formats[0]] if len(config.formats) == 1 else manifests


def format_options(config, fmt, overwrite=False, ranking=None, bench=None):
    """The keyword arguments of format ``fmt``'s writer from an ``ExportConfig``."""
    options = {"overwrite": overwrite, "ranking": ranking, "bench": bench}
    options.update({k: getattr(config, k) for k in FORMAT_OPTIONS.get(fmt, STOCK_OPTIONS)})
    if config.atol is not None:
        options["atol"] = config.atol
    return options


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'encslim.export' has no attribute {name!r}")
    value = _load(target)
    globals()[name] = value
    return value


__all__ = ["FORMATS", "exporter", "export_model", "format_options", *_LAZY]

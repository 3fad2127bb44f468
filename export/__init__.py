"""Export: HF folders, stock-class conversion (LLaVA, DeepSeek-VL), remote code, ONNX.

One function per format, all with the same shape ``export_<format>(model_dir, out, *,
overwrite=False, ...) -> manifest``; :func:`export_model` dispatches on the format name. Every
export verifies the written folder against the source before publishing it (atomically) with a
model card and a manifest. Imports are lazy: ``import encslim.export`` loads no torch.
"""

from importlib import import_module

# format name -> "module:function"
FORMATS = {
    "hf": "encslim.export.hf_folder:export_hf",
    "llava": "encslim.export.llava:export_llava",
    "deepseek_vl": "encslim.export.deepseek_vl:export_deepseek_vl",
    "remote-code": "encslim.export.remote_code:export_remote_code",
    "onnx": "encslim.export.to_onnx:export_onnx",
}

_LAZY = {target.split(":")[1]: target for target in FORMATS.values()}


def exporter(fmt):
    """The export function of format ``fmt``; ``ConfigError`` listing the formats if unknown."""
    from ..errors import ConfigError

    target = FORMATS.get(fmt)
    if target is None:
        raise ConfigError(f"export format '{fmt}' unknown; use one of {', '.join(FORMATS)}")
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


def export_model(model_dir, out, fmt="hf", **options):
    """Export ``model_dir`` to ``out`` in format ``fmt`` (see :data:`FORMATS`); returns the manifest."""
    return exporter(fmt)(model_dir, out, **options)


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'encslim.export' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


__all__ = ["FORMATS", "exporter", "export_model", *_LAZY]

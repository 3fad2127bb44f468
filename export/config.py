"""How to export: THE typed config of the stage, declared once.

:class:`ExportConfig` is what ``encslim export`` parses (its options are generated from the fields
by :func:`encslim.options.click_options`), what :func:`encslim.export.export_model` takes and what a
recipe's ``export:`` block holds. The output folder, ``overwrite`` and the model card's inputs
(``ranking``, ``bench``) are arguments of the call, not settings.
"""

import difflib
from typing import Literal, Optional

from pydantic import Field, field_validator

from ..models.registry import GENERIC_EXPORTS, export_formats
from ..options import StageConfig

STOCK_NAMES = tuple(f for f in export_formats() if f not in GENERIC_EXPORTS)
DEFAULT_SHARD = "5GB"


class ExportConfig(StageConfig):
    """Which formats to write and how (each written folder is verified against the source)."""

    formats: list[str] = Field(default_factory=lambda: ["hf"], description=(
        f"Format(s): hf (transformers folder), {' / '.join(STOCK_NAMES)} (stock transformers classes), "
        "remote-code (loads without encslim), onnx (onnxruntime graphs); with several, OUT/<format> each."),
        json_schema_extra={"cli": "format", "metavar": "FORMAT[,FORMAT]"})
    max_shard_size: str = Field(DEFAULT_SHARD, description=(
        "Largest safetensors shard (hf, remote-code, llava and the stock formats), e.g. 5GB or 500MB."))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "Weight dtype (hf, remote-code); ONNX and the stock formats' checks use float32."))
    atol: Optional[float] = Field(None, gt=0, description=(
        "Largest allowed difference against the source [default per format: 1e-5 hf/remote-code, "
        f"1e-4 {'/'.join((*STOCK_NAMES, 'onnx'))}]."))

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value):
        from ..models.shards import parse_size

        parse_size(value)  # a ConfigError names the accepted spellings
        return value

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value):
        known = export_formats()
        unknown = [f for f in value if f not in known]
        if unknown:
            hints = [f"'{f}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(f, known, n=1))
                                 else "") for f in unknown]
            raise ValueError(f"unknown export format(s) {', '.join(hints)}; use {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"export formats repeat: {value}")
        return value

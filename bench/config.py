"""How to benchmark and evaluate: the typed configs of ``encslim bench`` and ``encslim eval``, declared once.

:class:`BenchConfig` is what ``encslim bench`` parses (its options are generated from the fields by
:func:`encslim.options.click_options`), what :func:`encslim.bench.benchmark.run_bench` takes and what
a recipe's ``bench:`` block holds; :class:`EvalConfig` is the same for ``encslim eval``. Processor
settings (``max_tiles``) reach the model through its adapter's ``configure_processor``.
"""

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..options import StageConfig

DTYPES = Literal["float32", "bfloat16", "float16"]
MASKS_HELP = "SLOT[,SLOT]"


def processor_settings(config):
    """The processor settings a config sets (``{"max_tiles": 6}``), for ``Adapter.configure_processor``."""
    return {"max_tiles": config.max_tiles} if config.max_tiles is not None else {}

# a processor setting (Adapter.configure_processor) of the families that split an image into tiles
MAX_TILES_HELP = ("At most this many tiles per image, for families whose processor splits images into tiles "
                  "[default: the model's]; refused by families without tiles.")


class BenchConfig(StageConfig):
    """How to benchmark the full model against its variants: latency, memory, FLOPs, accuracy."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4], description=(
        "Rows per iteration, each measured separately (comma-separated or repeated)."))
    max_new_tokens: int = Field(16, ge=1, description="Tokens generated per row (fixed length: min = max).")
    warmup: int = Field(3, ge=0, description="Warm-up rounds, discarded.")
    min_iters: int = Field(10, ge=1, description="Minimum measured rounds.")
    min_seconds: float = Field(2.0, ge=0, description="Minimum measured time per model and batch size.")
    max_iters: int = Field(10000, ge=1, description="Never more measured rounds than this.")
    masks: list[list[str]] = Field(default_factory=list, json_schema_extra={"cli": "mask", "metavar": MASKS_HELP},
                                   description="Also benchmark the full model with these slots masked at run "
                                               "time (repeat for more mask sets).")
    mask_skip: bool = Field(False, description="For each mask, also benchmark a copy that skips the masked "
                                               "encoders.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    dtype: DTYPES = Field("float32", description="Weight and activation dtype.")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads [default: the free cores, or "
                                                           "ENCSLIM_THREADS; recorded in bench.json].")
    memory: bool = Field(True, description="Measure peak memory per model in a subprocess.")
    accuracy: bool = Field(True, description="Measure accuracy per category on the data, when data is given.")
    eval_batch_size: int = Field(8, ge=1, description="Batch size of the accuracy evaluation.")
    eval_max_new_tokens: int = Field(8, ge=1, description="Generation budget per answer in the accuracy "
                                                          "evaluation.")
    limit: Optional[int] = Field(None, ge=1, description="Evaluate at most this many samples.")
    max_tiles: Optional[int] = Field(None, ge=1, description=MAX_TILES_HELP)
    engine: Literal["eager", "vllm"] = Field("eager", description=(
        "eager: measure in transformers (per stage). vllm: also measure each model folder in vLLM's offline "
        "engine (TTFT, decode tokens/s, requests/s per --concurrency, accuracy), reported beside the eager "
        "figures; needs vLLM (pip install 'encslim[vllm]')."))
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16], description=(
        "With --engine vllm: requests submitted together per measured round, each measured separately."))

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, value):
        if not value or any(b < 1 for b in value):
            raise ValueError(f"batch sizes must be positive integers, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"batch sizes repeat: {value}")
        return value

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, value):
        if not value or any(c < 1 for c in value) or len(set(value)) != len(value):
            raise ValueError(f"concurrencies must be distinct positive integers, got {value}")
        return value

    @field_validator("masks")
    @classmethod
    def _masks(cls, value):
        empty = [m for m in value if not m]
        if empty:
            raise ValueError("a mask names no slot; pass slot names such as --mask sam")
        return value

    @model_validator(mode="after")
    def _iters(self):
        if self.min_iters > self.max_iters:
            raise ValueError(f"min_iters {self.min_iters} exceeds max_iters {self.max_iters}")
        return self


class EvalConfig(StageConfig):
    """How ``encslim eval`` evaluates a model on benchmark files under encoder masks."""

    masks: list[list[str]] = Field(default_factory=list, json_schema_extra={"cli": "mask", "metavar": MASKS_HELP},
                                   description="Slots to mask together (e.g. sam or sam,clip); repeat for more "
                                               "mask sets. The full model is always evaluated.")
    mask_mode: Literal["removal", "zero", "mean"] = Field("removal", description=(
        "removal: the mask that equals removing the slot; zero: zero its features (the study's); mean: replace "
        "them by their mean over the data."))
    skip_bad: bool = Field(False, description="Skip bad rows (counted in the report) instead of stopping.")
    max_new_tokens: int = Field(16, ge=1, description="Generation budget per answer.")
    batch_size: int = Field(8, ge=1, description="Samples per batch.")
    mcq: Literal["logits", "generate"] = Field("logits", description=(
        "Multiple choice by the option letters' first-token logits, or by generation and letter extraction."))
    device: str = Field("auto", description="cpu, cuda, cuda:1, ... (auto: cuda:LOCAL_RANK if present).")
    dtype: DTYPES = Field("float32", description="Weight and activation dtype.")
    max_tiles: Optional[int] = Field(None, ge=1, description=MAX_TILES_HELP)

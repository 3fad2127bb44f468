"""What a fine-tuning run trains and how: THE typed config of the stage, declared once.

:class:`FinetuneConfig` is what ``encslim finetune train`` parses (its options are generated from
the fields by :func:`encslim.options.click_options`), what :func:`encslim.finetune.train.finetune`
takes, and what a recipe's ``finetune:`` block holds. Unknown keys are refused with a did-you-mean
hint; every problem is reported in one line (:class:`~encslim.errors.ConfigError`).
"""

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..options import StageConfig

TRAIN_ENCODERS = ("none", "lora", "full")
PROMPT_FORMATS = ("eval", "raw")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")
LORA_LR, FULL_LR = 2e-4, 2e-5


class FinetuneConfig(StageConfig):
    """One fine-tuning run (LoRA by default, or full fine-tuning; optionally distilled, under DeepSpeed)."""

    lora_r: int = Field(8, ge=1, description="LoRA rank of the LLM's (and with --train-encoders lora the "
                                             "encoders') adapters.")
    lora_alpha: Optional[float] = Field(None, gt=0, description="LoRA scaling numerator [default: 2 x lora_r].")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    lora_targets: tuple[str, ...] = Field(DEFAULT_LORA_TARGETS, description=(
        "LLM linear layers that get LoRA, by last name, matched inside the LLM only (the encoders' own q_proj "
        "are not hit); all-linear: every linear layer of the LLM except the output head."))
    full: bool = Field(False, description="Full fine-tuning of the LLM instead of LoRA.")
    train_encoders: Literal["none", "lora", "full"] = Field(
        "none", description="Encoders: frozen, LoRA on every linear layer of every encoder, or fully trained.")
    train_fusion: bool = Field(True, description="Train the fusion/projector fully (with LoRA it is saved in the "
                                                 "adapter, peft modules_to_save).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps [default: --epochs epochs].")
    epochs: float = Field(1.0, gt=0, description="Epochs when --max-steps is not given.")
    lr: Optional[float] = Field(None, gt=0, description="Peak learning rate [default: 2e-4 LoRA, 2e-5 --full].")
    batch_size: int = Field(8, ge=1, description="Samples per device per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps (gradient accumulation) per optimizer step.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps with a linear warm-up.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after the warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Probability of masking each encoder during training (removal-consistent mask): per sample for fusion "
        "classes A1/A2, one mask set per batch for B/C."))
    cache_features: bool = Field(True, description=(
        "Compute the frozen encoders' features once and train from them (only where valid: encoders frozen); "
        "--no-cache-features recomputes them every step."))
    prompt_format: Literal["eval", "raw"] = Field("eval", description=(
        "eval: the evaluation harness's prompt (options, hint, instruction); raw: the question text as it is."))
    deepspeed: Optional[str] = Field(None, description=(
        "DeepSpeed JSON file (e.g. recipes/deepspeed/zero3.json), or zero2 / zero3 for the shipped ones."))
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPUs).")
    merge: bool = Field(False, description="Fold LoRA into the weights: OUT becomes a plain model folder "
                                           "(the adapter is kept in OUT/adapter).")
    seed: int = Field(0, description="Seeds LoRA initialisation, data order and encoder dropout.")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps (for --resume).")
    resume: bool = Field(False, description="Continue an interrupted run of the same OUT from its last checkpoint.")
    progress: Optional[bool] = Field(None, description="Show a progress bar [default: only on a terminal].")
    feature_batch_size: int = Field(32, ge=1, description="Batch size of the one-off feature computation.")
    distill_from: Optional[str] = Field(None, json_schema_extra={"metavar": "FULL_MODEL"}, description=(
        "Distil from this full model: KL to its answer distribution (computed once) beside the label loss "
        "(in a recipe: 'full' = the recipe's model)."))
    distill_temperature: float = Field(2.0, gt=0, description="Softmax temperature T of teacher and student.")
    distill_weight: float = Field(0.5, ge=0, le=1, description="a in loss = (1-a)*CE + a*T^2*KL (1: the teacher "
                                                               "only).")
    distill_hidden_weight: float = Field(0.0, ge=0, description=(
        "Weight of an MSE between the fused image tokens of student and teacher (0: off; where shapes match)."))
    distill_top_k: Optional[int] = Field(None, ge=0, description=(
        "Teacher log-probs kept per answer token [default: whole vocabulary up to 4096, else top 64 + a tail "
        "bin]; 0: the whole vocabulary."))
    distill_memory_gb: float = Field(4.0, gt=0, description="The most host memory the cached teacher targets "
                                                            "may take (GB).")

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _split_targets(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return tuple(t.strip() for t in value if str(t).strip()) if value is not None else value

    @field_validator("deepspeed", "distill_from", mode="before")
    @classmethod
    def _path_text(cls, value):
        return str(value) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _cross_field(self):
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def uses_lora(self):
        """Whether an adapter is trained (LoRA on the LLM, or on the encoders)."""
        return not self.full or self.train_encoders == "lora"

    @property
    def learning_rate(self):
        """The peak learning rate: ``lr``, else 2e-4 with LoRA and 2e-5 with ``full``."""
        return self.lr if self.lr is not None else (FULL_LR if self.full else LORA_LR)

    @property
    def alpha(self):
        """The LoRA alpha: ``lora_alpha``, else ``2 * lora_r``."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    @property
    def features_cacheable(self):
        """Caching is valid only for frozen encoders (no image augmentation exists here)."""
        return self.cache_features and self.train_encoders == "none"

    def problems(self):
        """Every cross-field problem, one phrase each naming the fix (single fields check themselves)."""
        out = []
        if not self.full and not self.lora_targets:
            out.append("--lora-targets is empty; name the LLM's linear layers, e.g. q_proj,v_proj")
        if self.full and self.train_encoders == "lora":
            out.append("--full with --train-encoders lora mixes full and adapter training; use --train-encoders "
                       "full or none with --full")
        if self.merge and not self.uses_lora:
            out.append("--merge folds a LoRA adapter, but --full trains no adapter and already writes plain "
                       "weights; drop --merge")
        if not self.distill_from and (self.distill_hidden_weight or self.distill_top_k is not None):
            out.append("--distill-hidden-weight/--distill-top-k need --distill-from FULL_MODEL")
        return out

    def to_dict(self):
        """The fields as plain JSON values, with the resolved ``learning_rate`` and ``lora_alpha``."""
        data = self.model_dump()
        data["lora_targets"] = list(self.lora_targets)
        data["learning_rate"] = self.learning_rate
        data["lora_alpha"] = self.alpha
        return data

    @classmethod
    def from_dict(cls, data):
        """Build from a dict (e.g. :meth:`to_dict`'s); ``learning_rate`` (derived) is ignored.

        Raises:
            ConfigError: an unknown key (with a did-you-mean hint) or an invalid value.
        """
        data = dict(data)
        data.pop("learning_rate", None)
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"unknown finetune option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(cls.model_fields))}")
        return cls(**data)

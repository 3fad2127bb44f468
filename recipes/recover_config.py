"""The recovery's options, declared once: ``rank --recover-*``, the recipe's ``rank.recover`` and the API.

:class:`RecoverConfig` is what :func:`encslim.recipes.recover.rank_and_recover` takes; the
``--recover*`` options of ``encslim rank`` are generated from its fields (:func:`recover_options`)
and the recipe's ``rank.recover`` block is this model. It lives in the pipeline package because
recovery composes prune, finetune and evaluation; it imports neither (the schema stays light).
"""

from pathlib import Path
from typing import Any, Literal

import click
from pydantic import Field, field_validator

from ..options import StageConfig, field_option

PLAIN, DISTILLED = "lora", "distill"
PREFIX = "recover_"  # the CLI options' prefix: --recover-lr for the field lr
NOT_ON_CLI = ("steps", "seed")  # steps is --recover STEPS itself; the seed is rank's --seed
RUNNER_SET = ("data", "seed")  # in a recipe: data.train and rank.seed


class RecoverConfig(StageConfig):
    """How ``rank --recover`` recovers each frontier candidate (see :mod:`encslim.recipes.recover`)."""

    steps: int = Field(..., ge=1, description=(
        "After masking, recover the frontier's candidate kept sets with STEPS LoRA steps each and report their "
        "accuracy after recovery (prune --on recovered decides on it)."))
    data: list[str] = Field(default_factory=list, description=(
        "Training file(s) for the recovery (required with --recover; not the ranking data). In a recipe: data.train."))
    top: int = Field(3, ge=1, description="How many frontier candidates to recover.")
    distill: Literal["off", "on", "both"] = Field("off", description=(
        "Recover with plain LoRA, distilled from the full model, or both (reported side by side)."))
    lr: float = Field(5e-4, gt=0, description=(
        "Learning rate of the recovery (lower than a plain finetune's: the candidates start trained)."))
    batch_size: int = Field(16, ge=1, description="Samples per recovery step.")
    lora_r: int = Field(8, ge=1, description="LoRA rank of the recovery.")
    seed: int = Field(0, description="Seed of the LoRA runs (rank's --seed; in a recipe rank.seed).")
    distill_weight: float = Field(0.5, ge=0, le=1, description="a in (1-a)*CE + a*T^2*KL when distilling.")
    distill_temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")

    @field_validator("data", mode="before")
    @classmethod
    def _paths_text(cls, value: Any) -> list[str]:
        return [str(p) for p in ([value] if isinstance(value, (str, Path)) else value or [])]

    def problems(self) -> list[str]:
        """What keeps the recovery from running that the fields alone do not say (no data)."""
        if not self.data:
            return ["--recover needs --recover-data TRAIN_FILE (training samples for the recovery; "
                    "not the evaluation data)"]
        return []

    @property
    def variants(self) -> list[str]:
        """The recovery runs of each candidate, in order: ``lora``, ``distill`` or both."""
        return {"off": [PLAIN], "on": [DISTILLED], "both": [PLAIN, DISTILLED]}[self.distill]

    @property
    def primary(self) -> str:
        """The variant ``recovered`` (and so ``prune --on recovered``) reports."""
        return self.variants[-1]


def recover_options() -> list[click.Parameter]:
    """The ``--recover*`` Click options of ``encslim rank``, one per :class:`RecoverConfig` field:
    ``--recover STEPS`` (off when not given) and ``--recover-<field>`` (parameter ``recover_<field>``)."""
    holder = click.Command("rank")  # the options attach to it in order, as they do to a command
    steps = RecoverConfig.model_fields["steps"]
    click.option("--recover", "recover", type=int, default=None, metavar="STEPS", help=steps.description)(holder)
    for name, field in RecoverConfig.model_fields.items():
        if name not in NOT_ON_CLI:
            field_option(PREFIX + name, field)(holder)
    return holder.params


def recover_config(options: dict[str, Any], seed: int) -> RecoverConfig | None:
    """The :class:`RecoverConfig` of the command's ``recover``/``recover_*`` options, or ``None`` without
    ``--recover``.

    Raises:
        ConfigError: a bad value (one line).
    """
    if options.get("recover") is None:
        return None
    values: dict[str, Any] = {}
    for name in RecoverConfig.model_fields:
        if PREFIX + name in options:
            value = options[PREFIX + name]
            values[name] = list(value) if isinstance(value, tuple) else value  # a multiple option gives a tuple
    return RecoverConfig(steps=options["recover"], seed=seed, **values)


__all__ = ["DISTILLED", "PLAIN", "RecoverConfig", "recover_config", "recover_options"]

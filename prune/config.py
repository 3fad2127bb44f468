"""The prune stage's options, each declared once: ``rank``, the selection policy and the surgery.

:class:`RankConfig` steers ``encslim rank`` (:func:`encslim.prune.rank.rank`), :class:`SelectConfig`
the choice of slots (:func:`encslim.prune.select.select`) and :class:`PruneConfig` their removal
(:func:`encslim.prune.surgery.prune`). The CLI options of ``rank`` and ``prune`` are generated
from these fields (:mod:`encslim.options`) and the recipe's ``rank``/``select``/``prune`` blocks
are these models (:mod:`encslim.recipes.schema`), so a name, default, range or help text lives
here only. The inputs and the output (MODEL, ``--data``, ``--ranking``, ``--out``) stay
arguments of the functions and commands.
"""

from collections.abc import Iterable
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..models.slots import split_names
from ..options import StageConfig

SUBSETS = ("single", "pairs", "all", "greedy")
MASKS = ("removal", "zero")
COSTS = ("vision_flops", "params", "latency_ms", "total_flops")
VERIFY_METHODS = ("auto", "full", "module-local")
POLICIES = ("drop", "keep", "min_retained", "drop_negative", "budget")
EACH = "each"  # SelectConfig.category: every category at once (min_retained only)


class RankConfig(StageConfig):
    """How ``encslim rank`` measures each encoder slot (the masked ranking)."""

    subsets: Literal["single", "pairs", "all", "greedy"] = Field("single", description=(
        "Mask sets: each slot alone, also pairs, every kept set (<= 6 slots), or backward elimination. "
        "The demo recipe (recipes/demo.yaml) and the multi-encoder recipes use all."))
    mask: Literal["removal", "zero"] = Field("removal", description=(
        "removal: what prune ships; zero: the study's zeroed encoder output."))
    categories: Optional[list[str]] = Field(None, json_schema_extra={"cli": "category"}, description=(
        "Rank on this category only; repeatable (default: every category)."))
    bootstrap: int = Field(1000, ge=0, description="Paired bootstrap resamples for the CUR intervals (0: none).")
    seed: int = Field(0, description="Seed of bootstrap and Shapley permutations (and of the recovery).")
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of the CUR intervals.")
    shapley_permutations: Optional[int] = Field(None, ge=0, description=(
        "Sampled Shapley when not every kept set is run [default: 16 with greedy, else none]."))
    batch_size: int = Field(8, ge=1, description=(
        "Samples per generate() call while evaluating each mask set (the demo recipe uses 32); larger is "
        "faster while memory allows."))
    max_new_tokens: int = Field(8, ge=1, description=(
        "Tokens generated per answer before scoring (the demo recipe uses 4: its answers are one word). "
        "Too few truncates answers."))
    cache: Optional[str] = Field(None, description="A previous ranking folder whose scores to reuse.")
    feature_memory_gb: Optional[float] = Field(4.0, ge=0, description=(
        "CPU memory for the run's encoder features (each encoder runs once per sample for the whole run); past "
        "it features are encoded again. 0: no run-wide feature store (Python: None, no limit)."))
    device: str = Field("cpu", description="Where the model runs: cpu, cuda or cuda:N.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=(
        "Weight and activation dtype; bfloat16/float16 are for GPUs (on CPU they are slow and may change answers)."))
    threads: Optional[int] = Field(None, ge=0, description=(
        "torch CPU threads (default: the cores no other process keeps busy, or ENCSLIM_THREADS; 0: leave torch's "
        "setting); recorded in ranking.json."))
    token_budgets: list[float] = Field(default_factory=lambda: [1.0], description=(
        "Visual-token budgets to rank at besides every token, e.g. 1,0.5,0.25: each kept set is also evaluated "
        "with its image tokens reduced to that fraction (same encoder passes); 1 is always included."))
    token_method: Literal["pool", "attention"] = Field("pool", description=(
        "How a budget reduces the image tokens: pool (average pooling of the token grid) or attention (the tokens "
        "the LLM's first layer attends to most); see README, Token budgets."))
    overwrite: bool = Field(False, description=(
        "Replace OUT (its cached scores and recovered candidates are reused)."))

    @field_validator("cache", mode="before")
    @classmethod
    def _path_text(cls, value: object) -> str | None:
        return None if value is None else str(value)

    @field_validator("token_budgets", mode="before")
    @classmethod
    def _budgets(cls, value: object) -> list[float]:
        from ..errors import ConfigError
        from ..models.tokens import parse_budgets

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        try:
            budgets = parse_budgets(str(value) if value is not None else "")
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return sorted({1.0, *budgets}, reverse=True)

    @property
    def reduced_budgets(self) -> list[float]:
        """The budgets below 1 (largest first): the budget axis beyond the run at every token."""
        return [b for b in self.token_budgets if b < 1]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class SelectConfig(StageConfig):
    """Which slots to drop: exactly one policy (``drop``, ``keep``, ``min_retained``, ``drop_negative``
    or ``budget``), decided on ``category``; every policy but ``drop`` reads a ranking."""

    policy: Optional[Literal["drop", "keep", "min_retained", "drop_negative", "budget"]] = Field(None, description=(
        "Which policy decides [default: the one whose option is given]; when named, the other policies' values "
        "are ignored (so a recipe override such as select.policy=drop select.drop=[x] switches policy)."))
    drop: Optional[list[str]] = Field(None, description="Slot(s) to remove (repeat or comma-separate).")
    keep: Optional[int] = Field(None, ge=1, description="Keep the best K slots.")
    min_retained: Optional[float] = Field(None, gt=0, le=1, description=(
        "Smallest kept set with accuracy >= X of the full model's."))
    drop_negative: bool = Field(False, description="Drop slots whose removal improves accuracy.")
    budget: Optional[float] = Field(None, gt=0, description="Most accurate kept set whose --cost is at most B.")
    cost: Optional[Literal["vision_flops", "params", "latency_ms", "total_flops"]] = Field(None, description=(
        "The cost --budget limits [default: total_flops (vision + fusion + LLM prefill) when the ranking has "
        "token budgets, else vision_flops]."))
    category: str = Field("overall", description=(
        "Ranking category to decide on ('each': every category, with --min-retained)."))
    accuracy: Literal["masked", "recovered"] = Field("masked", json_schema_extra={"cli": "on"},
                                                     description=(
        "With --min-retained: decide on masked accuracy, or on the accuracy after recovery (a ranking made "
        "with `rank --recover`). In a recipe: select.accuracy (YAML reads a key 'on' as true)."))

    @field_validator("drop", mode="before")
    @classmethod
    def _names(cls, value: str | Iterable[object] | None) -> list[str] | None:
        # the CLI's repeated, separated form (["a,b", "c"], "a+b"): split_names' spellings; select checks them
        return None if value is None else list(split_names(value))

    @model_validator(mode="before")
    @classmethod
    def _named_policy(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("policy") in POLICIES:
            others = [name for name in POLICIES if name != data["policy"]]
            data = {k: v for k, v in data.items() if k not in others}
            if data["policy"] == "drop_negative":
                data.setdefault("drop_negative", True)
        return data

    @model_validator(mode="after")
    def _one_policy(self) -> "SelectConfig":
        chosen = self.policies()
        if self.policy is not None and chosen != [self.policy]:
            raise ValueError(f"policy '{self.policy}' needs {self.policy}: "
                             + {"drop": "[slot, ...]", "keep": "K", "min_retained": "X (e.g. 0.95)",
                                "drop_negative": "true", "budget": "B"}[self.policy])
        if len(chosen) != 1:
            raise ValueError("choose exactly one of --drop, --keep, --min-retained, --drop-negative, --budget "
                             f"(got {', '.join(_flag(c) for c in chosen) or 'none'})")
        if self.drop is not None and not self.drop:
            raise ValueError("--drop needs at least one slot name")
        if self.category == EACH and self.min_retained is None and self.drop is None:  # drop decides on nothing
            raise ValueError("--category each works with --min-retained only; name one category for the other "
                             "policies")
        if self.accuracy == "recovered" and self.min_retained is None:
            raise ValueError("--on recovered (a recipe's accuracy: recovered) works with --min-retained only")
        return self

    def policies(self) -> list[str]:
        """The policy fields set (exactly one in a valid config)."""
        values: dict[str, object] = {"drop": self.drop, "keep": self.keep, "min_retained": self.min_retained,
                  "drop_negative": self.drop_negative or None, "budget": self.budget}
        return [name for name in POLICIES if values[name] is not None]

    @property
    def chosen(self) -> str:
        """The one policy's name."""
        return self.policies()[0]


class PruneConfig(StageConfig):
    """How ``encslim prune`` removes the chosen slots and checks the result."""

    verify: bool = Field(True, description="Verify the pruned model against the masked one.")
    verify_method: Literal["auto", "full", "module-local"] = Field("auto", description=(
        "full: compare logits (builds both models); module-local: kept tensors byte-equal and each sliced or folded "
        "module on random inputs (no model built); auto: full when both fit in memory."))
    num_samples: int = Field(4, ge=1, json_schema_extra={"cli": "samples"}, description=(
        "Verification samples K (from --data, else synthetic inputs)."))
    streaming: Optional[bool] = Field(None, description=(
        "Executor: --streaming over the shards, or --in-memory [default: streaming when the model does not fit in memory]."))
    max_shard_size: str = Field("2GB", description="Largest output shard, e.g. 2GB or 500MB.")
    dry_run: bool = Field(False, description="Print the plan; write nothing.")
    overwrite: bool = Field(False, description="Replace an existing output folder.")
    token_budget: Optional[float] = Field(None, gt=0, le=1, description=(
        "Visual-token budget the pruned model carries in config.json (e.g. 0.25: a quarter of each token grid; "
        "1: every token) [default: the selection's, else the source's]; alone, without a drop policy, only "
        "the budget is applied."))
    token_method: Optional[Literal["pool", "attention"]] = Field(None, description=(
        "Token reducer of --token-budget: pool (spatial average pooling) or attention (top-k by the LLM's "
        "first-layer attention) [default: pool]."))

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        from ..errors import ConfigError
        from ..models.shards import parse_size

        try:
            parse_size(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _verify_consistent(self) -> "PruneConfig":
        if not self.verify and self.verify_method != "auto":
            raise ValueError(f"--no-verify contradicts --verify-method {self.verify_method}; pass one of them")
        if self.token_method is not None and self.token_budget is None:
            raise ValueError("--token-method needs --token-budget (e.g. --token-budget 0.25)")
        return self

    def chosen_budget(self) -> Any:
        """The budget given here: a :class:`~encslim.models.tokens.TokenBudget` (budget 1: every token), or
        ``None`` when ``token_budget`` is not set."""
        from ..models.tokens import TokenBudget

        if self.token_budget is None:
            return None
        return TokenBudget(self.token_method or "pool", self.token_budget)


__all__ = ["COSTS", "EACH", "MASKS", "POLICIES", "PruneConfig", "RankConfig", "SUBSETS", "SelectConfig", "VERIFY_METHODS"]

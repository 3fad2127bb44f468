"""The recipe schema: one YAML file drives rank -> prune -> finetune -> export -> bench.

Every section is a pydantic model with ``extra="forbid"``: a misspelt key fails at once with a
"did you mean" hint, and every problem of a recipe is reported together, in one error.
"""

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Dict, Literal, Optional, TypeVar, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from ..bench.config import BenchConfig
from ..errors import ConfigError
from ..prune.config import PruneConfig, RankConfig, SelectConfig
from .recover_config import RecoverConfig
from ..export.config import ExportConfig
from ..finetune.config import FinetuneConfig

DEMO = "demo"  # the shipped demo model / generated demo data
FULL = "full"  # finetune.distill_from: the recipe's (full) model

RecipeSource = Union[str, Path]  # a recipe file


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


def _defaults(section: type[M]) -> Callable[[], M]:
    """The default factory of a recipe section: the section with every field at its default.

    (``default_factory=Section`` would do the same, but a type checker reads a positional default,
    ``Field(0, ...)``, as no default and so takes the section's constructor for one that needs arguments.)
    """
    return lambda: section.model_validate({})


class DataConfig(Section):
    """Benchmark files (VLMEvalKit TSV, JSONL, LLaVA JSON), relative to the recipe file, or ``demo``."""

    eval: list[str] = Field(default_factory=list, description="evaluation files, or ['demo']")
    train: list[str] = Field(default_factory=list, description="training files for finetune, or ['demo']")
    skip_bad: bool = Field(False, description="skip malformed rows (counted) instead of failing")
    demo_seed: int = Field(0, description="seed of the generated demo data")
    demo_n_eval: Optional[int] = Field(None, description="demo eval samples (default: the generator's)")
    demo_n_train: Optional[int] = Field(None, description="demo train samples (default: the generator's)")


class RankSection(RankConfig):
    """``rank:``: the ranking's own :class:`~encslim.prune.config.RankConfig` (same fields, same defaults)
    and, optionally, its recovery (:class:`~encslim.recipes.recover_config.RecoverConfig`)."""

    recover: Optional[RecoverConfig] = Field(None, description=(
        "recovery-aware ranking (encslim rank --recover): recover the frontier's candidates on data.train"))


# fields of a stage config that the runner sets (from the recipe's top level or its run folder)
RUNNER_SET = {
    "rank": {"device": "the recipe's top-level device", "dtype": "the recipe's top-level dtype",
             "cache": "the run folder (a rerun reuses its scores)", "overwrite": "the run folder"},
    "rank.recover": {"data": "data.train", "seed": "rank.seed"},
    "prune": {"dry_run": "encslim run --stage (stop before prune)", "overwrite": "the run folder"},
}


class FinetuneSection(FinetuneConfig):
    """``finetune:``: the stage's own :class:`~encslim.finetune.config.FinetuneConfig` (same fields, same
    defaults) plus the stage switch ``enabled``; ``distill_from: full`` distils from the recipe's model."""

    enabled: bool = Field(False, description="run the finetune stage (needs data.train)")


class ExportSection(ExportConfig):
    """``export:``: the stage's own :class:`~encslim.export.config.ExportConfig` (``formats: []`` skips it)."""


class BenchSection(BenchConfig):
    """``bench:``: the stage's own :class:`~encslim.bench.config.BenchConfig` plus the stage switch ``enabled``
    (the device is the recipe's ``device``)."""

    enabled: bool = Field(True, description="run the bench stage")


class Recipe(Section):
    """A whole encslim job."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="run folder name under out/")
    model: str = Field(..., description="model folder (relative to the recipe file) or 'demo'")
    encoders: Dict[str, str] = Field(default_factory=dict, description=(
        "local folder per encoder slot the checkpoint does not hold (families that keep their encoders outside "
        "it), as with --encoder SLOT=PATH"))
    out: str = Field("runs", description="parent folder of the run folder")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    data: DataConfig = Field(default_factory=_defaults(DataConfig))
    rank: RankSection = Field(default_factory=_defaults(RankSection))
    select: SelectConfig = Field(..., description="which slots the prune stage drops: exactly one policy")
    prune: PruneConfig = Field(default_factory=_defaults(PruneConfig))
    finetune: FinetuneSection = Field(default_factory=_defaults(FinetuneSection))
    export: ExportSection = Field(default_factory=_defaults(ExportSection))
    bench: BenchSection = Field(default_factory=_defaults(BenchSection))

    @model_validator(mode="after")
    def _runner_sets(self) -> "Recipe":
        sections: dict[str, BaseModel | None] = {"rank": self.rank, "rank.recover": self.rank.recover,
                                                 "prune": self.prune}
        for path, owned in RUNNER_SET.items():
            section = sections[path]
            given = sorted(set(owned) & (section.model_fields_set if section is not None else set()))
            if given:
                raise ValueError("; ".join(f"{path}.{name} is set by {owned[name]}, not in {path}" for name in given))
        return self

    @model_validator(mode="after")
    def _recovery_needs(self) -> "Recipe":
        if self.select.accuracy == "recovered" and self.rank.recover is None:
            raise ValueError("select.accuracy 'recovered' needs rank.recover (steps: N) to measure recovered accuracy")
        if self.rank.recover is not None and not self.data.train:
            raise ValueError("rank.recover needs data.train files (or ['demo']) to recover on")
        return self

    @field_validator("model")
    @classmethod
    def _model_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must name a model folder or 'demo'")
        return value


# ---------------------------------------------------------------------- loading
def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value; write e.g. rank.subsets=single")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_recipe(path: RecipeSource, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe; relative paths resolve against the recipe's folder.

    Raises:
        ConfigError: listing every problem at once, each with a did-you-mean hint where one fits.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; `encslim recipes list` shows the shipped ones")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (name, model, data, rank, ...)")
    apply_overrides(data, overrides)
    recipe = validate_recipe(data, source=str(path))
    return _resolve_paths(recipe, path.parent)


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """``data`` (a recipe's mapping, overrides applied) as a :class:`Recipe`; paths stay as written.

    Raises:
        ConfigError: listing every problem at once, each with a did-you-mean hint where one fits.
    """
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise ConfigError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems)) from None


def _describe(error: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        hint = _did_you_mean(error["loc"])
        return f"unknown key '{loc}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if error["type"] == "missing":
        return f"missing key '{loc}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{loc}': {message}" if loc else message


def _did_you_mean(loc: tuple[int | str, ...]) -> str | None:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = None if field is None else next((a for a in (field.annotation, *get_args(field.annotation))
                                     if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if annotation is None:
            return None
        model = annotation
    matches = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if not matches:
        return None
    return ".".join([*map(str, loc[:-1]), matches[0]])


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolve(p: str) -> str:
        return p if p == DEMO else str((base / p).resolve()) if not Path(p).is_absolute() else p

    recipe.model = resolve(recipe.model)
    recipe.encoders = {slot: resolve(p) for slot, p in recipe.encoders.items()}
    recipe.data.eval = [resolve(p) for p in recipe.data.eval]
    recipe.data.train = [resolve(p) for p in recipe.data.train]
    if recipe.finetune.deepspeed:
        recipe.finetune.deepspeed = resolve(recipe.finetune.deepspeed)
    if recipe.finetune.distill_from and recipe.finetune.distill_from != FULL:
        recipe.finetune.distill_from = resolve(recipe.finetune.distill_from)
    return recipe


def shipped_recipes() -> dict[str, Path]:
    """The YAML recipes shipped with encslim: ``{name: path}``."""
    folder = Path(__file__).parent
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}

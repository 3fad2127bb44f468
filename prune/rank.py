"""``encslim rank``: which encoder carries which task category, which are redundant, which hurt.

The orchestration: load the model and the samples, evaluate the mask sets the subset mode asks
for (through the evaluation harness; one :class:`~encslim.bench.features.FeatureStore` for the
whole run keeps every sample's encoder features, so each encoder runs once per sample whatever
the mode, greedy elimination and sampled Shapley included), reuse cached scores, then compute
CUR/IG with paired bootstrap intervals, Shapley values and interactions, and the accuracy/cost
frontier; write ``ranking.json`` (schema in the README), ``ranking.md``, ``cur_heatmap.png``,
``frontier.png`` and ``records.jsonl``: the per-sample records, the run's one score cache
(:mod:`encslim.prune.rank_cache`).
"""

import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any, Union

from ..bench.evaluate import EvalSettings, RecordKeys, evaluate
from ..bench.features import FeatureStore
from ..bench.records import RecordStore
from ..data.load import load_samples
from ..data.samples import Sample
from ..errors import ConfigError, DataError
from ..files import RANKING_NAME, atomic_output_dir, check_output_path
from ..models.adapter import Adapter
from ..models.loading import load_model
from ..models.tokens import TokenBudget
from ..runtime import configure_threads, thread_choice
from .config import RankConfig
from .importance import OVERALL
from .rank_budgets import budget_axis, check_budget_axis
from .rank_cache import RECORDS_FILE, RankKeys, ScoreTable, read_records, records_file
from .rank_compute import Search, check_ranking, compute_ranking, image_clusters
from .shapley import is_complete, permutation_coalitions, sample_permutations
from .subsets import greedy_elimination, mask_sets, slot_costs

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_GREEDY_PERMUTATIONS = 16

PathArg = Union[str, "PathLike[str]"]
Loaded = tuple[Any, Any, Adapter]  # (model, processor, adapter): torch and transformers objects, our adapter
Evaluator = Callable[..., Any]  # the signature of encslim.bench.evaluate.evaluate
DataArg = Union[PathArg, Iterable[Union[PathArg, Sample]]]
ModelArg = Union[PathArg, tuple[Any, ...], list[Any]]  # a model folder or a (model, processor, adapter) triple


@dataclass
class Ranking:
    """The result of :func:`rank`: ``data`` is the content of ``ranking.json``.

    Attributes:
        data: the ranking (see the README for the schema).
        out: the folder it was written to, or ``None``.
        samples: the samples it ranked on (not written; the recovery of
            :mod:`encslim.recipes.recover` evaluates its candidates on them).
    """

    data: dict[str, Any]
    out: Path | None = None
    samples: list[Sample] | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def slots(self) -> list[str]:
        return list(self.data["slots"])

    @property
    def categories(self) -> list[str]:
        return list(self.data["categories"])

    def cur(self, slot: str, category: str = OVERALL) -> float | None:
        """The CUR value of ``slot`` on ``category`` (``None`` when undefined)."""
        value: float | None = self.data["cur"][slot][category]["value"]
        return value

    def ci(self, slot: str, category: str = OVERALL) -> list[float] | None:
        """The CUR confidence interval ``[low, high]`` (``None`` without bootstrap)."""
        interval: list[float] | None = self.data["cur"][slot][category]["ci"]
        return interval

    def to_markdown(self) -> str:
        from .rank_report import ranking_markdown

        return ranking_markdown(self.data)


def rank(model_or_path: ModelArg, data: DataArg, config: RankConfig | Mapping[str, Any] | None = None,
         *, out: PathArg | None = None, evaluator: Evaluator | None = None, progress: bool | None = None,
         latency_ms: Mapping[frozenset[str], float] | None = None, **overrides: Any) -> Ranking:
    """Rank a multi-encoder model's slots on benchmark data.

    Args:
        model_or_path: a model folder, or a ``(model, processor, adapter)`` triple.
        data: benchmark file path(s) (VLMEvalKit TSV, JSONL, LLaVA JSON) or a list of ``Sample``.
        config: a :class:`~encslim.prune.config.RankConfig` (or a dict of its fields; default: its
            defaults): subsets, mask, categories, bootstrap, seed, alpha, batch size, generation
            length, Shapley permutations, score cache, feature memory, device, dtype, threads,
            overwrite (each field documents itself).
        out: folder to write; ``None`` writes nothing.
        evaluator: a function with the signature of :func:`encslim.bench.evaluate.evaluate`
            (default: that one).
        progress: the evaluator's progress bar over samples x mask sets: ``None`` (default) or
            ``True``: on a terminal only (stderr a TTY); ``False``: never.
        latency_ms: optional measured latency per kept set ``{frozenset(kept): ms}``.
        **overrides: fields of ``config`` to change (``subsets="all"``, ``bootstrap=0``, ...;
            ``mask_mode`` is the older name of ``mask``). The score cache defaults to ``out``
            itself when it exists (with ``overwrite``); ``feature_memory_gb`` 0 keeps no run-wide
            feature store, ``None`` sets no limit; ``threads`` is recorded in ``ranking.json``'s
            ``evaluation.threads``.

    Returns:
        :class:`Ranking` (recovery-aware ranking, ``rank --recover``, is
        :func:`encslim.recipes.recover.rank_and_recover`: it composes this with prune and finetune).

    Raises:
        ConfigError: bad option values (unknown names with a did-you-mean hint); DataError: no
        samples or unknown categories; ModelLoadError: the model does not load; OutputExistsError:
        ``out`` exists.
    """
    config = rank_config(config, **overrides)
    start = time.perf_counter()
    setup = _setup(model_or_path, data, config, out)
    runner = _runner(setup, config, evaluator or evaluate, progress)
    if out is None:
        _reuse(runner.table, setup.previous, setup.sources)
        ranking = _finish(_run(runner, config, latency_ms, setup.model_path), runner, start)
    else:
        with atomic_output_dir(out, overwrite=config.overwrite, inputs=setup.inputs) as tmp:
            # every previous record travels on into the one records file: the table's cache and the
            # evaluator's resume both read it, and the new folder is a complete cache for the next run
            RecordStore(tmp / RECORDS_FILE).append(list(setup.previous.values()))
            runner.records_path = runner.table.records_path = tmp / RECORDS_FILE
            _reuse(runner.table, setup.previous, setup.sources)
            ranking = _finish(_run(runner, config, latency_ms, setup.model_path), runner, start)
            write_ranking(ranking.data, tmp)
        ranking.out = Path(out)
    ranking.samples = setup.samples
    return ranking


@dataclass
class _Setup:
    """What a run starts from: the loaded model, the samples, the previous records and the run's inputs."""

    loaded: Loaded
    model_path: Path | None
    samples: list[Sample]
    previous: dict[str, Any]
    sources: list[Path]
    inputs: list[Path]
    store: FeatureStore | None


def _setup(model_or_path: ModelArg, data: DataArg, config: RankConfig, out: PathArg | None) -> _Setup:
    """Check the output and the cache, set the threads, load the model, the samples and the cached records."""
    if out is not None:  # refuse a bad output before spending time on loading and evaluating
        _check_out(out, config.overwrite, model_or_path, data)
    check_budget_axis(None, None, config)  # the method's own rule (pool: 1/k), before loading
    if config.cache is not None:
        records_file(config.cache)  # a scores.json of older versions is refused here, before loading
    store = _feature_store(config.feature_memory_gb)
    if config.threads != 0:
        configure_threads(config.threads)
    model, processor, adapter, model_path = _load(model_or_path, config.device, config.dtype)
    check_budget_axis(adapter, model.config, config)  # before anything is evaluated
    samples, data_paths = _samples(data, config.categories)
    sources = [Path(p) for p in (config.cache, out) if p is not None and Path(p).exists()]
    previous = read_records(sources)  # read before the output folder is replaced
    inputs = [p for p in [model_path, *data_paths] if p is not None]
    return _Setup((model, processor, adapter), model_path, samples, previous, sources, inputs, store)


def _runner(setup: _Setup, config: RankConfig, evaluator: Evaluator, progress: bool | None) -> "_Runner":
    """The run's evaluation runner over an empty score table (:func:`_reuse` fills it from the records)."""
    table = _score_table(setup.loaded, setup.samples, config.mask, config.max_new_tokens, evaluator)
    kwargs: dict[str, Any] = dict(batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                                  progress=progress)
    if setup.store is not None and _accepts(evaluator, "features"):
        kwargs["features"] = setup.store
    runner = _Runner(evaluator, setup.loaded, setup.samples, table, config.mask, kwargs, setup.store)
    runner.previous, runner.token_method = setup.previous, config.token_method
    return runner


def _check_out(out: PathArg, overwrite: bool, model_or_path: ModelArg, data: DataArg) -> None:
    named: list[PathArg] = [] if isinstance(model_or_path, (tuple, list)) else [model_or_path]
    named += [d for d in ([data] if isinstance(data, (str, PathLike)) else data) if isinstance(d, (str, PathLike))]
    check_output_path(out, overwrite, inputs=named)


def _score_table(loaded: Loaded, samples: list[Sample], mask_mode: str, max_new_tokens: int,
                 evaluator: Evaluator, budget: TokenBudget | None = None) -> ScoreTable:
    """The score table for this model and setting, at ``budget`` (``None``: the model's own token budget;
    empty: :func:`_reuse` fills it from the records)."""
    model, processor, adapter = loaded
    slots = adapter.slot_names(model.config)
    everything = frozenset(slots)

    def mode_of(masked: Iterable[str]) -> str:
        return _blind_mode(mask_mode) if frozenset(masked) == everything else mask_mode

    return ScoreTable(slots, samples, _record_keys(evaluator, loaded, samples, max_new_tokens, budget), mode_of)


def _reuse(table: ScoreTable, previous: Mapping[str, Any], sources: Sequence[Path]) -> None:
    if previous:
        logger.info("reused %d cached scores from %s", table.load(previous), ", ".join(map(str, sources)))


def _record_keys(evaluator: Evaluator, loaded: Loaded, samples: list[Sample],
                 max_new_tokens: int, budget: TokenBudget | None = None) -> RecordKeys | RankKeys:
    """The keys the table finds its scores under: the project evaluator's own record keys, so its
    records are the cache, or for another evaluator keys naming it (``rank`` writes its records)."""

    func: Evaluator = evaluator
    keywords: dict[str, Any] = {}
    if isinstance(evaluator, functools.partial) and not evaluator.args:
        func, keywords = evaluator.func, evaluator.keywords
    if func is evaluate:
        return RecordKeys(loaded, samples, _settings_for(keywords, max_new_tokens=max_new_tokens, token_budget=budget))
    settings = {"max_new_tokens": max_new_tokens, "evaluator": _name_of(evaluator)}
    if budget is not None:  # older records (no budget) keep their keys
        settings["token_budget"] = budget.to_dict()
    return RankKeys(loaded[0], samples, settings)


def _settings_for(keywords: "Mapping[str, Any]", **changes: "Any") -> EvalSettings:
    """The ``settings`` of a ``functools.partial(evaluate, settings=...)`` (else the defaults), with ``changes``
    (a ``token_budget`` of ``None`` changes nothing: the settings' own, by default the model's own budget)."""
    if changes.get("token_budget", 0) is None:
        del changes["token_budget"]
    return replace(keywords.get("settings") or EvalSettings(), **changes)


def _evaluator_options(evaluator: "Evaluator", kwargs: "Mapping[str, Any]", mask_mode: str,
                       budget: TokenBudget | None = None) -> "dict[str, Any]":
    """The keywords of one evaluator call: ``kwargs`` with rank's batch size and generation budget,
    ``mask_mode`` and the token ``budget`` as the evaluator's :class:`~encslim.bench.evaluate.EvalSettings`."""
    options = dict(kwargs)
    keywords = evaluator.keywords if isinstance(evaluator, functools.partial) else {}
    settings = _settings_for(keywords, mask_mode=mask_mode, batch_size=options.pop("batch_size"),
                             max_new_tokens=options.pop("max_new_tokens"), token_budget=budget)
    return {**options, "settings": settings}


def _feature_store(feature_memory_gb: float | None) -> FeatureStore | None:
    """The run's feature store (``None``: none, each evaluator call encodes its own batches)."""
    if feature_memory_gb is None:
        return FeatureStore(max_bytes=None)
    if feature_memory_gb < 0:
        raise ConfigError(f"--feature-memory-gb must be >= 0, got {feature_memory_gb}")
    return FeatureStore(max_bytes=int(feature_memory_gb * 2**30)) if feature_memory_gb > 0 else None


def _accepts(function: Callable[..., Any], name: str) -> bool:
    """True when ``function`` takes the keyword ``name`` (a custom evaluator may not)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind == p.VAR_KEYWORD for p in parameters)


OLD_NAMES = {"mask_mode": "mask"}  # keyword names rank() took before RankConfig


def rank_config(config: RankConfig | Mapping[str, Any] | None = None, **overrides: Any) -> RankConfig:
    """A :class:`~encslim.prune.config.RankConfig`: ``config`` (an instance, a dict or ``None``) with
    ``overrides`` (field names; ``mask_mode`` for ``mask``).

    Raises:
        ConfigError: an unknown name (did-you-mean hint) or a bad value, all in one line.
    """
    overrides = {OLD_NAMES.get(k, k): v for k, v in overrides.items()}
    return RankConfig.build(config, **overrides)


def _name_of(function: object) -> str:
    """A function's dotted name (a callable object: its class's), recorded in the cache settings."""
    target = function if hasattr(function, "__qualname__") else type(function)
    return f"{target.__module__}.{target.__qualname__}"


def _blind_mode(mask_mode: str) -> str:
    """How the kept set with no encoder at all is evaluated.

    Removal cannot remove every encoder (the model would have no image input left), so the
    blind model is the one whose every encoder output is zero: for class A1 exactly the removal
    mask, for the others a constant image input. It gives Shapley its ``v(empty)``.
    """
    return "zero"


def _load(model_or_path: ModelArg, device: str,
          dtype: str) -> tuple[Any, Any, Adapter, Path | None]:
    if isinstance(model_or_path, (tuple, list)):
        if len(model_or_path) != 3:
            raise ConfigError("pass a model folder or a (model, processor, adapter) triple")
        return (*model_or_path, None)
    model, processor, adapter = load_model(model_or_path, device=device, dtype=dtype)
    return model, processor, adapter, Path(model_or_path)


def _samples(data: DataArg, categories: Sequence[str] | None) -> tuple[list[Sample], list[Path]]:
    """``(samples, data paths)``; samples filtered by ``categories``."""
    items: list[Any] = [data] if isinstance(data, (str, PathLike)) else list(data)
    paths: list[Path] = []
    if items and all(isinstance(d, Sample) for d in items):
        samples: list[Sample] = items
    else:
        paths = [Path(d) for d in items]
        samples = load_samples(paths)
    if categories:
        available = sorted({s.category for s in samples})
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise DataError(f"categor{'y' if len(unknown) == 1 else 'ies'} {unknown} not in the data; "
                            f"available: {', '.join(available)}")
        samples = [s for s in samples if s.category in set(categories)]
    if not samples:
        raise DataError("no samples to rank on; pass benchmark files with --data")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DataError(f"sample ids repeat ({', '.join(map(str, dupes))}); give every sample a unique id")
    return samples, paths


class _Runner:
    """Evaluates the configurations (mask set, token budget) missing from the score tables (one per budget),
    counting encoder passes over the run."""

    def __init__(self, evaluator: Evaluator, loaded: Loaded, samples: list[Sample], table: ScoreTable, mask_mode: str,
                 kwargs: dict[str, Any], store: FeatureStore | None = None) -> None:
        self.evaluator, self.loaded, self.samples, self.table = evaluator, loaded, samples, table
        self.mask_mode, self.kwargs, self.store = mask_mode, kwargs, store
        self.records_path: Path | None = None
        self.passes_total = 0  # vision tower passes run, all samples and calls together
        self.passes_per_sample = 0.0  # from evaluators that report passes per sample only
        self.with_images = sum(1 for s in samples if getattr(s, "image", None) is not None)
        self.evaluated: list[frozenset[str]] = []  # mask sets evaluated at every token (budget 1)
        self.cached: list[frozenset[str]] = []
        self.tables: dict[float, ScoreTable] = {1.0: table}  # one score table per token budget
        self.configurations: dict[str, list[tuple[frozenset[str], float]]] = {"evaluated": [], "cached": []}
        self.previous: Mapping[str, Any] = {}  # the records a budget's table is filled from
        self.token_method = "pool"

    def table_at(self, budget: float) -> ScoreTable:
        """The score table at ``budget`` (made on first use, filled from the run's previous records)."""
        if budget not in self.tables:
            spec = TokenBudget(self.token_method, budget)
            table = _score_table(self.loaded, self.samples, self.mask_mode, self.kwargs["max_new_tokens"],
                                 self.evaluator, spec)
            table.records_path = self.records_path
            table.load(self.previous)
            self.tables[budget] = table
        return self.tables[budget]

    @property
    def encoder_passes(self) -> float:
        """Encoder passes per sample with an image over the whole run."""
        per_sample = self.passes_total / self.with_images if self.with_images else 0.0
        return per_sample + self.passes_per_sample

    def ensure(self, sets: Sequence[frozenset[str]], budget: float = 1.0) -> None:
        """Evaluate the mask sets of ``sets`` that the table at ``budget`` lacks (one evaluator call per mask mode)."""
        table = self.table_at(budget)
        missing = table.missing(sets)
        done = self.configurations
        done["cached"] += [(m, budget) for m in sets if m not in missing and (m, budget) not in done["cached"]
                           and (m, budget) not in done["evaluated"]]
        if budget == 1.0:
            self.cached += [m for m in sets if m not in missing and m not in self.cached and m not in self.evaluated]
        everything = frozenset(table.slots)
        blind = [m for m in missing if m == everything and self.mask_mode == "removal"]
        normal = [m for m in missing if m not in blind]
        for group, mode in ((normal, self.mask_mode), (blind, _blind_mode(self.mask_mode))):
            if not group:
                continue
            logger.info("evaluating %d mask set(s) (%s mask)", len(group), mode)
            spec = TokenBudget(self.token_method, budget) if budget < 1 else None
            result = self.evaluator(self.loaded, self.samples, mask_sets=group, records_path=self.records_path,
                                    **_evaluator_options(self.evaluator, self.kwargs, mode, spec))
            for masked in group:
                table.add(masked, result.scores[masked])
            total = getattr(result, "encoder_passes_total", None)
            if total is not None:
                self.passes_total += int(total)
            else:  # passes per sample it evaluated (records may cover the rest)
                evaluated = getattr(result, "evaluated", len(self.samples))
                self.passes_per_sample += float(result.encoder_passes or 0) * evaluated / len(self.samples)
            done["evaluated"] += [(m, budget) for m in group]
            if budget == 1.0:
                self.evaluated += group

    def overall(self, sets: Sequence[frozenset[str]]) -> dict[frozenset[str], float]:
        self.ensure(sets)
        return {m: float(self.table.array(m).mean()) for m in sets}


def _run(runner: _Runner, config: RankConfig, latency_ms: Mapping[frozenset[str], float] | None,
         model_path: Path | None) -> Ranking:
    """Evaluate what the subset mode needs (greedy and permutations adaptively), then compute."""
    slots, subsets = runner.table.slots, config.subsets
    runner.ensure(mask_sets(slots, subsets))
    path = greedy_elimination(slots, runner.overall) if subsets == "greedy" else None
    n_perms = config.shapley_permutations
    if n_perms is None:
        n_perms = DEFAULT_GREEDY_PERMUTATIONS if subsets == "greedy" else 0
    kept_table = {frozenset(slots) - m: m for m in runner.table.evaluated()}
    perms = None
    if not is_complete(slots, kept_table) and n_perms > 0:
        perms = sample_permutations(slots, n_perms, config.seed)
        runner.ensure([frozenset(slots) - kept for kept in permutation_coalitions(perms)])

    evaluated = runner.table.evaluated()
    scores = {m: runner.table.array(m) for m in evaluated}
    costs = slot_costs(*runner.loaded)
    data = compute_ranking(slots, [s.category for s in runner.samples], scores, costs, config,
                           clusters=image_clusters(runner.samples), latency_ms=latency_ms,
                           search=Search(greedy_path=path, perms=perms))
    if config.reduced_budgets:
        data.update(budget_axis(runner, config, evaluated, costs, image_clusters(runner.samples)))
    data["model"] = str(model_path) if model_path else "<in-memory model>"
    data["mask_mode"] = runner.mask_mode
    data["empty_set_mask"] = _blind_mode(runner.mask_mode)
    return Ranking(data)


def _finish(ranking: Ranking, runner: _Runner, start: float) -> Ranking:
    n_evaluated = len(runner.evaluated)
    store = runner.store
    ranking.data["evaluation"] = {
        "mask_sets_evaluated": n_evaluated,
        "mask_sets_cached": len(runner.cached),
        "token_budgets": sorted(runner.tables, reverse=True),
        "configurations_evaluated": len(runner.configurations["evaluated"]),  # (mask set, budget) pairs
        "configurations_cached": len(runner.configurations["cached"]),
        "encoder_passes_per_sample": runner.encoder_passes,  # over the whole run
        "feature_store": None if store is None or "features" not in runner.kwargs else {
            "samples": len(store), "mib": round(store.nbytes / 2**20, 3), "refused": store.refused},
        "wall_s": round(time.perf_counter() - start, 3),
        "threads": _threads(),
    }
    return ranking


def _threads() -> dict[str, Any]:
    """The torch thread count the run used and how it was chosen."""
    import torch

    choice = thread_choice() or {"source": "not configure_threads"}
    return {**choice, "threads": torch.get_num_threads()}


def write_ranking(data: Mapping[str, Any], folder: PathArg) -> None:
    """Write ``ranking.json``, ``ranking.md``, ``cur_heatmap.png`` and ``frontier.png`` into ``folder``."""
    from .rank_report import plot_cur_heatmap, plot_frontier, ranking_markdown

    path = Path(folder)
    (path / RANKING_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (path / "ranking.md").write_text(ranking_markdown(data), encoding="utf-8")
    plot_cur_heatmap(data, path / "cur_heatmap.png")
    plot_frontier(data, path / "frontier.png")


def load_ranking(dir_or_file: PathArg) -> dict[str, Any]:
    """Read and check a ``ranking.json`` (or the folder that holds it).

    Returns:
        The ranking as a dict.

    Raises:
        ConfigError: the file is missing, not JSON, of another schema version, or inconsistent.
    """
    path = Path(dir_or_file)
    path = path / RANKING_NAME if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no ranking at {dir_or_file}; pass a folder written by `encslim rank` or its ranking.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); rerun `encslim rank`") from err

    problems = check_ranking(data, SCHEMA_VERSION)
    if problems:
        raise ConfigError(f"{path} is not a valid ranking: {'; '.join(problems)}")
    ranking: dict[str, Any] = data  # an object: check_ranking says so
    return ranking

"""Recovery-aware ranking: the accuracy a kept set reaches after a short recovery, not only masked.

Recovery composes three stages (prune, finetune, evaluation), so it lives in the pipeline layer:
:func:`rank_and_recover` runs the masked ranking (:func:`encslim.prune.rank.rank`) and then
:func:`recover`; ``encslim rank --recover`` (:mod:`encslim.recipes.rank_commands`) and the recipes'
``rank.recover`` (:mod:`encslim.recipes.stages`) both call it.

Masking a trained model measures how much it relies on an encoder; a model retrained without
that encoder may do better, and the ranking by recovered accuracy can differ from the ranking by
masking (an encoder the others can stand in for costs a lot masked and little after recovery).
``encslim rank --recover STEPS`` therefore takes candidate kept sets from the frontier and, for
each:

1. prunes the model to it (``prune``, verification off: the masked ranking already measured it);
2. recovers it with ``STEPS`` LoRA steps on the recovery data (``--recover-data``; never the
   evaluation data), merged; with ``distill`` also, or instead, a run distilled from the full
   model (:mod:`encslim.finetune.distill`);
3. evaluates the recovered model on the ranking's own samples with the ranking's settings.

**Candidates.** The Pareto rows of the subset table (accuracy against vision FLOPs), proper and
non-empty (every proper row when none is, as when all tie with the empty set). First the most
accurate Pareto row of each size (so the budget spans small and large kept sets), ordered by
masked accuracy; then the remaining Pareto rows by masked accuracy. The first ``top`` are
recovered. A ranking with a token-budget axis (``--token-budgets``) takes its candidates, by the same
rule (the best of each size and budget first), from its configurations (``token_budgets`` rows: kept
set x budget, Pareto over total FLOPs); a candidate with a budget is pruned with it (the budget goes
into its config.json), so its recovery trains, and its evaluation scores, under that budget.

**What it writes.** Into ``ranking.json``: ``recovery`` (settings, per candidate the masked and
recovered accuracy per category, the masked and recovered CUR of the removed set, the recovered
model folders, relative to the ranking folder), ``recovered`` in each recovered row of ``subsets`` (the primary variant: distilled
when run, else plain LoRA; ``recovered_variants`` holds each), and ``recovered_cur``: per slot
whose single removal was recovered, CUR after recovery. ``prune --on recovered`` decides on the
``recovered`` rows.

A candidate the family cannot remove (a ``PlanError`` from ``prune``) is listed with ``skipped``
and its reason; the others go on.

**Resumable.** Each candidate works in ``<out>/recover/<kept>/``: every variant's model is
written atomically, its evaluation into ``<variant>.json``, and ``result.json`` marks the
candidate done, with a fingerprint of the settings. A rerun (``--overwrite`` of the same out)
carries the folder over (linked aside while the ranking replaces the folder) and redoes only what
is missing or was made with other settings.

Deviation from a full retraining study: the full model is not given the same recovery steps,
so ``recovered_cur`` compares a recovered pruned model against the unrecovered full one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import ConfigError, PlanError
from ..files import sha256_file
from ..models.slots import SlotSet
from ..prune.importance import OVERALL, accuracy
from .recover_config import DISTILLED, RecoverConfig

if TYPE_CHECKING:
    from ..data.samples import Sample
    from ..prune.config import RankConfig
    from ..prune.rank import Ranking

logger = logging.getLogger(__name__)

RECOVER_DIR = "recover"
RESULT_FILE = "result.json"

PathArg = Union[str, "os.PathLike[str]"]  # a file or folder; a ModelFolder is one too
DataArg = Union[PathArg, Iterable[Union[PathArg, "Sample"]]]  # the ranking's file(s), or its samples
Echo = Callable[[str], None]
Budget = Union[Mapping[str, Any], None]  # a configuration's token budget {"method", "budget"}; None: every token


def check_recovery(settings: RecoverConfig, model_path: object, out: PathArg | None, evaluation_data: DataArg) -> None:
    """Refuse a recovery that cannot run, before anything is loaded.

    Args:
        settings: :class:`~encslim.recipes.recover_config.RecoverConfig`.
        model_path: the full model (a folder; a loaded model is refused).
        out: the ranking folder (required).
        evaluation_data: the ranking's data (file paths or samples).

    Raises:
        ConfigError: the first problem found.
    """
    if isinstance(model_path, (tuple, list)):
        raise ConfigError("--recover needs a model folder (it prunes and fine-tunes copies), not a loaded model")
    if out is None:
        raise ConfigError("--recover needs --out (each candidate is recovered into OUT/recover/)")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("--recover runs in one process (each candidate's LoRA run is small); start rank without "
                          "torchrun, or rank under torchrun first and then rerun with --recover and --overwrite")
    data = [evaluation_data] if isinstance(evaluation_data, (str, os.PathLike)) else list(evaluation_data)
    check_settings(settings, data)


def check_settings(settings: RecoverConfig, evaluation_data: Iterable[PathArg | Sample]) -> None:
    """Raise ``ConfigError`` for bad recovery settings (before any model is loaded)."""
    problems = settings.problems()
    if problems:
        raise ConfigError(problems[0])
    missing = [p for p in settings.data if not Path(p).exists()]
    if missing:
        raise ConfigError(f"--recover-data {missing[0]} does not exist; pass a training file (JSONL, LLaVA JSON, TSV)")
    ranked = {_content_key(p): p for p in evaluation_data if isinstance(p, (str, Path)) and Path(p).exists()}
    for path in settings.data:
        same = ranked.get(_content_key(path))
        if same is not None:
            also = "" if Path(same).resolve() == Path(path).resolve() else f" (the same content as {same})"
            raise ConfigError(f"--recover-data {path} is also ranking data{also}; recover on training samples, "
                              "or the recovered accuracy is measured on what the model was trained on")


def _content_key(path: PathArg) -> str:
    """What makes two data paths the same data: the sha256 of a file's bytes, a folder's resolved path."""
    path = Path(path)
    return sha256_file(path) if path.is_file() else str(path.resolve())


# ---------------------------------------------------------------------------- candidates
def candidates(ranking: Mapping[str, Any], top: int) -> list[list[str]]:
    """The kept sets to recover, in order (lists of slot names); see the module docstring."""
    slots = ranking["slots"]
    proper = [r for r in ranking.get("subsets") or [] if r["kept"] and len(r["kept"]) < len(slots)]
    rows = [r for r in proper if r.get("pareto")] or proper  # none on the frontier (ties with the empty set)
    by_accuracy = sorted(rows, key=lambda r: (-r["accuracy"][OVERALL], len(r["kept"])))
    best_per_size: dict[int, dict[str, Any]] = {}
    for row in by_accuracy:
        best_per_size.setdefault(len(row["kept"]), row)
    first = [r for r in by_accuracy if best_per_size[len(r["kept"])] is r]
    ordered = first + [r for r in by_accuracy if r not in first]
    return [list(r["kept"]) for r in ordered[:top]]


def budget_candidates(ranking: Mapping[str, Any], top: int) -> list[tuple[list[str], dict[str, Any] | None]]:
    """With a token-budget axis (``rank --token-budgets``): the configurations to recover, ``(kept, token_budget)``
    (``None``: every token), by the same rule over the ``token_budgets`` rows that remove something (a slot or
    tokens); without one, :func:`candidates` at every token."""
    section = ranking.get("token_budgets") or {}
    if not section.get("rows"):
        return [(kept, None) for kept in candidates(ranking, top)]
    n = len(ranking["slots"])
    proper = [r for r in section["rows"] if r["kept"] and (len(r["kept"]) < n or float(r["budget"]) < 1)]
    rows = [r for r in proper if r.get("pareto")] or proper
    by_accuracy = sorted(rows, key=lambda r: (-r["accuracy"][OVERALL], len(r["kept"]), -float(r["budget"])))
    best: dict[tuple[int, float], dict[str, Any]] = {}
    for row in by_accuracy:
        best.setdefault((len(row["kept"]), float(row["budget"])), row)
    ordered = [r for r in by_accuracy if best[(len(r["kept"]), float(r["budget"]))] is r]
    ordered += [r for r in by_accuracy if r not in ordered]
    return [(list(r["kept"]), None if float(r["budget"]) >= 1 else
             {"method": section["method"], "budget": float(r["budget"])}) for r in ordered[:top]]


def candidate_name(kept: Sequence[str], token_budget: Mapping[str, Any] | None = None) -> str:
    """The folder name of a candidate under ``recover/``: its kept slots joined by ``+`` (and ``@pool0.25`` for a
    token budget)."""
    name = "+".join(kept)
    return name if token_budget is None else f"{name}@{token_budget['method']}{token_budget['budget']:g}"


# ---------------------------------------------------------------------------- running
def _fingerprint(model_path: PathArg, settings: RecoverConfig, eval_settings: Mapping[str, Any]) -> str:
    data = [{"path": str(Path(p).resolve()), "sha256": sha256_file(p) if Path(p).is_file() else None}
            for p in settings.data]
    payload = {"model": str(Path(model_path).resolve()), "settings": settings.model_dump(exclude={"data"}),
               "data": data, "evaluation": eval_settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def carry_over(previous_out: PathArg | None, new_out: PathArg) -> None:
    """Link (or copy) the ``recover/`` folder of a previous ranking into the new one (resume)."""
    if previous_out is None:
        return
    source = Path(previous_out) / RECOVER_DIR
    if not source.is_dir():
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, Path(new_out) / RECOVER_DIR, copy_function=link, dirs_exist_ok=True)


@contextmanager
def _kept_aside(previous_out: PathArg | None, out: PathArg) -> Iterator[Path | None]:
    """The ``recover/`` folder of ``previous_out``, linked into a folder next to ``out`` (or ``None``).

    The ranking replaces ``out`` as a whole (atomically); when the previous ranking is ``out``
    itself, its recovered candidates must be held elsewhere meanwhile. The links go when the
    block ends.
    """
    if previous_out is None or not (Path(previous_out) / RECOVER_DIR).is_dir():
        yield None
        return
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=".recover-resume-", dir=parent))
    try:
        carry_over(previous_out, aside)
        yield aside
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def rank_and_recover(model_path: PathArg, data: DataArg, settings: RecoverConfig | Mapping[str, Any], out: PathArg,
                     config: RankConfig | Mapping[str, Any] | None = None, *, resume_from: PathArg | None = None,
                     echo: Echo | None = None, **overrides: Any) -> Ranking:
    """Rank ``model_path`` on ``data``, then recover the frontier's candidates (``rank --recover``).

    Args:
        model_path: the full model folder.
        data: the ranking's benchmark file(s), or its samples.
        settings: :class:`~encslim.recipes.recover_config.RecoverConfig`.
        out: the ranking folder: ``ranking.json``/``.md`` (with the recovery), plots, ``recover/``.
        config: the ranking's :class:`~encslim.prune.config.RankConfig` (or a dict; default: its
            defaults); its batch size, generation length, device and dtype evaluate the candidates
            too; with ``overwrite`` the finished candidates of ``out`` are reused.
        resume_from: a previous ranking folder whose recovered candidates to reuse (default:
            ``out`` itself, when it exists and ``overwrite`` is set).
        echo: prints the recovery's progress lines (default: the log).
        **overrides: fields of ``config`` to change, and :func:`encslim.prune.rank.rank`'s other
            keywords (``evaluator``, ``progress``, ``latency_ms``).

    Returns:
        :class:`encslim.prune.rank.Ranking` whose ``data`` holds ``recovery`` (see :func:`recover`).

    Raises:
        ConfigError: bad recovery settings (before anything is loaded); and what
        :func:`encslim.prune.rank.rank` and :func:`recover` raise.
    """
    from ..data.load import load_samples
    from ..models.loading import open_folder
    from ..prune.rank import rank, rank_config

    runtime = {k: overrides.pop(k) for k in ("evaluator", "progress", "latency_ms") if k in overrides}
    ranking_config: RankConfig = rank_config(config, **overrides)
    recovery: RecoverConfig = RecoverConfig.build(settings)
    check_recovery(recovery, model_path, out, data)
    train = load_samples([Path(p) for p in recovery.data])  # broken rows refused before the ranking is written
    started = time.perf_counter()
    if resume_from is None and ranking_config.overwrite and Path(out).is_dir():
        resume_from = out
    with _kept_aside(resume_from, out) as previous:
        ranking: Ranking = rank(model_path, data, ranking_config, out=out, **runtime)
        carry_over(previous, out)
    assert ranking.samples is not None  # rank() keeps the samples it ranked on
    recover(ranking.data, open_folder(model_path), ranking.samples, out, recovery,  # keeps its --encoder folders
            {"batch_size": ranking_config.batch_size, "max_new_tokens": ranking_config.max_new_tokens,
             "device": ranking_config.device, "dtype": ranking_config.dtype}, echo=echo, train=train)
    ranking.data["evaluation"]["wall_s"] = round(time.perf_counter() - started, 3)
    rewrite_ranking(ranking.data, out)
    return ranking


def recover(ranking: dict[str, Any], model_path: PathArg, samples: Sequence[Sample], out: PathArg,
            settings: RecoverConfig, eval_kwargs: Mapping[str, Any], echo: Echo | None = None,
            train: Sequence[Sample] | None = None) -> dict[str, Any]:
    """Recover the frontier candidates of ``ranking`` and add what they reach to it (in place).

    Args:
        ranking: the ranking dict (masked), as :func:`encslim.prune.rank.rank` computed it.
        model_path: the full model folder it ranks.
        samples: the ranking's samples (evaluation data).
        out: the ranking folder; candidates work in ``out/recover/``.
        settings: :class:`~encslim.recipes.recover_config.RecoverConfig`.
        eval_kwargs: ``batch_size``, ``max_new_tokens``, ``device`` and ``dtype`` (default ``cpu``,
            ``float32``) of the ranking's evaluation.
        echo: a function printing progress lines (``None``: the log).
        train: the training samples of ``settings.data`` when already loaded (else read here).

    Returns:
        the ``recovery`` block (also stored in ``ranking``).

    Raises:
        ConfigError: the ranking has no frontier kept set to recover.
    """
    from ..data.load import load_samples

    started = time.perf_counter()
    if train is None:
        train = load_samples([Path(p) for p in settings.data])
    eval_settings = {"max_new_tokens": eval_kwargs.get("max_new_tokens"), "samples": [s.id for s in samples]}
    run = _Run(model_path, train, samples, settings, eval_kwargs, _fingerprint(model_path, settings, eval_settings),
               echo or logger.info)
    work = Path(out) / RECOVER_DIR
    work.mkdir(parents=True, exist_ok=True)
    chosen = budget_candidates(ranking, settings.top)
    if not chosen:
        raise ConfigError("the ranking has no frontier kept set to recover (it needs the subset table of at least "
                          "two slots); rank with --subsets all or greedy")
    rows = {(tuple(r["kept"]), 1.0): r for r in ranking["subsets"]}
    rows.update({(tuple(r["kept"]), float(r["budget"])): r for r in (ranking.get("token_budgets") or {}).get("rows", [])})
    results = []
    for number, (kept, budget) in enumerate(chosen, 1):
        slot_set = SlotSet.from_kept(ranking["slots"], kept, what="ranking.json subsets: ")
        at = "" if budget is None else f" at token budget {budget['method']} {budget['budget']:g}"
        run.echo(f"recover {number}/{len(chosen)}: keep {', '.join(slot_set.kept)} "
                 f"(drop {', '.join(slot_set.masked_ordered) or 'nothing'}){at}")
        row = rows[(tuple(kept), 1.0 if budget is None else budget["budget"])]
        results.append(_recover_candidate(run, work / candidate_name(kept, budget), (slot_set, budget), row,
                                          ranking["accuracy"]["full"]))
    block = _recovery_block(settings, results, started)
    ranking["recovery"] = block
    ranking["recovered_cur"] = _recovered_cur(results, settings.primary)
    return block


@dataclass(frozen=True)
class _Run:
    """What the recovery of every candidate shares: the full model, the data, the settings, the fingerprint."""

    model_path: PathArg
    train: Sequence[Sample]  # the recovery's training samples
    samples: Sequence[Sample]  # the ranking's (evaluation) samples
    settings: RecoverConfig
    eval_kwargs: Mapping[str, Any]  # the ranking's evaluation settings (see recover)
    fingerprint: str  # of the model, the settings and the evaluation: a candidate made otherwise is redone
    echo: Echo

    @property
    def device(self) -> str:
        return str(self.eval_kwargs.get("device", "cpu"))

    @property
    def dtype(self) -> str:
        return str(self.eval_kwargs.get("dtype", "float32"))


def _recover_candidate(run: _Run, folder: Path, configuration: tuple[SlotSet, Budget], row: dict[str, Any],
                       full: Mapping[str, float]) -> dict[str, Any]:
    """Recover one configuration, a kept set and its token budget (``row`` of the subset table, or of the
    ``token_budgets`` rows, gains its recovered accuracy); its entry of ``recovery.candidates`` (``kept``/``masked``
    lists in the model's slot order, ``token_budget``), with ``skipped`` and the reason where the family cannot
    remove the set."""
    slot_set, budget = configuration
    kept, masked = list(slot_set.kept), list(slot_set.masked_ordered)
    try:
        result = _recover_one(run, folder, configuration)
    except PlanError as err:  # the family cannot remove this set: report it, recover the others
        run.echo(f"  skipped: {err}")
        shutil.rmtree(folder, ignore_errors=True)
        return {"kept": kept, "masked": masked, "token_budget": budget, "accuracy_masked": row["accuracy"],
                "skipped": str(err)}
    row["recovered"] = result["accuracy"][run.settings.primary]
    row["recovered_variants"] = result["accuracy"]
    return {"kept": kept, "masked": masked, "token_budget": budget, "accuracy_masked": row["accuracy"],
            "accuracy_recovered": result["accuracy"], "cur_masked": _cur(full, row["accuracy"]),
            "cur_recovered": {v: _cur(full, acc) for v, acc in result["accuracy"].items()},
            "models": result["models"], "seconds": result["seconds"], "reused": result["reused"]}


def _recovery_block(settings: RecoverConfig, results: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The ``recovery`` block of ranking.json: the settings, the rule, every candidate's entry, the wall time."""
    return {"steps": settings.steps, "top": settings.top, "distill": settings.distill,
            "variants": settings.variants, "primary": settings.primary,
            "train_data": [str(Path(p).resolve()) for p in settings.data],
            "settings": settings.model_dump(exclude={"data"}),
            "candidates_rule": "best Pareto row of each size, then the other Pareto rows, by masked accuracy",
            "full_model_recovered": False, "candidates": results,
            "wall_s": round(time.perf_counter() - started, 3)}


def _cur(full: Mapping[str, float], acc: Mapping[str, float]) -> dict[str, float | None]:
    """CUR of the removed set per category: ``(full - acc) / full`` (``None`` where full is 0)."""
    return {c: ((full[c] - acc[c]) / full[c] if full.get(c) else None) for c in full if c in acc}


def _recovered_cur(results: Sequence[Mapping[str, Any]], primary: str) -> dict[str, dict[str, float | None]]:
    """Per slot whose single removal was recovered: its CUR after recovery, per category."""
    out = {}
    for entry in results:
        if len(entry["masked"]) == 1 and "skipped" not in entry and entry.get("token_budget") is None:
            out[entry["masked"][0]] = entry["cur_recovered"][primary]
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _recover_one(run: _Run, folder: Path, configuration: tuple[SlotSet, Budget]) -> dict[str, Any]:
    """One candidate, resumable: ``{"accuracy": {variant: {...}}, "models", "seconds", "reused"}``."""
    done = _read(folder / RESULT_FILE)
    if done and done.get("fingerprint") == run.fingerprint:
        run.echo("  reused (done before with the same settings)")
        return {**done, "reused": True}
    if done or (folder.exists() and (_read(folder / "fingerprint.json") or {}).get("fingerprint") != run.fingerprint):
        shutil.rmtree(folder, ignore_errors=True)  # made with other settings: start over
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fingerprint.json").write_text(json.dumps({"fingerprint": run.fingerprint}) + "\n", encoding="utf-8")
    started = time.perf_counter()
    accuracies, models = {}, {}
    for variant in run.settings.variants:
        model_dir = folder / variant
        scored = _read(folder / f"{variant}.json")
        if scored is None:
            if not (model_dir / "config.json").is_file():
                _train(run, folder, configuration, variant, model_dir)
            scored = _evaluate(model_dir, run.samples, run.eval_kwargs, run.device, run.dtype)
            _write_json(folder / f"{variant}.json", scored)
        accuracies[variant] = scored["accuracy"]
        models[variant] = f"{RECOVER_DIR}/{folder.name}/{variant}"  # relative to the ranking folder
        run.echo(f"  {variant}: overall {scored['accuracy'][OVERALL]:.3f}")
    shutil.rmtree(folder / "pruned", ignore_errors=True)
    result = {"fingerprint": run.fingerprint, "accuracy": accuracies, "models": models,
              "seconds": round(time.perf_counter() - started, 3)}
    _write_json(folder / RESULT_FILE, result)
    return {**result, "reused": False}


def _train(run: _Run, folder: Path, configuration: tuple[SlotSet, Budget], variant: str, model_dir: Path) -> None:
    from ..finetune.train import finetune
    from ..prune.surgery import prune

    settings = run.settings
    pruned = folder / "pruned"
    masked, budget = configuration
    if not (pruned / "config.json").is_file():  # pruned with the configuration's budget: trained and scored under it
        tokens = {} if budget is None else {"token_budget": budget["budget"], "token_method": budget["method"]}
        prune(run.model_path, masked, pruned, verify=False, overwrite=True, **tokens)
    options: dict[str, Any] = dict(max_steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                                   lora_r=settings.lora_r, seed=settings.seed, merge=True, progress=False)
    if variant == DISTILLED:
        options.update(distill_from=str(run.model_path), distill_weight=settings.distill_weight,
                       distill_temperature=settings.distill_temperature)
    summary = finetune(pruned, run.train, model_dir, overwrite=True, **options)
    # the run's smoothed loss, as finetune.json and the recipe summary give it; the warning on the same line, once
    rose = "  WARNING: the loss rose" if summary["loss_rose"] else ""
    run.echo(f"  {variant}: {summary['steps']} steps, loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} "
             f"(mean of the first/last {summary['loss_window']} steps){rose}")


def _evaluate(model_dir: Path, samples: Sequence[Sample], eval_kwargs: Mapping[str, Any], device: str,
              dtype: str) -> dict[str, Any]:
    from ..bench.evaluate import EvalSettings, evaluate
    from ..models.loading import load_model

    loaded = load_model(model_dir, device=device, dtype=dtype)
    result = evaluate(loaded, samples, mask_sets=[frozenset()], settings=EvalSettings(
        batch_size=eval_kwargs.get("batch_size", 8), max_new_tokens=eval_kwargs.get("max_new_tokens", 8)))
    scores = result.scores[frozenset()]
    return {"accuracy": accuracy([scores[s.id] for s in samples], [s.category for s in samples]), "n": len(samples)}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def rewrite_ranking(ranking: Mapping[str, Any], folder: PathArg) -> None:
    """Write the ranking (now with its recovery) into ``folder`` again, each file replaced atomically."""
    from ..prune.rank import write_ranking

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".ranking.tmp-", dir=folder))
    try:
        write_ranking(ranking, tmp)
        for item in tmp.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["RecoverConfig", "budget_candidates", "candidates", "carry_over", "check_recovery", "check_settings", "rank_and_recover",
           "recover", "rewrite_ranking"]

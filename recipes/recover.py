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
recovered.

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

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, PlanError
from ..files import sha256_file
from ..prune.importance import OVERALL, accuracy
from .recover_config import DISTILLED, RecoverConfig

logger = logging.getLogger(__name__)

RECOVER_DIR = "recover"
RESULT_FILE = "result.json"


def check_recovery(settings, model_path, out, evaluation_data):
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
    data = [evaluation_data] if isinstance(evaluation_data, (str, Path)) else list(evaluation_data)
    check_settings(settings, data)


def check_settings(settings, evaluation_data):
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


def _content_key(path):
    """What makes two data paths the same data: the sha256 of a file's bytes, a folder's resolved path."""
    path = Path(path)
    return sha256_file(path) if path.is_file() else str(path.resolve())


# ---------------------------------------------------------------------------- candidates
def candidates(ranking, top):
    """The kept sets to recover, in order (lists of slot names); see the module docstring."""
    slots = ranking["slots"]
    proper = [r for r in ranking.get("subsets") or [] if r["kept"] and len(r["kept"]) < len(slots)]
    rows = [r for r in proper if r.get("pareto")] or proper  # none on the frontier (ties with the empty set)
    by_accuracy = sorted(rows, key=lambda r: (-r["accuracy"][OVERALL], len(r["kept"])))
    best_per_size = {}
    for row in by_accuracy:
        best_per_size.setdefault(len(row["kept"]), row)
    first = [r for r in by_accuracy if best_per_size[len(r["kept"])] is r]
    ordered = first + [r for r in by_accuracy if r not in first]
    return [list(r["kept"]) for r in ordered[:top]]


def candidate_name(kept):
    return "+".join(kept)


# ---------------------------------------------------------------------------- running
def _fingerprint(model_path, settings, eval_settings):
    data = [{"path": str(Path(p).resolve()), "sha256": sha256_file(p) if Path(p).is_file() else None}
            for p in settings.data]
    payload = {"model": str(Path(model_path).resolve()), "settings": settings.model_dump(exclude={"data"}),
               "data": data, "evaluation": eval_settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def carry_over(previous_out, new_out):
    """Link (or copy) the ``recover/`` folder of a previous ranking into the new one (resume)."""
    if previous_out is None:
        return
    source = Path(previous_out) / RECOVER_DIR
    if not source.is_dir():
        return

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, Path(new_out) / RECOVER_DIR, copy_function=link, dirs_exist_ok=True)


@contextmanager
def _kept_aside(previous_out, out):
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


def rank_and_recover(model_path, data, settings, out, config=None, *, resume_from=None, echo=None, **overrides):
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
    config = rank_config(config, **overrides)
    settings = RecoverConfig.build(settings)
    check_recovery(settings, model_path, out, data)
    train = load_samples([Path(p) for p in settings.data])  # broken rows refused before the ranking is written
    started = time.perf_counter()
    if resume_from is None and config.overwrite and Path(out).is_dir():
        resume_from = out
    with _kept_aside(resume_from, out) as previous:
        ranking = rank(model_path, data, config, out=out, **runtime)
        carry_over(previous, out)
    recover(ranking.data, open_folder(model_path), ranking.samples, out, settings,  # keeps its --encoder folders
            {"batch_size": config.batch_size, "max_new_tokens": config.max_new_tokens, "device": config.device,
             "dtype": config.dtype}, echo=echo,
            train=train)
    ranking.data["evaluation"]["wall_s"] = round(time.perf_counter() - started, 3)
    rewrite_ranking(ranking.data, out)
    return ranking


def recover(ranking, model_path, samples, out, settings, eval_kwargs, echo=None, train=None):
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
    """
    from ..data.load import load_samples

    echo = echo or logger.info
    device, dtype = eval_kwargs.get("device", "cpu"), eval_kwargs.get("dtype", "float32")
    started = time.perf_counter()
    if train is None:
        train = load_samples([Path(p) for p in settings.data])
    eval_settings = {"max_new_tokens": eval_kwargs.get("max_new_tokens"), "samples": [s.id for s in samples]}
    fingerprint = _fingerprint(model_path, settings, eval_settings)
    work = Path(out) / RECOVER_DIR
    work.mkdir(parents=True, exist_ok=True)
    full = ranking["accuracy"]["full"]
    rows = {tuple(r["kept"]): r for r in ranking["subsets"]}
    chosen = candidates(ranking, settings.top)
    if not chosen:
        raise ConfigError("the ranking has no frontier kept set to recover (it needs the subset table of at least "
                          "two slots); rank with --subsets all or greedy")
    results = []
    for number, kept in enumerate(chosen, 1):
        row = rows[tuple(kept)]
        masked = [s for s in ranking["slots"] if s not in kept]
        folder = work / candidate_name(kept)
        echo(f"recover {number}/{len(chosen)}: keep {', '.join(kept)} (drop {', '.join(masked)})")
        try:
            result = _recover_one(folder, model_path, masked, train, samples, settings, eval_kwargs, fingerprint,
                                  device, dtype, echo)
        except PlanError as err:  # the family cannot remove this set: report it, recover the others
            echo(f"  skipped: {err}")
            results.append({"kept": kept, "masked": masked, "accuracy_masked": row["accuracy"], "skipped": str(err)})
            shutil.rmtree(folder, ignore_errors=True)
            continue
        entry = {"kept": kept, "masked": masked, "accuracy_masked": row["accuracy"],
                 "accuracy_recovered": result["accuracy"], "cur_masked": _cur(full, row["accuracy"]),
                 "cur_recovered": {v: _cur(full, acc) for v, acc in result["accuracy"].items()},
                 "models": result["models"], "seconds": result["seconds"], "reused": result["reused"]}
        results.append(entry)
        row["recovered"] = result["accuracy"][settings.primary]
        row["recovered_variants"] = result["accuracy"]
    block = {"steps": settings.steps, "top": settings.top, "distill": settings.distill,
             "variants": settings.variants, "primary": settings.primary,
             "train_data": [str(Path(p).resolve()) for p in settings.data],
             "settings": settings.model_dump(exclude={"data"}),
             "candidates_rule": "best Pareto row of each size, then the other Pareto rows, by masked accuracy",
             "full_model_recovered": False, "candidates": results,
             "wall_s": round(time.perf_counter() - started, 3)}
    ranking["recovery"] = block
    ranking["recovered_cur"] = _recovered_cur(ranking, results, settings.primary)
    return block


def _cur(full, acc):
    """CUR of the removed set per category: ``(full - acc) / full`` (``None`` where full is 0)."""
    return {c: ((full[c] - acc[c]) / full[c] if full.get(c) else None) for c in full if c in acc}


def _recovered_cur(ranking, results, primary):
    """Per slot whose single removal was recovered: its CUR after recovery, per category."""
    out = {}
    for entry in results:
        if len(entry["masked"]) == 1 and "skipped" not in entry:
            out[entry["masked"][0]] = entry["cur_recovered"][primary]
    return out


def _read(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _recover_one(folder, model_path, masked, train, samples, settings, eval_kwargs, fingerprint, device, dtype,
                 echo):
    """One candidate, resumable: ``{"accuracy": {variant: {...}}, "models", "seconds", "reused"}``."""
    done = _read(folder / RESULT_FILE)
    if done and done.get("fingerprint") == fingerprint:
        echo("  reused (done before with the same settings)")
        return {**done, "reused": True}
    if done or (folder.exists() and (_read(folder / "fingerprint.json") or {}).get("fingerprint") != fingerprint):
        shutil.rmtree(folder, ignore_errors=True)  # made with other settings: start over
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
    started = time.perf_counter()
    accuracies, models = {}, {}
    for variant in settings.variants:
        model_dir = folder / variant
        scored = _read(folder / f"{variant}.json")
        if scored is None:
            if not (model_dir / "config.json").is_file():
                _train(folder, model_path, masked, train, settings, variant, model_dir, echo)
            scored = _evaluate(model_dir, samples, eval_kwargs, device, dtype)
            _write_json(folder / f"{variant}.json", scored)
        accuracies[variant] = scored["accuracy"]
        models[variant] = f"{RECOVER_DIR}/{folder.name}/{variant}"  # relative to the ranking folder
        echo(f"  {variant}: overall {scored['accuracy'][OVERALL]:.3f}")
    shutil.rmtree(folder / "pruned", ignore_errors=True)
    result = {"fingerprint": fingerprint, "accuracy": accuracies, "models": models,
              "seconds": round(time.perf_counter() - started, 3)}
    _write_json(folder / RESULT_FILE, result)
    return {**result, "reused": False}


def _train(folder, model_path, masked, train, settings, variant, model_dir, echo):
    from ..finetune.train import finetune
    from ..prune.surgery import prune

    pruned = folder / "pruned"
    if not (pruned / "config.json").is_file():
        prune(model_path, masked, pruned, verify=False, overwrite=True)
    options = dict(max_steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size, lora_r=settings.lora_r,
                   seed=settings.seed, merge=True, progress=False)
    if variant == DISTILLED:
        options.update(distill_from=str(model_path), distill_weight=settings.distill_weight,
                       distill_temperature=settings.distill_temperature)
    summary = finetune(pruned, train, model_dir, overwrite=True, **options)
    # the run's smoothed loss, as finetune.json and the recipe summary give it; the warning on the same line, once
    rose = "  WARNING: the loss rose" if summary["loss_rose"] else ""
    echo(f"  {variant}: {summary['steps']} steps, loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} "
         f"(mean of the first/last {summary['loss_window']} steps){rose}")


def _evaluate(model_dir, samples, eval_kwargs, device, dtype):
    from ..bench.evaluate import EvalSettings, evaluate
    from ..models.loading import load_model

    loaded = load_model(model_dir, device=device, dtype=dtype)
    result = evaluate(loaded, samples, mask_sets=[frozenset()], settings=EvalSettings(
        batch_size=eval_kwargs.get("batch_size", 8), max_new_tokens=eval_kwargs.get("max_new_tokens", 8)))
    scores = result.scores[frozenset()]
    return {"accuracy": accuracy([scores[s.id] for s in samples], [s.category for s in samples]), "n": len(samples)}


def _write_json(path, data):
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def rewrite_ranking(ranking, folder):
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


__all__ = ["RecoverConfig", "candidates", "carry_over", "check_recovery", "check_settings", "rank_and_recover",
           "recover", "rewrite_ranking"]

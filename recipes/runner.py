"""``encslim run``: execute a recipe's stages into one run folder, resumably.

Each stage writes ``<run>/<stage>/`` through a temporary folder renamed at the end, plus a
``stage.json`` holding the hash of everything the stage depends on (its settings, the upstream
stages' hashes, the digests of its input files). A rerun skips a stage whose hash is unchanged,
so a changed selection policy re-prunes without re-ranking, and Ctrl-C never leaves a
half-written stage behind.
"""

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_output_dir
from ..runtime import configure_threads
from .schema import DEMO, Recipe, RecipeSource, load_recipe

log = logging.getLogger(__name__)

STAGES = ("data", "rank", "prune", "finetune", "export", "bench")
STAGE_FILE = "stage.json"
HASH_CHUNK_LIMIT = 256 << 20  # files above this are fingerprinted by size and mtime, not content


@dataclass
class RunContext:
    """What stages share: the recipe, the run folder, and the finished stages' records."""

    recipe: Recipe
    run_dir: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> stage.json content
    echo: Callable[[str], None] = print

    def stage_dir(self, stage: str) -> Path:
        """The folder of ``stage`` in the run folder."""
        return self.run_dir / stage

    def output(self, stage: str, key: str) -> Any:
        """The output ``key`` a finished ``stage`` recorded (a path or figures, as its stage.json holds it)."""
        return self.records[stage]["outputs"][key]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content, or of its size and mtime when it is very large."""
    path = Path(path)
    stat = path.stat()
    if stat.st_size > HASH_CHUNK_LIMIT:
        return f"size:{stat.st_size}:mtime:{int(stat.st_mtime)}"
    from ..files import sha256_file

    return sha256_file(path)


def tree_digest(path: str | Path) -> str:
    """Digest of a file or of every file in a folder (names and contents)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and STAGE_FILE != p.name):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(file_digest(item).encode())
    return digest.hexdigest()


def stage_hash(stage: str, settings: Mapping[str, Any], upstream: Mapping[str, str | None],
               inputs: Iterable[str | Path]) -> str:
    """The hash a stage's outputs are keyed by."""
    payload = json.dumps({"stage": stage, "settings": settings, "upstream": upstream,
                          "inputs": {str(p): tree_digest(p) for p in inputs}}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_record(folder: Path) -> dict[str, Any] | None:
    record = folder / STAGE_FILE
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _elapsed(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_recipe(recipe_path: RecipeSource, overrides: Sequence[str] = (), stages: Sequence[str] | None = None,
               force: bool = False, echo: Callable[[str], None] = print, threads: int | None = None,
               encoders: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a recipe. Returns the summary dict (also written to ``<run>/summary.json``).

    Args:
        recipe_path: the YAML recipe.
        overrides: ``key.sub=value`` strings.
        stages: run only these stages (their upstream stages must have run before).
        force: rerun the selected stages even when their hash is unchanged.
        echo: prints the runner's lines: ``[k/n stage] running ...``, ``[k/n stage] done in s``
            (k counts the recipe's enabled stages); the stages' own progress bars go to stderr,
            on a terminal only.
        threads: torch CPU threads (:func:`encslim.runtime.configure_threads`; ``None``: the
            process's earlier choice, else ``ENCSLIM_THREADS``, else automatic; ``0``: leave torch's
            setting alone).
        encoders: ``{slot: folder}`` (``--encoder``) over the recipe's ``encoders:``; the stages open the
            recipe's model with them.

    Raises:
        ConfigError: a bad recipe or override, an unknown or disabled stage, or an earlier stage that has
            not run yet; and what the stages raise.
    """
    from . import stages as stage_impl

    recipe = _load_with_encoders(recipe_path, overrides, encoders)
    wanted = _wanted_stages(stages)
    run_dir = Path(recipe.out) / recipe.name
    enabled = [s for s in STAGES if stage_impl.SPECS[s].enabled(recipe)]
    through = _stages_through(wanted, enabled, run_dir)  # checked before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.resolved.yaml").write_text(_dump_yaml(recipe.model_dump()), encoding="utf-8")
    ctx = RunContext(recipe=recipe, run_dir=run_dir, echo=echo)
    _check_drop(ctx, [s for s in through if s in enabled])
    if threads != 0:
        configure_threads(threads)
    started = time.perf_counter()
    for stage in through:
        if not stage_impl.SPECS[stage].enabled(recipe):
            ctx.records[stage] = {"stage": stage, "skipped": "disabled in the recipe", "outputs": {}}
            continue
        tag = f"[{enabled.index(stage) + 1}/{len(enabled)} {stage}]"
        ctx.records[stage] = _stage_record(ctx, stage, tag, rerun_if_stale=stage in wanted, force=force,
                                           started=started)
    summary = stage_impl.summarize(ctx)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def _load_with_encoders(recipe_path: RecipeSource, overrides: Sequence[str],
                        encoders: Mapping[str, str] | None) -> Recipe:
    """The validated recipe, its ``encoders:`` checked (:func:`~encslim.models.external.parse_encoder_args`)
    and overridden by ``encoders`` (``--encoder``); the stages open the model with them
    (:func:`encslim.recipes.stages.source_model`)."""
    recipe = load_recipe(recipe_path, overrides)
    if recipe.encoders:
        from ..models.external import parse_encoder_args

        recipe.encoders = parse_encoder_args([f"{k}={v}" for k, v in recipe.encoders.items()], what="encoders:")
    recipe.encoders = {**recipe.encoders, **dict(encoders or {})}
    return recipe


def _check_drop(ctx: RunContext, through: Sequence[str]) -> None:
    """A recipe's ``select.drop``, checked once against its model's slots before any stage runs (a typo fails
    now, in SlotSet's one line, not after the ranking); the ``demo`` model is made by a stage, so later."""
    from ..errors import PlanError
    from ..models.slots import SlotSet
    from . import stages as stage_impl

    drop = ctx.recipe.select.drop
    if drop is None or "prune" not in through or ctx.recipe.model == DEMO:
        return
    from ..prune.surgery import model_slots

    slots = model_slots(stage_impl.source_model(ctx))
    SlotSet.from_drop(slots, drop, error=PlanError, what="select.drop: ").require_kept(PlanError)


def _wanted_stages(stages: Sequence[str] | None) -> list[str]:
    """The stages ``--stage`` selects (all of them when none is given).

    Raises:
        ConfigError: an unknown stage name.
    """
    wanted = list(STAGES) if not stages else list(stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    return wanted


def _stage_record(ctx: RunContext, stage: str, tag: str, *, rerun_if_stale: bool, force: bool,
                  started: float) -> dict[str, Any]:
    """Run one enabled stage into its folder, or reuse its previous outputs; returns its stage.json record.

    A stage reruns when it is selected (``rerun_if_stale``) and ``force`` is set, it never ran, or
    its hash changed; otherwise its previous record stands.

    Raises:
        ConfigError: the stage is not selected and has not run yet.
    """
    from .stages import SPECS

    spec = SPECS[stage]
    upstream = {s: ctx.records[s].get("hash") for s in spec.after if s in ctx.records}
    settings = spec.settings(ctx.recipe)
    digest = stage_hash(stage, settings, upstream, spec.inputs(ctx))
    folder = ctx.stage_dir(stage)
    previous = _read_record(folder)
    if not (rerun_if_stale and (force or previous is None or previous.get("hash") != digest)):
        if previous is None:
            raise ConfigError(f"stage '{stage}' has not run yet in {ctx.run_dir}; run it first (drop --stage)")
        if previous.get("hash") != digest:
            ctx.echo(f"{tag} out of date (inputs changed) but not selected; using the old outputs")
        else:
            ctx.echo(f"{tag} unchanged, skipped")
        return previous
    ctx.echo(f"{tag} running ... ({_elapsed(started)} into the run)")
    t0 = time.perf_counter()
    with atomic_output_dir(folder, overwrite=True) as tmp:
        outputs = spec.run(ctx, Path(tmp))
        record = {"stage": stage, "hash": digest, "settings": settings, "upstream": upstream,
                  "seconds": round(time.perf_counter() - t0, 2),
                  "outputs": _relocate(outputs, Path(tmp), folder)}
        (Path(tmp) / STAGE_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    ctx.echo(f"{tag} done in {record['seconds']:.1f} s")
    return record


def _stages_through(wanted: Sequence[str], enabled: Sequence[str], run_dir: Path) -> list[str]:
    """The stages a run goes through: every stage up to the last one ``wanted`` (later ones are left
    alone). Each enabled stage before it that is not ``wanted`` must have run in ``run_dir`` already.

    Raises:
        ConfigError: no wanted stage is enabled in the recipe, or an earlier stage has not run yet.
    """
    chosen = [s for s in wanted if s in enabled]
    if not chosen:
        raise ConfigError(f"stage(s) {', '.join(wanted)} are disabled in the recipe; enable them or pick one of "
                          f"{', '.join(enabled)}")
    through = list(STAGES[:max(STAGES.index(s) for s in chosen) + 1])
    for stage in through:
        if stage in enabled and stage not in wanted and _read_record(Path(run_dir) / stage) is None:
            raise ConfigError(f"stage '{stage}' has not run yet in {run_dir}, and '{chosen[0]}' needs it; run it "
                              f"first (--stage {stage}), or drop --stage to run the recipe from the start")
    return through


def _relocate(outputs: dict[str, Any], tmp: Path, final: Path) -> dict[str, Any]:
    """Rewrite paths inside the temporary stage folder to their final location."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(str(tmp)):
            return str(final) + value[len(str(tmp)):]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {k: fix(v) for k, v in outputs.items()}


def _dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    text: str = yaml.safe_dump(data, sort_keys=False)
    return text


def clean_run(recipe_path: RecipeSource, overrides: Sequence[str] = ()) -> None:
    """Delete a recipe's run folder."""
    recipe = load_recipe(recipe_path, overrides)
    shutil.rmtree(Path(recipe.out) / recipe.name, ignore_errors=True)

"""The stages of a recipe run, each a thin call into one stage's Python API.

A stage spec says when the stage is enabled, which stages it follows, which recipe settings
and input files its hash covers, and how it runs into its (temporary) folder.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError
from .schema import DEMO, FULL, Recipe

if TYPE_CHECKING:
    from ..models.folder import ModelFolder
    from ..prune.select import Selection
    from .runner import RunContext

Outputs = dict[str, Any]  # what a stage's run returns: paths and figures, recorded in its stage.json


@dataclass(frozen=True)
class StageSpec:
    """One stage of a run: when it is enabled, the stages it follows, what its hash covers, how it runs."""

    enabled: Callable[[Recipe], bool]
    after: tuple[str, ...]
    settings: Callable[[Recipe], dict[str, Any]]  # the recipe settings its hash covers
    inputs: Callable[["RunContext"], list[str]]  # the input files (or folders) its hash covers
    run: Callable[["RunContext", Path], Outputs]  # writes into the temporary folder it is given


# ---------------------------------------------------------------------- helpers
def _model_path(ctx: "RunContext") -> str:
    if ctx.recipe.model == DEMO:
        from ..demo.assets import demo_model_path

        return str(demo_model_path())
    return ctx.recipe.model


def source_model(ctx: "RunContext") -> "ModelFolder":
    """The recipe's model opened with its ``encoders:`` (a ModelFolder: config, family and every shard
    checked before the stage's work; the stages pass it on, so the encoder folders travel with it)."""
    from ..models.loading import open_folder

    folder: ModelFolder = open_folder(_model_path(ctx), ctx.recipe.encoders)
    return folder


def _data_files(ctx: "RunContext", split: Literal["eval", "train"]) -> list[str]:
    """The recipe's ``data.<split>`` files, or the data stage's generated file for ``['demo']``."""
    files: list[str] = getattr(ctx.recipe.data, split)
    if files == [DEMO]:
        return [str(ctx.output("data", split))]
    if DEMO in files:
        raise ConfigError(f"data.{split}: 'demo' cannot be mixed with files")
    return files


def _finetuned_model(ctx: "RunContext") -> str | None:
    model: str | None = ctx.records.get("finetune", {}).get("outputs", {}).get("model")
    return model


def _final_model(ctx: "RunContext") -> str:
    """The model the export and bench stages use: finetuned if enabled, else pruned."""
    return _finetuned_model(ctx) or str(ctx.output("prune", "model"))


def _uses_demo_data(recipe: Recipe) -> bool:
    return DEMO in recipe.data.eval or DEMO in recipe.data.train


# ---------------------------------------------------------------------- data
def _run_data(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..demo.data import write_demo_data

    d = ctx.recipe.data
    sizes = {k: v for k, v in (("n_eval", d.demo_n_eval), ("n_train", d.demo_n_train)) if v}
    write_demo_data(tmp / "demo", seed=d.demo_seed, **sizes)
    return {"eval": str(tmp / "demo" / "eval.jsonl"), "train": str(tmp / "demo" / "train.jsonl")}


# ---------------------------------------------------------------------- rank
def _run_rank(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..prune.config import RankConfig
    from ..prune.rank import rank

    r = ctx.recipe.rank
    previous = ctx.stage_dir("rank") / "ranking"  # a rerun reuses its scores and recovered candidates
    config = RankConfig.build(r.model_dump(exclude={"recover"}, exclude_unset=True), device=ctx.recipe.device,
                              dtype=ctx.recipe.dtype, overwrite=True,
                              cache=str(previous) if (previous / "records.jsonl").is_file() else None)
    if r.recover is None:
        ranking = rank(source_model(ctx), _data_files(ctx, "eval"), config, out=tmp / "ranking")
    else:
        from .recover import RecoverConfig, rank_and_recover

        recover = RecoverConfig.build(r.recover, data=_data_files(ctx, "train"), seed=r.seed)
        ranking = rank_and_recover(source_model(ctx), _data_files(ctx, "eval"), recover, tmp / "ranking", config,
                                   echo=ctx.echo, resume_from=previous if previous.is_dir() else None)
    outputs = {"ranking": str(tmp / "ranking"), "slots": list(ranking.data["slots"]),
               "accuracy_full": ranking.data["accuracy"]["full"]}
    if ranking.data.get("recovery"):
        outputs["recovery"] = [{k: c[k] for k in ("kept", "accuracy_masked", "accuracy_recovered")}
                               for c in ranking.data["recovery"]["candidates"] if "skipped" not in c]
    return outputs


# ---------------------------------------------------------------------- prune
def _select(ctx: "RunContext") -> "Selection":
    from ..prune import select

    ranking = select.read_ranking(ctx.output("rank", "ranking"))
    selection: Selection = select.select(ranking["slots"], ranking, ctx.recipe.select)
    return selection


def _run_prune(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..prune.surgery import prune

    selection = _select(ctx)
    p = ctx.recipe.prune
    manifest = prune(source_model(ctx), selection, tmp / "model", p, data=_data_files(ctx, "eval") if p.verify else None)
    return {"model": str(tmp / "model"), "dropped": list(selection.drop), "selection": selection.reason,
            "verification": manifest.get("verification"), "token_budget": manifest.get("token_budget")}


# ---------------------------------------------------------------------- finetune
def _run_finetune(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..finetune.train import finetune

    f = ctx.recipe.finetune
    if not ctx.recipe.data.train:
        raise ConfigError("finetune.enabled needs data.train files (or ['demo'])")
    config = f.model_dump(exclude={"enabled"})
    if f.distill_from == FULL:  # distil from the recipe's (full) model
        config["distill_from"] = _model_path(ctx)
    summary = finetune(ctx.output("prune", "model"), _data_files(ctx, "train"), tmp / "model", config)
    outputs = {k: summary.get(k) for k in ("loss_first", "loss_last", "loss_start", "loss_end", "loss_window",
                                           "loss_rose", "steps", "samples_seen", "distill")}
    if f.merge:  # unmerged LoRA output is an adapter, not a model the later stages can load
        outputs["model"] = str(tmp / "model")
    return outputs


# ---------------------------------------------------------------------- export
def _run_export(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..export import export_model

    model = _final_model(ctx)
    outputs: Outputs = {}
    for fmt in ctx.recipe.export.formats:
        target = tmp / fmt
        export_model(model, target, ctx.recipe.export.model_dump(), ranking=ctx.output("rank", "ranking"),
                     formats=[fmt])
        outputs[fmt] = str(target)
    return outputs


# ---------------------------------------------------------------------- bench
def _run_bench(ctx: "RunContext", tmp: Path) -> Outputs:
    from ..bench.benchmark import run_bench

    b = ctx.recipe.bench
    settings = {**b.model_dump(exclude={"enabled"}), "device": ctx.recipe.device}
    data = _data_files(ctx, "eval") if b.accuracy and ctx.recipe.data.eval else ()
    variant = _variant_name(ctx)
    report = run_bench(source_model(ctx), [_final_model(ctx)], out=tmp / "report", settings=settings, data=data,
                       names=["full", variant])
    return {"report": str(tmp / "report"), "bench_json": str(tmp / "report" / "bench.json"),
            "variant": variant, "summary": _bench_summary(report)}


def _variant_name(ctx: "RunContext") -> str:
    """What the final model is called in bench and in the summary: ``finetuned`` or ``pruned``."""
    return "finetuned" if _finetuned_model(ctx) else "pruned"


def _bench_summary(report: dict[str, Any]) -> dict[str, Any]:
    models = report.get("models", [])
    if len(models) < 2:
        return {}
    return {"variants": [m.get("comparison", {}) for m in models[1:]]}


SPECS = {
    "data": StageSpec(
        enabled=_uses_demo_data, after=(),
        settings=lambda r: {"seed": r.data.demo_seed, "n_eval": r.data.demo_n_eval, "n_train": r.data.demo_n_train},
        inputs=lambda ctx: [], run=_run_data),
    "rank": StageSpec(
        enabled=lambda r: True, after=("data",),
        settings=lambda r: {"model": r.model, "rank": r.rank.model_dump(), "eval": r.data.eval,
                            "device": r.device, "dtype": r.dtype},
        inputs=lambda ctx: [_model_path(ctx), *[f for f in ctx.recipe.data.eval if f != DEMO]], run=_run_rank),
    "prune": StageSpec(
        enabled=lambda r: True, after=("rank",),
        settings=lambda r: {"select": r.select.model_dump(), "prune": r.prune.model_dump()},
        inputs=lambda ctx: [], run=_run_prune),
    "finetune": StageSpec(
        enabled=lambda r: r.finetune.enabled, after=("prune", "data"),
        settings=lambda r: {"finetune": r.finetune.model_dump(), "train": r.data.train},
        inputs=lambda ctx: [f for f in ctx.recipe.data.train if f != DEMO], run=_run_finetune),
    "export": StageSpec(
        enabled=lambda r: bool(r.export.formats), after=("prune", "finetune"),
        settings=lambda r: {"export": r.export.model_dump()}, inputs=lambda ctx: [], run=_run_export),
    "bench": StageSpec(
        enabled=lambda r: r.bench.enabled, after=("prune", "finetune", "data"),
        settings=lambda r: {"bench": r.bench.model_dump(), "device": r.device}, inputs=lambda ctx: [],
        run=_run_bench),
}


# ---------------------------------------------------------------------- summary
def summarize(ctx: "RunContext") -> dict[str, Any]:
    """The end-of-run summary: kept/removed slots, accuracy retained, savings, output paths."""
    rank = ctx.records.get("rank", {}).get("outputs", {})
    prune = ctx.records.get("prune", {}).get("outputs", {})
    slots = rank.get("slots", [])
    dropped = prune.get("dropped", [])
    summary: dict[str, Any] = {"run": str(ctx.run_dir), "slots": slots, "removed": dropped,
               "kept": [s for s in slots if s not in dropped], "variant": _variant_name(ctx), "outputs": {}}
    finetune = ctx.records.get("finetune", {}).get("outputs", {})
    if finetune.get("loss_start") is not None:
        summary["finetune"] = {k: finetune.get(k) for k in ("loss_start", "loss_end", "loss_window", "loss_rose",
                                                            "steps", "samples_seen", "distill")}
    recovery = _kept_recovery(rank.get("recovery"), summary["kept"])
    if recovery:
        summary["recovery"] = recovery
    for stage, record in ctx.records.items():
        for key, value in record.get("outputs", {}).items():
            if isinstance(value, str) and Path(value).exists():
                summary["outputs"][f"{stage}.{key}"] = value
    bench_json = ctx.records.get("bench", {}).get("outputs", {}).get("bench_json")
    if bench_json and Path(bench_json).is_file():
        summary.update(_savings(bench_json, rank.get("accuracy_full", {})))
    return summary


def _kept_recovery(candidates: list[dict[str, Any]] | None, kept: list[str]) -> dict[str, Any] | None:
    """Masked vs recovered accuracy of the kept set, when ``rank.recover`` recovered it."""
    for entry in candidates or []:
        if entry["kept"] == kept:
            return {"masked": entry["accuracy_masked"], **entry["accuracy_recovered"]}
    return None


def _savings(bench_json: str, accuracy_full: dict[str, float]) -> dict[str, Any]:
    """Accuracy retained, parameters and latency saved by the final variant, from bench.json."""
    import json

    report = json.loads(Path(bench_json).read_text(encoding="utf-8"))
    models = report.get("models", [])
    if len(models) < 2:
        return {}
    full, variant = models[0], models[-1]
    out: dict[str, Any] = {}
    acc_full, acc_var = full.get("accuracy") or {}, variant.get("accuracy") or {}
    if acc_full and acc_var:
        out["accuracy_full"] = acc_full
        out["accuracy_variant"] = acc_var
        out["accuracy_retained"] = {c: (acc_var.get(c, 0.0) / v if v else None) for c, v in acc_full.items()}
    params_full, params_var = full.get("params", {}).get("total"), variant.get("params", {}).get("total")
    if params_full and params_var:
        out["params"] = {"full": params_full, "variant": params_var, "saved": 1 - params_var / params_full}
    comparison = variant.get("comparison") or {}
    out["latency"] = {"batch_size": comparison.get("batch_size"), "speedup": comparison.get("speedup", {}),
                      "vision": comparison.get("vision", {}), "end_to_end": comparison.get("end_to_end", {}),
                      "reasons": comparison.get("reasons", [])}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Human summary printed at the end of ``encslim run``."""
    lines = ["", f"run folder   {summary['run']}",
             f"kept         {', '.join(summary.get('kept', [])) or '-'}",
             f"removed      {', '.join(summary.get('removed', [])) or '-'}"]
    retained = summary.get("accuracy_retained")
    if retained:
        full, variant = summary["accuracy_full"], summary["accuracy_variant"]
        name = summary.get("variant") or "pruned"
        width = max(8, len(name) + 1)
        lines.append(f"{'accuracy':<18}{'full':>8}{name:>{width}}{'retained':>10}")
        for c, v in retained.items():
            lines.append(f"  {c:<16}{full[c]:>8.3f}{variant.get(c, 0.0):>{width}.3f}"
                         f"{(f'{v:.1%}' if v is not None else 'n/a'):>10}")
    recovery = summary.get("recovery")
    if recovery:
        names = list(recovery)
        lines.append("kept set before/after recovery (rank.recover; accuracy)")
        lines.append(f"  {'':<16}" + "".join(f"{n:>10}" for n in names))
        for c in recovery["masked"]:
            lines.append(f"  {c:<16}" + "".join(f"{recovery[n].get(c, 0.0):>10.3f}" for n in names))
    finetune = summary.get("finetune")
    if finetune:
        lines.append(f"finetune     {finetune['steps']} steps, {finetune['samples_seen']} samples seen; loss "
                     f"{finetune['loss_start']:.4f} -> {finetune['loss_end']:.4f} (mean of the first/last "
                     f"{finetune['loss_window']} steps)" + ("  WARNING: the loss rose" if finetune["loss_rose"] else ""))
        distill = finetune.get("distill")
        if distill and distill.get("kl_start") is not None:
            lines.append(f"distilled    from the full model (T={distill['temperature']:g}, weight {distill['weight']:g}); "
                         f"KL to it {distill['kl_start']:.4f} -> {distill['kl_end']:.4f}")
    params = summary.get("params")
    if params:
        lines.append(f"params       {params['full']:,} -> {params['variant']:,} ({params['saved']:.1%} saved)")
    latency = summary.get("latency") or {}
    speedup = latency.get("speedup") or {}
    if speedup:
        lines.append(f"speedup      (batch {latency.get('batch_size')}) "
                     + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items() if isinstance(v, (int, float))))
    vision = latency.get("vision") or {}
    if vision.get("predicted_saving") is not None:
        lines.append(f"vision time  saved {vision['measured_saving']:.1%} (FLOPs predict "
                     f"{vision['predicted_saving']:.1%}; ratio {vision['efficiency']:.2f})")
    for reason in latency.get("reasons", [])[:3]:
        lines.append(f"  note: {reason}")
    lines.append("outputs:")
    lines += [f"  {k:<18} {v}" for k, v in summary.get("outputs", {}).items()]
    lines.append(f"finished in {summary.get('seconds', 0):.1f} s")
    return "\n".join(lines)

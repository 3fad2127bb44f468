"""``encslim bench``: the full model against its variants, measured side by side.

:func:`run_bench` is the API behind the command: it builds the model list (the full model,
variant folders, run-time masked copies of the full model), measures latency per stage
interleaved, counts parameters and FLOPs, measures peak memory per model in a subprocess,
evaluates accuracy when data is given, compares every variant with the full model, and
writes ``bench.json``, ``bench.md`` and the plots into an output folder atomically.
"""

import contextlib
import logging
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_output_dir, check_output_path
from ..models.slots import SlotSet, split_names
from . import compare, costs, latency, memory, vllm_engine
from .config import BenchConfig, processor_settings
from .environment import attn_implementation, environment
from .report import write_report
from .timing import make_timer

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


BenchSettings = BenchConfig  # the earlier name of the stage's config (one class: BenchConfig)


def build_specs(full, variants=(), masks=(), mask_skip=False, names=None):
    """The models to benchmark: the full model first, then variant folders, then masked copies.

    Args:
        full: the full model folder.
        variants: variant model folders (e.g. pruned).
        masks: each ``"sam"``, ``"sam,clip"`` or ``["sam", "clip"]`` masks those slots of the full model at run
            time (:func:`encslim.models.slots.split_names`; checked by :func:`check_masks`).
        mask_skip: also add, per mask, a copy that skips the masked encoders instead of zeroing them.
        names: display names of ``full`` and the ``variants``, in order (default: folder names).

    Returns:
        ``list[ModelSpec]`` with unique names.

    Raises:
        ConfigError: nothing to compare with, or an empty mask.
    """
    if not variants and not masks:
        raise ConfigError("nothing to compare with the full model; pass VARIANT folders or --mask SLOT")
    taken = set()

    def unique(base):
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        return name

    if names is not None and len(names) != 1 + len(variants):
        raise ConfigError(f"{len(names)} name(s) for {1 + len(variants)} model(s); name the full model and each variant")
    labels = list(names) if names is not None else [Path(p).resolve().name for p in (full, *variants)]
    full_name = unique(labels[0])
    # a ModelFolder stays one (its encoder folders reach load_model); a path is kept as text
    full, variants = _as_model(full), [_as_model(v) for v in variants]
    specs = [latency.ModelSpec(full_name, full, role="full")]
    specs += [latency.ModelSpec(unique(label), v) for label, v in zip(labels[1:], variants)]
    for mask in masks:
        slots = split_names(mask)
        if not slots:
            raise ConfigError(f"--mask '{mask}' names no slot; pass slot names such as --mask sam")
        label = "+".join(slots)
        specs.append(latency.ModelSpec(unique(f"{full_name}[mask {label}]"), full, slots, "zero"))
        if mask_skip:
            specs.append(latency.ModelSpec(unique(f"{full_name}[skip {label}]"), full, slots, "removal"))
    return specs


def _as_model(path):
    from ..models.folder import ModelFolder

    return path if isinstance(path, ModelFolder) else str(path)


def check_masks(full, specs):
    """Check every masked slot against the full model's config before any weights load."""
    from ..models.loading import adapter_for

    adapter = adapter_for(full)
    config = adapter.read_config(full)
    slots = adapter.slot_names(config)
    for spec in specs:
        # the slot names: SlotSet's one check; then the mask rules (not every encoder, not a single-encoder model)
        SlotSet.from_masked(slots, spec.masked, what=f"--mask {','.join(spec.masked)} ({full}): ")
        try:  # zero-masking every encoder is refused too: that benchmarks no vision at all
            adapter.check_mask(config, spec.masked, "removal")
        except ConfigError as err:
            raise ConfigError(f"--mask {','.join(spec.masked)} ({full}): {err}") from None


def resolve_device(name):
    """``auto`` -> ``cuda`` when available, else ``cpu``; a missing GPU is a ``ConfigError``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device '{name}' is not a device; use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device cpu")
    return device


def describe(loaded, settings):
    """The static part of a model's report entry: slots, tokens, parameters, FLOPs, a consistency check."""
    import torch

    spec, config = loaded.spec, loaded.model.config
    batch = loaded.batch(1)
    with torch.inference_mode():
        generated = loaded.adapter.generate(loaded.model, None, batch, frozenset(spec.masked), spec.mask_mode,
                                            max_new_tokens=settings.max_new_tokens,
                                            min_new_tokens=settings.max_new_tokens)
    staged = latency.run_iteration(loaded, batch, _Null(), settings.max_new_tokens, end_to_end=False)
    return {
        "name": spec.name, "path": str(spec.path), "role": spec.role,
        "masked": list(spec.masked), "mask_mode": spec.mask_mode if spec.masked else None,
        "slots": loaded.slots, "encoders_run": loaded.encoders_run,
        "fusion_class": loaded.adapter.fusion_class(config).value,
        "image_tokens": loaded.image_tokens(), "prompt_tokens": loaded.prompt_tokens(),
        "attn_implementation": attn_implementation(loaded.model),
        "params": costs.count_params(loaded),
        "weight_bytes": costs.weight_bytes(loaded.model),
        "flops": costs.count_flops(loaded, settings.max_new_tokens),
        "prefill_flops_predicted": costs.predicted_prefill_flops(loaded),
        "token_budget": _token_budget(config),
        "stage_tokens_match_generate": bool(torch.equal(generated.cpu(), staged.cpu())),
        "latency": {}, "memory": None, "accuracy": None,
    }


def _token_budget(config):
    """The token budget a model runs under (its config.json field), or ``None`` (every token)."""
    from ..models.tokens import budget_of

    budget = budget_of(config)
    return None if budget is None else budget.to_dict()


class _Null:
    def stage(self, name):
        return contextlib.nullcontext()


def evaluate_accuracy(loaded, samples, settings):
    """Accuracy per category of one model through the evaluation harness."""
    from .evaluate import EvalSettings, evaluate

    spec = loaded.spec
    mask_set = frozenset(spec.masked)
    answering = EvalSettings(mask_mode=spec.mask_mode if spec.masked else "removal",
                             batch_size=settings.eval_batch_size, max_new_tokens=settings.eval_max_new_tokens)
    result = evaluate((loaded.model, loaded.processor, loaded.adapter), samples, mask_sets=[mask_set],
                      settings=answering, progress=None)  # a bar on a terminal only
    return result.accuracy(mask_set)


def run_benchmark(specs, settings, samples=None):
    """Measure every model of ``specs`` and compare the variants with the full model.

    Args:
        specs: from :func:`build_specs`; the first is the full model.
        settings: :class:`~encslim.bench.config.BenchConfig`.
        samples: ``list[Sample]`` for accuracy, or ``None``.

    Returns:
        The report dict (see :mod:`encslim.bench.report` for its fields).
    """
    device = resolve_device(settings.device)
    loaded = [latency.load(spec, device=device, dtype=settings.dtype) for spec in specs]
    for m in loaded:  # processor settings (max_tiles) through each model's adapter
        m.adapter.configure_processor(m.processor, **processor_settings(settings))
    entries = {m.name: describe(m, settings) for m in loaded}
    loop = latency.LoopSettings(settings.max_new_tokens, settings.warmup, settings.min_iters,
                                settings.min_seconds, settings.max_iters)
    order = {}
    for batch_size in settings.batch_sizes:
        measured = latency.run_interleaved(loaded, batch_size, loop, make_timer(device))
        order[str(batch_size)] = measured.order
        for name, its in measured.iterations.items():
            entries[name]["latency"][str(batch_size)] = latency.summarize_iterations(
                its, batch_size, settings.max_new_tokens)
    for m in loaded if samples else ():
        entries[m.name]["accuracy"] = evaluate_accuracy(m, samples, settings)
    if settings.memory:
        measured = memory.measure_memories(specs, settings.batch_sizes, settings.max_new_tokens, device, settings.dtype)
        for name, result in measured.items():
            entries[name]["memory"] = result
    models = [entries[m.name] for m in loaded]
    m = None  # the accuracy loop's last model is not kept while vLLM runs
    engine = _measure_in_vllm(loaded, specs, settings, samples, models) if settings.engine == "vllm" else None
    comparisons = [compare.compare(models[0], v, b, device.type) for v in models[1:] for b in settings.batch_sizes]
    for variant in models[1:]:  # a per-model shortcut: the comparison at the first batch size
        variant["comparison"] = next(c for c in comparisons if c["model"] == variant["name"])
    models[0]["comparison"] = None
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(device, settings.dtype, [e["attn_implementation"] for e in models]),
        "engines": {"eager": {"engine": "eager", "api": "transformers, per stage"},
                    **({"vllm": engine} if engine else {})},
        "settings": {**settings.model_dump(), "device": str(device),
                     "order": "interleaved", "bench_question": latency.BENCH_QUESTION,
                     "accuracy_samples": len(samples) if samples else 0},
        "full": models[0]["name"],
        "models": models,
        "order": order,
        "comparisons": comparisons,
    }


def _measure_in_vllm(loaded, specs, settings, samples, models):
    """``--engine vllm``: each model's requests built by its eager processor, the eager models freed (``loaded``
    emptied), then every folder measured in vLLM; each entry of ``models`` gets its ``vllm`` figures (``None``
    where not measured). Returns the engine's summary for ``report["engines"]["vllm"]``."""
    requests = {m.name: vllm_engine.requests_of(m, samples) for m in loaded}
    loaded.clear()
    engine, figures = vllm_engine.measure_models(specs, requests, settings, samples)
    for model in models:
        model["vllm"] = figures.get(model["name"])
    return engine


def run_bench(full, variants=(), out=None, config=None, data=(), overwrite=False, names=None, **overrides):
    """Benchmark ``full`` against ``variants`` (and masked copies) and write the report to ``out``.

    Args:
        full: full model folder.
        variants: variant model folders.
        out: output folder (written atomically; must not exist unless ``overwrite``).
        config: a :class:`~encslim.bench.config.BenchConfig` or a dict of its fields (defaults if ``None``).
        data: benchmark files for accuracy (read with ``encslim.data.load.load_samples``); used when
            ``config.accuracy``.
        overwrite: replace an existing ``out``.
        names: display names of ``full`` and the ``variants`` (see :func:`build_specs`).
        **overrides: ``BenchConfig`` fields (``masks=[["sam"]]``; ``settings=`` is ``config``).

    Returns:
        The report dict.

    Raises:
        ConfigError, ModelLoadError, DataError, OutputExistsError: bad input.
    """
    settings = BenchConfig.build(overrides.pop("settings", config), **_masks_as_lists(overrides))
    if settings.engine == "vllm":
        vllm_engine.vllm_version()  # imported before any work: not installed, or broken (the message names the fix)
    from ..models.loading import open_folder

    if settings.threads is not None:
        from ..runtime import configure_threads

        configure_threads(settings.threads)
    # every folder opened (config, family, each shard checked) before any work; a ModelFolder passes through
    full, variants = open_folder(full), [open_folder(v) for v in variants]
    specs = build_specs(full, variants, settings.masks, settings.mask_skip, names)
    inputs = [full, *variants]
    check_output_path(out, overwrite, inputs)
    check_masks(full, specs)
    if settings.engine == "vllm":
        vllm_engine.check_specs(specs)
    samples = None
    if data and settings.accuracy:
        from ..data.load import load_samples

        samples = load_samples([str(d) for d in data])
        samples = samples[: settings.limit] if settings.limit else samples
    report = run_benchmark(specs, settings, samples)
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        report["outputs"] = write_report(report, tmp)
    return report


def _masks_as_lists(overrides):
    """``masks=["sam", "sam,clip"]`` (the earlier spelling) -> ``[["sam"], ["sam", "clip"]]``."""
    masks = overrides.get("masks")
    if masks and any(isinstance(m, str) for m in masks):
        overrides = {**overrides, "masks": [list(split_names(m)) if isinstance(m, str) else m for m in masks]}
    return overrides

"""``encslim eval``: accuracy of a model on benchmark files, under encoder masks."""

import json
import os
from pathlib import Path

import click

from ..options import click_options, config_from_options
from .config import EvalConfig

EVAL_JSON = "eval.json"
RECORDS = "records.jsonl"


def parse_mask_sets(model, values):
    """``--mask`` read once against MODEL's slots, before any weights load: ``[full, {clip}, {clip, siglip}]``.

    Args:
        model: the model folder (a path or ``ModelFolder``); only its config is read.
        values: one spelling per ``--mask`` (``"clip,siglip"``, ``"clip+siglip"``, ``["clip", "siglip"]``).

    Returns:
        ``list[SlotSet]``, the full model first, repeats dropped.

    Raises:
        ConfigError: an unknown slot (``--mask sam: unknown slot(s) sam; this model's slots are ...``).
    """
    from ..models.loading import adapter_for
    from ..models.slots import mask_sets

    adapter = adapter_for(model)
    return mask_sets(adapter.slot_names(adapter.read_config(model)), values)


def prepare_output(out, overwrite, inputs):
    """Check the output folder before anything is computed.

    A folder holding ``records.jsonl`` from an earlier evaluation is resumed (``--overwrite``
    discards its records instead); another existing, non-empty folder is refused.

    Returns:
        pathlib.Path of the folder (not yet created).
    """
    from ..errors import OutputExistsError
    from ..files import check_output_path

    out = check_output_path(out, overwrite=True, inputs=inputs)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORDS).exists() and not overwrite:
        raise OutputExistsError(f"{out} exists and holds no earlier evaluation; pass --overwrite or choose another --out")
    return out


def write_json_atomic(path, data):
    """Write JSON to ``path`` through a temporary file and one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _device(name):
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


@click.command("eval")
@click.argument("model")
@click.option("--data", "data", multiple=True, required=True,
              help="Benchmark file (.tsv VLMEvalKit, .jsonl, .json LLaVA); repeat for several.")
@click.option("--out", required=True, help="Output folder: eval.json and records.jsonl (an earlier run there is resumed).")
@click_options(EvalConfig)
@click.option("--overwrite", is_flag=True, help="Discard earlier records in --out and start afresh.")
def eval_cmd(model, data, out, overwrite, encoders=None, **options):
    """Evaluate MODEL on benchmark files under encoder masks; print a per-category table.

    Encoders run once per sample whatever the number of --mask sets (feature cache). Under
    torchrun the samples are split across the processes. Every setting is a field of EvalConfig.
    """
    from ..models.loading import load_model, open_folder
    from . import distributed
    from ..data.load import load_samples
    from .config import processor_settings
    from .evaluate import EvalSettings, evaluate, normalize_mask_sets
    from .features import mean_features

    config, _ = config_from_options(EvalConfig, options)
    mask_mode, batch_size, dtype = config.mask_mode, config.batch_size, config.dtype
    max_new_tokens = config.max_new_tokens
    model = open_folder(model, encoders)  # config, family and every shard checked before any work
    requested = parse_mask_sets(model, config.masks)  # SlotSets, checked once against the model's slots
    # the harness keys scores and records by the masked frozenset (a SlotSet's ``masked`` view); the mode's
    # rules (removal keeps a slot) checked here too, before any weights load
    mask_sets = normalize_mask_sets(requested[0].slots, [s.masked for s in requested], mask_mode)
    out = prepare_output(out, overwrite, [model, *data])
    samples = load_samples(list(data), skip_bad=config.skip_bad)
    rank, _ = distributed.init_from_env()
    from ..runtime import configure_threads
    from .environment import environment

    configure_threads()  # the free cores (ENCSLIM_THREADS overrides)
    net, processor, adapter = load_model(model, device=_device(config.device), dtype=dtype)
    adapter.configure_processor(processor, **processor_settings(config))  # max_tiles, through the adapter
    slots = adapter.slot_names(net.config)
    mask_values = mean_features(net, processor, adapter, samples, batch_size) if mask_mode == "mean" else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for old in [out / RECORDS, *out.glob(f"{RECORDS}.rank*")]:
                old.unlink(missing_ok=True)
    distributed.barrier()
    settings = EvalSettings(mask_mode=mask_mode, mask_values=mask_values, max_new_tokens=max_new_tokens,
                            mcq_mode=config.mcq, batch_size=batch_size)
    result = evaluate((net, processor, adapter), samples, mask_sets=mask_sets, settings=settings,
                      records_path=out / RECORDS, progress=True)
    if rank != 0:
        return
    report = {
        "schema_version": 1, "model": str(Path(model).resolve()), "data": [str(Path(d).resolve()) for d in data],
        "slots": slots, "fusion_class": adapter.fusion_class(net.config),
        "settings": {"mask_mode": mask_mode, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                     "mcq_mode": config.mcq, "dtype": dtype, **processor_settings(config)},
        "skipped_rows": samples.skipped, "skipped": samples.skipped_rows, **result.to_dict(),
        "environment": environment(net.device, dtype),
    }
    write_json_atomic(out / EVAL_JSON, report)
    click.echo(result.table())
    if samples.skipped:
        click.echo(f"skipped {samples.skipped} bad row(s); see {out / EVAL_JSON}")
    click.echo(f"wrote {out / EVAL_JSON} and {out / RECORDS}")

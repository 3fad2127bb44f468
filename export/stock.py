"""Stock formats a family reaches by removing slots: ``encslim export MODEL --format F`` for a family's ``F``.

A family declares the format in its record (``Family.exports``) and implements
:class:`~encslim.models.capabilities.StockConvertible`; its adapter's ``export_targets(config, kept)``
names the format for the kept slot sets that make one. Accepted inputs:

* a model whose slots already allow it (e.g. a folder ``encslim prune`` already converted):
  re-written and checked with the stock classes;
* a model that allows it once some slots are gone: those slots are removed first with the
  adapter's exact removal plan (weights, config and processor files; applied by the one plan
  executor, :mod:`encslim.models.executor`) into a scratch folder, then written; the stock folder's logits are compared with the **masked
  source's** (the removed slots masked) on the same images and prompts. The family's
  ``stock_notes`` explain, for the card, how far the stock processor's pixels are from the source
  processor's on the same raw images (:func:`processor_gap`).
"""

import logging
import math
import tempfile
from itertools import combinations
from pathlib import Path

from ..errors import ConfigError, VerificationError
from ..files import check_output_path
from ..models.capabilities import supports_stock_export
from ..models.plan import check_plan
from ..models.registry import GENERIC_EXPORTS, families, get_adapter
from ..provenance import VERIFY_TOLERANCE
from .common import (Source, load_source, max_abs_diff, probe_images, probe_prompts, read_source,
                     refuse_token_budget, require_target)
from .finish import CardInputs, FormatInfo, LoadedSource
from .hf_folder import DEFAULT_SHARD, write_verified_folder

logger = logging.getLogger(__name__)

ATOL = VERIFY_TOLERANCE
# the stage the in-memory removal is recorded as: the same plan `encslim prune` applies
REMOVAL_STAGE = "prune"


def stock_format(fmt):
    """The :class:`~encslim.models.capabilities.StockExport` of ``fmt``, from the family that declares it.

    Raises:
        ConfigError: no registered family reaches ``fmt`` by removing slots (the message lists those that do).
    """
    offered = {}
    for family in families().values():
        for name in family.exports:
            for model_type in family.model_types:
                adapter = get_adapter(model_type)
                spec = adapter.stock_export(name) if supports_stock_export(adapter) else None
                if spec is not None:
                    offered.setdefault(name, spec)
    if fmt not in offered:
        raise ConfigError(f"export format '{fmt}' is not a stock format any family reaches by removing slots; "
                          f"stock formats: {', '.join(offered) or 'none'} (generic: {', '.join(GENERIC_EXPORTS)})")
    return offered[fmt]


def export_stock(model_dir, out, *, fmt, overwrite=False, max_shard_size=DEFAULT_SHARD, ranking=None, bench=None,
                 atol=ATOL):
    """Write a folder of stock format ``fmt`` (its family's stock transformers classes) from ``model_dir``.

    Args:
        model_dir: a model whose adapter allows ``fmt`` with all its slots or with some removed.
        out: output folder (written atomically).
        fmt: the stock format (a family's ``Family.exports`` entry with a ``StockExport``).
        overwrite, max_shard_size, ranking, bench: as for :func:`encslim.export.hf_folder.export_hf`.
        atol: largest allowed logit difference against the source (with the removed slots masked).

    Returns:
        The manifest dict.

    Raises:
        ConfigError: ``fmt`` is no stock format, or no kept slot set of the model allows it.
        VerificationError: logits differ by more than ``atol``.
    """
    spec = stock_format(fmt)
    check_output_path(out, overwrite, inputs=[model_dir])
    card = CardInputs(ranking, bench)
    card.check()
    source = read_source(model_dir)
    refuse_token_budget(source, fmt, spec.title)
    kept = target_slots(source, fmt)
    if kept is None:
        require_target(source, fmt, spec.needs, spec.title)  # raises: names why and what it allows
        raise ConfigError(f"--format {fmt} needs {spec.needs}; no slot set of {model_dir} allows it")
    if kept == source.slot_names:
        model, processor = load_source(source, "auto")
        return write_verified_folder(LoadedSource(source, model, processor), out, FormatInfo(fmt, title=spec.title),
                                     overwrite=overwrite, max_shard_size=max_shard_size, card=card, atol=atol)
    drop = [s for s in source.slot_names if s not in kept]
    return _remove_then_export(source, spec, drop, out, overwrite, max_shard_size, card, atol)


def target_slots(source, fmt):
    """The largest kept slot set (in slot order) whose export targets include ``fmt``; ``None`` if none does."""
    slots = source.slot_names
    for size in range(len(slots), 0, -1):
        for kept in combinations(slots, size):
            if fmt in source.adapter.export_targets(source.model_config, list(kept)):
                return list(kept)
    return None


def _remove_then_export(source, spec, drop, out, overwrite, max_shard_size, card, atol):
    plan = source.adapter.removal_plan(source.model_config, drop)
    if not plan.exact:
        raise ConfigError(f"removing {', '.join(plan.drop)} from {source.path} is not exact; prune it (encslim prune), "
                          "fine-tune, then export the pruned folder")
    scratch_parent = Path(out).resolve().parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.remove-", dir=scratch_parent) as scratch:
        removed_dir = Path(scratch) / "removed"
        write_removed(source.path, removed_dir, plan)
        removed = read_source(removed_dir)
        model, processor = load_source(removed, "auto")
        batch, logits, stock_batch = _masked_reference(source, plan.drop, removed.adapter, processor)
        gap = processor_gap(model, batch, logits, stock_batch)
        verification = _removal_verification(removed.adapter, model, batch, logits, plan, gap)
        # the card and manifest name the source as the source and carry the removal record
        record = {"stage": REMOVAL_STAGE, "source": {"path": str(Path(source.path).resolve())},
                  "removed_slots": list(plan.drop), "kept_slots": plan.kept,
                  "plan": plan.to_dict(), "ranking": None, "verification": verification}
        origin = Source(path=source.path, config=removed.config, adapter=removed.adapter, manifest=record,
                        model_config=removed.model_config)
        dropped = ", ".join(f"'{s}'" for s in plan.drop)
        family_notes = source.adapter.stock_notes(spec.format, plan.drop, gap) if supports_stock_export(
            source.adapter) else []
        fmt = FormatInfo(spec.format, title=spec.title, details={"processor_gap": gap}, notes=(
            f"{dropped} was removed from the {source.model_type} source with the removal plan `encslim prune` "
            f"applies; the export check compares this folder's logits with the source's with {dropped} masked, "
            "on the same pixels.", *family_notes))
        # the origin's path is the source's: the output must not overlap it
        return write_verified_folder(LoadedSource(origin, model, processor), out, fmt, overwrite=overwrite,
                                     max_shard_size=max_shard_size, card=card, atol=atol, reference=(batch, logits))


def write_removed(source_dir, out_dir, plan):
    """Write the model folder ``plan`` makes of ``source_dir`` into ``out_dir`` (created here).

    Through the one plan executor (:func:`encslim.models.executor.execute`, streaming over the
    shards as ``encslim prune`` does), with its side-file policy: ``config.json`` and the processor
    files patched, the tokenizer/processor/generation files copied, the rest left out.

    Raises:
        PlanError: the checkpoint or files do not fit the plan.
    """
    from ..models.executor import check_side_files, execute
    from ..models.folder import ModelFolder

    folder = ModelFolder.open(source_dir)
    check_plan(plan, folder.weights.shapes())
    check_side_files(folder, plan)
    Path(out_dir).mkdir(parents=True)
    execute(plan, folder, out_dir, streaming=True)


def _masked_reference(source, drop, stock_adapter, stock_processor):
    """``(batch, logits of the source with drop masked, the stock processor's batch)`` on probe inputs.

    The batch carries the source processor's pixels: a source processor may resize differently from
    the stock one (e.g. in two steps where the stock one resizes once), so the two can give slightly
    different pixels for the same raw image (see :func:`processor_gap`). The model equivalence is
    checked on identical pixels.
    """
    import torch

    model, processor = load_source(source, "auto")
    images, prompts = probe_images(2), probe_prompts(source.adapter, processor, 2)
    masked = frozenset(drop)
    batch = source.adapter.prepare_batch(processor, images, prompts, masked=masked)
    stock_batch = stock_adapter.prepare_batch(stock_processor, images, prompts)
    if not torch.equal(batch["input_ids"], stock_batch["input_ids"]):
        raise ConfigError(f"the {stock_adapter.model_type} processor tokenizes prompts differently from the "
                          f"{source.model_type} one")
    with torch.no_grad():
        features = source.adapter.encode(model, batch)
        logits = source.adapter.decode(model, features, batch, masked=masked).logits
    return dict(batch), logits, stock_batch


def _removal_verification(adapter, model, batch, reference, plan, gap):
    """The removal's record (as ``encslim prune`` writes it): the removed model against the masked source.

    Raises:
        VerificationError: an exact plan whose logits differ by more than ``VERIFY_TOLERANCE``.
    """
    import torch

    with torch.no_grad():
        logits = adapter.decode(model, adapter.encode(model, batch), batch).logits
    keep = batch["attention_mask"].bool()
    diff = max_abs_diff(reference, logits, keep)
    passed = math.isfinite(diff) and diff <= VERIFY_TOLERANCE
    if not passed:
        raise VerificationError(f"the model with {', '.join(plan.drop)} removed differs from the masked source by "
                                f"{diff:.3g} > {VERIFY_TOLERANCE:g} although the plan is exact; nothing was written "
                                "(this is a bug: report it)")
    return {"samples": int(batch["input_ids"].shape[0]), "inputs": "probe", "max_abs_diff": diff,
            "max_abs_logit": float(reference[keep].abs().max()), "tolerance": VERIFY_TOLERANCE, "exact": plan.exact,
            "passed": passed, "pixel_max_abs_diff": gap["pixel_max_abs_diff"], "recommendation": None,
            "note": "compared on the source processor's pixels (the stock processor's differ slightly)"}


def processor_gap(model, reference_batch, reference_logits, stock_batch):
    """How far the stock processor's pixels (and the logits they give) are from the source processor's."""
    import torch

    with torch.no_grad():
        logits = model(**stock_batch).logits
    return {"pixel_max_abs_diff": max_abs_diff(reference_batch["pixel_values"], stock_batch["pixel_values"]),
            "logits_max_abs_diff": max_abs_diff(reference_logits, logits)}


__all__ = ["export_stock", "stock_format", "target_slots", "write_removed"]

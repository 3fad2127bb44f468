"""``--format deepseek_vl``: a stock transformers ``DeepseekVLForConditionalGeneration`` folder.

Whether a model can become one is its adapter's call: ``export_targets(config, kept)`` names
``deepseek_vl`` for the kept slot sets that make one. Accepted inputs:

* a model whose slots already allow it (a ``deepseek_vl`` folder, e.g. a hybrid whose ``sam`` slot
  ``encslim prune`` removed): re-written and checked with the stock class;
* a model that allows it once some slots are gone (a ``deepseek_vl_hybrid``: ``sam``): those slots
  are removed first with the adapter's removal plan (the exact fold of DESIGN §3, applied in memory
  by :func:`encslim.models.plan.apply_plan`) into a scratch folder, then written; the stock
  folder's logits are compared with the **masked source's** (the removed slots masked) on the same
  images and prompts.
"""

import json
import logging
import math
import shutil
import tempfile
from itertools import combinations
from pathlib import Path

from ..errors import ConfigError, VerificationError
from ..files import CONFIG_NAME, INDEX_NAME, MANIFEST_NAME, WEIGHTS_NAME, check_output_path
from ..models.plan import apply_json_ops, apply_plan, check_plan
from ..provenance import VERIFY_TOLERANCE
from .common import Source, load_source, max_abs_diff, probe_images, probe_prompts, read_source, require_target
from .finish import check_card_inputs
from .hf_folder import DEFAULT_SHARD, write_verified_folder

logger = logging.getLogger(__name__)

ATOL = VERIFY_TOLERANCE
FORMAT = "deepseek_vl"
NEEDS = "a deepseek_vl_hybrid model (its 'sam' slot is removed) or a deepseek_vl one"
# the stage the in-memory removal is recorded as: the same plan `encslim prune` applies
REMOVAL_STAGE = "prune"


def export_deepseek_vl(model_dir, out, *, overwrite=False, max_shard_size=DEFAULT_SHARD, ranking=None, bench=None,
                       atol=ATOL):
    """Write a stock ``deepseek_vl`` folder from a ``deepseek_vl`` or ``deepseek_vl_hybrid`` model.

    Args:
        model_dir: a model whose adapter allows ``deepseek_vl`` with all its slots (a ``deepseek_vl``
            folder) or with some removed (a ``deepseek_vl_hybrid``: its ``sam`` slot is removed).
        out: output folder (written atomically).
        overwrite, max_shard_size, ranking, bench: as for :func:`encslim.export.hf_folder.export_hf`.
        atol: largest allowed logit difference against the source (with the removed slots masked).

    Returns:
        The manifest dict.

    Raises:
        ConfigError: no kept slot set of the model allows the format. VerificationError: logits
        differ by more than ``atol``.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    kept = target_slots(source)
    if kept is None:
        require_target(source, FORMAT, NEEDS, "stock DeepSeek-VL")  # raises: names why and what it allows
        raise ConfigError(f"--format {FORMAT} needs {NEEDS}; no slot set of {model_dir} allows it")
    if kept == source.slot_names:
        model, processor = load_source(source, "auto")
        return write_verified_folder(source, model, processor, out, FORMAT, overwrite=overwrite,
                                     max_shard_size=max_shard_size, ranking=ranking, bench=bench, atol=atol)
    drop = [s for s in source.slot_names if s not in kept]
    return _remove_then_export(source, drop, out, overwrite, max_shard_size, ranking, bench, atol)


def target_slots(source, fmt=FORMAT):
    """The largest kept slot set (in slot order) whose export targets include ``fmt``; ``None`` if none does."""
    slots = source.slot_names
    for size in range(len(slots), 0, -1):
        for kept in combinations(slots, size):
            if fmt in source.adapter.export_targets(source.model_config, list(kept)):
                return list(kept)
    return None


def _remove_then_export(source, drop, out, overwrite, max_shard_size, ranking, bench, atol):
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
        return write_verified_folder(
            origin, model, processor, out, FORMAT, overwrite=overwrite, max_shard_size=max_shard_size,
            ranking=ranking, bench=bench, atol=atol, reference=(batch, logits), inputs=[source.path],
            details={"processor_gap": gap}, notes=[
                f"{dropped} was removed from the {source.model_type} source with the removal plan `encslim prune` "
                f"applies; the export check compares this folder's logits with the source's with {dropped} masked, "
                "on the same pixels.",
                "transformers' hybrid image processor resizes an image to the SAM size and then to the SigLIP "
                "size; the stock DeepseekVLImageProcessor resizes once. From the same raw probe images their pixels "
                f"differ by up to {gap['pixel_max_abs_diff']:.3g} and the logits by up to "
                f"{gap['logits_max_abs_diff']:.3g}. For the hybrid's exact preprocessing, feed pixel_values "
                "computed by the hybrid's processor.",
            ])


def write_removed(source_dir, out_dir, plan):
    """Write the model folder ``plan`` makes of ``source_dir`` into ``out_dir``, in memory.

    Weights: the source's safetensors files through :func:`~encslim.models.plan.apply_plan`, saved as
    one ``model.safetensors``. ``config.json`` and the processor files: patched with the plan's JSON
    operations. Every other file (tokenizer, generation config...) is copied.

    Raises:
        PlanError: the checkpoint or files do not fit the plan.
    """
    from safetensors.torch import load_file, save_file

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True)
    state = {}
    for path in sorted(source_dir.glob("*.safetensors")):
        state.update(load_file(str(path)))
    check_plan(plan, {k: tuple(v.shape) for k, v in state.items()})
    save_file(apply_plan(state, plan), str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    del state
    patched = {CONFIG_NAME: plan.config_patch, **plan.processor_patch}
    for name, ops in patched.items():
        if (source_dir / name).is_file():
            data = json.loads((source_dir / name).read_text(encoding="utf-8"))
            text = json.dumps(apply_json_ops(data, ops), indent=2, sort_keys=True) + "\n"
            (out_dir / name).write_text(text, encoding="utf-8")
    skip = {INDEX_NAME, MANIFEST_NAME, *plan.drop_files, *patched}
    for path in sorted(source_dir.iterdir()):
        if path.name in skip or path.name.startswith(".") or path.name.endswith(".safetensors"):
            continue
        if path.is_dir():
            shutil.copytree(path, out_dir / path.name)
        else:
            shutil.copy2(path, out_dir / path.name)


def _masked_reference(source, drop, stock_adapter, stock_processor):
    """``(batch, logits of the source with drop masked, the stock processor's batch)`` on probe inputs.

    The batch carries the source processor's pixels: transformers' hybrid image processor resizes
    to the SAM size first and then to the SigLIP size, the stock one resizes once, so the two
    processors give slightly different pixels for the same raw image (see :func:`processor_gap`).
    The model equivalence is checked on identical pixels.
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
    """How far the stock processor's pixels (and the logits they give) are from the hybrid processor's."""
    import torch

    with torch.no_grad():
        logits = model(**stock_batch).logits
    return {"pixel_max_abs_diff": max_abs_diff(reference_batch["pixel_values"], stock_batch["pixel_values"]),
            "logits_max_abs_diff": max_abs_diff(reference_logits, logits)}


__all__ = ["export_deepseek_vl", "target_slots", "write_removed"]

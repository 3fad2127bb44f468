"""``--format deepseek_vl``: a stock transformers ``DeepseekVLForConditionalGeneration`` folder.

Accepted inputs:

* a ``deepseek_vl`` folder (a hybrid whose ``sam`` slot ``encslim prune`` removed): re-written
  and checked with the stock class;
* a ``deepseek_vl_hybrid`` folder: ``sam`` is removed first (:func:`encslim.prune.surgery.prune`,
  the exact fold of DESIGN §3) into a scratch folder, then written; the stock folder's logits are
  compared with the **sam-masked hybrid's** on the same images and prompts.
"""

import logging
import tempfile
from pathlib import Path

from ..errors import ConfigError
from ..files import check_output_path
from .common import Source, load_source, probe_images, probe_prompts, read_source
from .finish import check_card_inputs
from .hf_folder import DEFAULT_SHARD, write_verified_folder

logger = logging.getLogger(__name__)

ATOL = 1e-4
HYBRID, STOCK = "deepseek_vl_hybrid", "deepseek_vl"
REMOVED_SLOT = "sam"


def export_deepseek_vl(model_dir, out, *, overwrite=False, max_shard_size=DEFAULT_SHARD, ranking=None, bench=None,
                       atol=ATOL):
    """Write a stock ``deepseek_vl`` folder from a ``deepseek_vl`` or ``deepseek_vl_hybrid`` model.

    Args:
        model_dir: a ``deepseek_vl`` folder, or a ``deepseek_vl_hybrid`` one (its ``sam`` slot is removed).
        out: output folder (written atomically).
        overwrite, max_shard_size, ranking, bench: as for :func:`encslim.export.hf_folder.export_hf`.
        atol: largest allowed logit difference against the source (the sam-masked hybrid).

    Returns:
        The manifest dict.

    Raises:
        ConfigError: the model is neither family. VerificationError: logits differ by more than ``atol``.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    if source.model_type == STOCK:
        model, processor = load_source(source, "auto")
        return write_verified_folder(source, model, processor, out, STOCK, overwrite=overwrite,
                                     max_shard_size=max_shard_size, ranking=ranking, bench=bench, atol=atol)
    if source.model_type != HYBRID:
        raise ConfigError(f"--format deepseek_vl needs a deepseek_vl_hybrid model (its '{REMOVED_SLOT}' slot is "
                          f"removed) or a deepseek_vl one; {model_dir} holds model_type '{source.model_type}'")
    config = _hybrid_config(source)
    kept = [s for s in source.adapter.slot_names(config) if s != REMOVED_SLOT]
    if STOCK not in source.adapter.export_targets(config, kept):
        raise ConfigError(f"{model_dir}: removing '{REMOVED_SLOT}' does not give a stock deepseek_vl model")
    return _remove_then_export(source, out, overwrite, max_shard_size, ranking, bench, atol)


def _hybrid_config(source):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path)


def _remove_then_export(source, out, overwrite, max_shard_size, ranking, bench, atol):
    from ..prune.surgery import prune

    scratch_parent = Path(out).resolve().parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.prune-", dir=scratch_parent) as scratch:
        pruned_dir = Path(scratch) / "pruned"
        manifest = prune(source.path, [REMOVED_SLOT], pruned_dir, verify=True)
        pruned = read_source(pruned_dir)
        model, processor = load_source(pruned, "auto")
        batch, logits, stock_batch = _masked_hybrid_reference(source, pruned.adapter, processor)
        gap = processor_gap(model, batch, logits, stock_batch)
        # the card and manifest name the hybrid as the source and carry the removal record
        origin = Source(path=source.path, config=pruned.config, adapter=pruned.adapter, manifest=manifest)
        return write_verified_folder(
            origin, model, processor, out, STOCK, overwrite=overwrite, max_shard_size=max_shard_size,
            ranking=ranking, bench=bench, atol=atol, reference=(batch, logits), inputs=[source.path],
            details={"processor_gap": gap}, notes=[
                f"'{REMOVED_SLOT}' was removed from the deepseek_vl_hybrid source by `encslim prune`; the export "
                "check compares this folder's logits with the hybrid's with sam masked, on the same pixels.",
                "transformers' hybrid image processor resizes an image to the SAM size and then to the SigLIP "
                "size; the stock DeepseekVLImageProcessor resizes once. From the same raw probe images their pixels "
                f"differ by up to {gap['pixel_max_abs_diff']:.3g} and the logits by up to "
                f"{gap['logits_max_abs_diff']:.3g}. For the hybrid's exact preprocessing, feed pixel_values "
                "computed by the hybrid's processor.",
            ])


def _masked_hybrid_reference(hybrid, stock_adapter, stock_processor):
    """``(batch, logits of the hybrid with sam masked)`` on probe images and prompts.

    The batch carries the hybrid processor's low-resolution pixels: transformers' hybrid image
    processor resizes to the SAM size first and then to the SigLIP size, the stock one resizes
    once, so the two processors give slightly different pixels for the same raw image (see
    :func:`processor_gap`). The model equivalence is checked on identical pixels.
    """
    import torch

    model, processor = load_source(hybrid, "auto")
    images, prompts = probe_images(2), probe_prompts(processor, 2)
    masked = frozenset({REMOVED_SLOT})
    batch = hybrid.adapter.prepare_batch(processor, images, prompts, masked=masked)
    stock_batch = stock_adapter.prepare_batch(stock_processor, images, prompts)
    if not torch.equal(batch["input_ids"], stock_batch["input_ids"]):
        raise ConfigError("the pruned deepseek_vl processor tokenizes prompts differently from the hybrid's")
    with torch.no_grad():
        features = hybrid.adapter.encode(model, batch)
        logits = hybrid.adapter.decode(model, features, batch, masked=masked).logits
    return dict(batch), logits, stock_batch


def processor_gap(model, reference_batch, reference_logits, stock_batch):
    """How far the stock processor's pixels (and the logits they give) are from the hybrid processor's."""
    import torch

    from .common import max_abs_diff

    with torch.no_grad():
        logits = model(**stock_batch).logits
    return {"pixel_max_abs_diff": max_abs_diff(reference_batch["pixel_values"], stock_batch["pixel_values"]),
            "logits_max_abs_diff": max_abs_diff(reference_logits, logits)}


__all__ = ["export_deepseek_vl"]

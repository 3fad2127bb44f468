"""``--format hf``: a self-describing transformers folder of the model as it is.

Sharded safetensors with their index, ``config.json``, ``generation_config.json``, the processor
and tokenizer files, the model card and the manifest. The written folder is loaded back and its
logits compared with the source's on probe inputs before the folder is published.
"""

import logging

from ..files import atomic_output_dir, check_output_path
from ..models.registry import family_of
from .compat import carry_slow_tokenizer, write_legacy_rope_keys
from .common import (check_logits, count_parameters, fail_unless_matched, load_source, max_abs_diff, probe_batch,
                     probe_logits, read_source)
from .finish import check_card_inputs, finish_folder, slot_rows

logger = logging.getLogger(__name__)

DEFAULT_SHARD = "5GB"
# the folder is the same model saved again: stricter than provenance.VERIFY_TOLERANCE (the round trip is exact)
ATOL = 1e-5


def export_hf(model_dir, out, *, overwrite=False, max_shard_size=DEFAULT_SHARD, dtype="auto",
              ranking=None, bench=None, atol=ATOL):
    """Export a model folder as a transformers folder with card and manifest.

    Args:
        model_dir: a model folder of any supported family.
        out: output folder (written atomically).
        overwrite: replace an existing ``out``.
        max_shard_size: largest safetensors shard (e.g. ``"5GB"``, ``"200KB"``).
        dtype: ``auto`` keeps the stored dtype; ``float32``/``bfloat16``/``float16`` converts.
        ranking: a ranking folder or ranking.json for the card (default: the manifest's).
        bench: a folder with bench.json for the card.
        atol: largest allowed logit difference between the written folder and the source.

    Returns:
        The manifest dict.

    Raises:
        ModelLoadError: the source does not load. VerificationError: the written folder does not
        reproduce the source. OutputExistsError: ``out`` exists and ``overwrite`` is false.
    """
    check_output_path(out, overwrite, inputs=[model_dir])
    check_card_inputs(ranking, bench)
    source = read_source(model_dir)
    model, processor = load_source(source, dtype)
    family = family_of(source.model_type)
    title = f"{family.description if family else source.model_type}, as a transformers folder"
    return write_verified_folder(source, model, processor, out, "hf", overwrite=overwrite,
                                 max_shard_size=max_shard_size, ranking=ranking, bench=bench, atol=atol,
                                 notes=source.adapter.export_notes(model.config), format_title=title,
                                 same_tokenizer=True)


def write_verified_folder(source, model, processor, out, fmt, *, overwrite=False, max_shard_size=DEFAULT_SHARD,
                          ranking=None, bench=None, atol=ATOL, reference=None, inputs=None, notes=(), details=None,
                          format_title=None, same_tokenizer=False):
    """Save ``model`` and ``processor`` to ``out``, reload the folder, compare logits, add card and manifest.

    Args:
        source: the :class:`~encslim.export.common.Source` the model came from.
        model, processor: what to write (loaded from ``source`` or converted from it).
        out, overwrite, max_shard_size, ranking, bench, atol: see :func:`export_hf`.
        fmt: the format name recorded in the card and manifest.
        reference: ``(batch, logits)`` to compare the reloaded folder with (default: ``model`` on
            probe inputs).
        inputs: folders ``out`` must not overlap (default: the source).
        notes: extra card lines.
        details: extra format-specific data for the manifest.
        format_title: the card's description of the format (default: the generic formats' own).
        same_tokenizer: the folder holds the source's tokenizer unchanged, so the source's slow-tokenizer
            files (``tokenizer.model``) are carried byte for byte (:func:`~encslim.export.compat.carry_slow_tokenizer`).

    Returns:
        The manifest dict.

    Raises:
        VerificationError: the reloaded folder's logits differ from ``reference`` by more than ``atol``.
    """
    if reference is None:
        batch = probe_batch(source.adapter, processor)
        reference = (batch, probe_logits(source.adapter, model, batch))
    batch, expected = reference
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs or [source.path]) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        write_legacy_rope_keys(tmp)  # beside rope_parameters: what transformers 4.4x reads
        carried = carry_slow_tokenizer(source.path, tmp) if same_tokenizer else []
        reloaded, _ = source.adapter.load(str(tmp), device="cpu", dtype=model.dtype)
        logits = probe_logits(source.adapter, reloaded.eval(), batch)
        records = [check_logits("logits", max_abs_diff(expected, logits), atol)]
        fail_unless_matched(records, "the written folder")
        manifest = finish_folder(
            tmp, source, fmt, slots=slot_rows(source.adapter, model.config), verification=records,
            how_to_load=source.adapter.how_to_load(out, model), parameters=count_parameters(model),
            fusion_class=source.adapter.fusion_class(model.config), ranking=ranking, bench=bench, notes=notes,
            format_title=format_title,
            details={"architecture": type(model).__name__, "dtype": str(model.dtype).replace("torch.", ""),
                     "max_shard_size": str(max_shard_size), "carried_tokenizer_files": carried, **(details or {})},
        )
    logger.info("exported %s -> %s (format %s)", source.path, out, fmt)
    return manifest


__all__ = ["export_hf", "write_verified_folder"]

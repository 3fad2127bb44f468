"""``--format hf``: a self-describing transformers folder of the model as it is.

Sharded safetensors with their index, ``config.json``, ``generation_config.json``, the processor
and tokenizer files, the model card and the manifest. The written folder is loaded back and its
logits compared with the source's on probe inputs before the folder is published.
"""

import logging
from dataclasses import replace

from ..files import atomic_output_dir, check_output_path
from ..models.registry import family_of
from .compat import carry_slow_tokenizer, write_legacy_rope_keys
from .common import (check_logits, count_parameters, fail_unless_matched, load_source, max_abs_diff, probe_batch,
                     probe_logits, read_source)
from .finish import CardInputs, FormatInfo, LoadedSource, finish_folder

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
    card = CardInputs(ranking, bench)
    card.check()
    source = read_source(model_dir)
    model, processor = load_source(source, dtype)
    family = family_of(source.model_type)
    title = f"{family.description if family else source.model_type}, as a transformers folder"
    fmt = FormatInfo("hf", title=title, notes=tuple(source.adapter.export_notes(model.config)), same_tokenizer=True)
    return write_verified_folder(LoadedSource(source, model, processor), out, fmt, overwrite=overwrite,
                                 max_shard_size=max_shard_size, card=card, atol=atol)


def write_verified_folder(loaded, out, fmt, *, overwrite=False, max_shard_size=DEFAULT_SHARD, card=CardInputs(),
                          atol=ATOL, reference=None):
    """Save a loaded model and its processor to ``out``, reload the folder, compare logits, add card and manifest.

    Args:
        loaded: the :class:`~encslim.export.finish.LoadedSource` to write: the model and processor (loaded from
            its source or converted from it) and the source they came from (``out`` must not overlap it).
        out, overwrite, max_shard_size, atol: see :func:`export_hf`.
        fmt: the :class:`~encslim.export.finish.FormatInfo` recorded in the card and manifest (its ``details``
            extend the manifest's; ``same_tokenizer`` carries the source's slow-tokenizer files).
        card: the model card's ``--ranking`` and ``--bench``.
        reference: ``(batch, logits)`` to compare the reloaded folder with (default: the model on
            probe inputs).

    Returns:
        The manifest dict.

    Raises:
        VerificationError: the reloaded folder's logits differ from ``reference`` by more than ``atol``.
    """
    source, model, processor = loaded.source, loaded.model, loaded.processor
    if reference is None:
        batch = probe_batch(source.adapter, processor)
        reference = (batch, probe_logits(source.adapter, model, batch))
    batch, expected = reference
    with atomic_output_dir(out, overwrite=overwrite, inputs=[source.path]) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        write_legacy_rope_keys(tmp)  # beside rope_parameters: what transformers 4.4x reads
        carried = carry_slow_tokenizer(source.path, tmp) if fmt.same_tokenizer else []
        reloaded, _ = source.adapter.load(str(tmp), device="cpu", dtype=model.dtype)
        logits = probe_logits(source.adapter, reloaded.eval(), batch)
        records = [check_logits("logits", max_abs_diff(expected, logits), atol)]
        fail_unless_matched(records, "the written folder")
        details = {"architecture": type(model).__name__, "dtype": str(model.dtype).replace("torch.", ""),
                   "max_shard_size": str(max_shard_size), "carried_tokenizer_files": carried, **fmt.details}
        manifest = finish_folder(tmp, loaded, replace(fmt, details=details), verification=records,
                                 how_to_load=source.adapter.how_to_load(out, model),
                                 parameters=count_parameters(model), card=card)
    logger.info("exported %s -> %s (format %s)", source.path, out, fmt.name)
    return manifest


__all__ = ["export_hf", "write_verified_folder"]

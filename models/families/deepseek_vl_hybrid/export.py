"""What ``encslim export --format deepseek_vl`` needs to know about this family (:class:`StockConvertible`).

The conversion itself is the removal plan (:func:`.plan.sam_removal_plan`: the exact fold of
DESIGN §3, the config rewritten to ``deepseek_vl``, the processor files to the stock
``DeepseekVLProcessor``); the export stage applies it generically. This module holds the rest: the
format's description and the card note on the processors' different resizing.
"""

from ...capabilities import StockExport

DEEPSEEK_VL = StockExport(
    format="deepseek_vl",
    title="stock transformers DeepseekVLForConditionalGeneration",
    needs="a deepseek_vl_hybrid model (its 'sam' slot is removed) or a deepseek_vl one",
)
PROCESSOR_NOTE = (
    "transformers' hybrid image processor resizes an image to the SAM size and then to the SigLIP size; the stock "
    "DeepseekVLImageProcessor resizes once. From the same raw probe images their pixels differ by up to {pixel:.3g} "
    "and the logits by up to {logits:.3g}. For the hybrid's exact preprocessing, feed pixel_values computed by the "
    "hybrid's processor."
)


def stock_export(fmt):
    """The :class:`StockExport` of ``fmt`` (``deepseek_vl``), or ``None`` for any other format."""
    return DEEPSEEK_VL if fmt == DEEPSEEK_VL.format else None


def stock_notes(fmt, drop, gap):
    """Card lines for a ``deepseek_vl`` folder made by removing ``drop`` (see :meth:`StockConvertible.stock_notes`).

    Args:
        fmt: the format written.
        drop: the slots removed on the way (``["sam"]`` from a hybrid; none from a ``deepseek_vl`` folder).
        gap: ``{"pixel_max_abs_diff", "logits_max_abs_diff"}`` between the hybrid's and the stock processor's
            inputs on the same raw images.

    Returns:
        The note on the two processors' resizing when ``sam`` was removed here (the source was a hybrid,
        whose processor the stock one replaces); else nothing.
    """
    if fmt != DEEPSEEK_VL.format or not drop:  # only 'sam' can be removed (the adapter refuses 'siglip')
        return []
    return [PROCESSOR_NOTE.format(pixel=gap["pixel_max_abs_diff"], logits=gap["logits_max_abs_diff"])]


__all__ = ["DEEPSEEK_VL", "stock_export", "stock_notes"]

"""Checking a pruned model: its weights fit its config, and it computes what the masked model did.

* :func:`check_structure`: the checkpoint's keys and shapes are exactly those of the model its
  config describes (built on the meta device: no memory, no weights).
* :func:`verify_pruned`: run the source model with the dropped slots masked (removal mask) and
  the pruned model on the same K inputs; compare logits. Exact plans must agree within 1e-4
  (fp32); inexact ones (none of the shipped families today) report the difference and recommend fine-tuning.
"""

import logging
import math

from ..errors import DataError, ModelLoadError, VerificationError
from ..models.folder import key_problems
from ..provenance import VERIFY_TOLERANCE as TOLERANCE

logger = logging.getLogger(__name__)

SYNTHETIC_PROMPT = "Describe the image in one word."


def expected_layouts(adapter, config):
    """The checkpoint layouts a model built from ``config`` accepts, as ``[(shapes, optional)]``.

    First the layout ``save_pretrained`` writes (transformers 5 renames some keys on save, e.g.
    DINOv2's ``attention.k_proj`` back to ``attention.attention.key``), then the module layout.
    ``optional`` holds keys a checkpoint may omit (tied weights, keys ignored when missing).
    """
    import re

    model = adapter.empty_model(config)
    native = model.state_dict(keep_vars=True)
    layouts = [native]
    try:
        from transformers.core_model_loading import revert_weight_conversion

        layouts.insert(0, revert_weight_conversion(model, dict(native)))
    except Exception as err:  # noqa: BLE001 - an internal transformers API; the module layout still checks
        logger.debug("no saved-layout check: %s", err)
    patterns = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    result = []
    for state in layouts:
        first_key, optional = {}, set()
        for key, tensor in state.items():
            if id(tensor) in first_key:
                optional.update({key, first_key[id(tensor)]})
            first_key.setdefault(id(tensor), key)
        optional.update(k for k in state if any(re.search(p, k) for p in patterns))
        result.append(({k: tuple(v.shape) for k, v in state.items()}, optional))
    return result


def _layout_problems(expected, optional, shapes):
    return key_problems(expected, shapes, optional=optional).examples()


def check_structure(adapter, config, shapes, where):
    """Raise ``ModelLoadError`` if checkpoint ``shapes`` do not fit the model ``config`` describes.

    Args:
        adapter: the model family's adapter.
        config: the model's config (``adapter.read_config``).
        shapes: ``{key: shape}`` of its checkpoint.
        where: how to name the checkpoint in the message.
    """
    problems = [_layout_problems(expected, optional, shapes) for expected, optional in expected_layouts(adapter, config)]
    if any(not p for p in problems):
        return
    raise ModelLoadError(f"checkpoint keys of {where} do not match its config.json: {', '.join(problems[0])}; "
                         "the weights belong to another model or config")


def _synthetic_inputs(adapter, config, count, seed):
    import numpy as np
    from PIL import Image

    side = max(slot.image_size for slot in adapter.slots(config))
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    return images, [SYNTHETIC_PROMPT] * count


def _data_inputs(data, count):
    try:
        from ..data.load import load_samples
    except ImportError:
        raise DataError("--data needs encslim.data.load, which this installation lacks; "
                        "verify on synthetic inputs (leave out --data)") from None
    paths = [data] if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__") else list(data)
    samples = [s for s in load_samples(paths) if s.image is not None][:count]
    if not samples:
        raise DataError(f"no sample with an image in {', '.join(map(str, paths))}; pass other --data")
    return [s.image for s in samples], [s.question for s in samples]


def _batches(full_adapter, full_proc, pruned_adapter, pruned_proc, images, questions, drop):
    prompts_full = [full_adapter.build_prompt(full_proc, q) for q in questions]
    prompts_pruned = [pruned_adapter.build_prompt(pruned_proc, q) for q in questions]
    full = full_adapter.prepare_batch(full_proc, images, prompts_full, masked=frozenset(drop))
    pruned = pruned_adapter.prepare_batch(pruned_proc, images, prompts_pruned)
    if full["input_ids"].shape != pruned["input_ids"].shape or not bool((full["input_ids"] == pruned["input_ids"]).all()):
        raise VerificationError("the pruned processor builds other token sequences than the masked model's; "
                                "its processor files were not patched consistently with the weights")
    pixel_diff = 0.0
    for key in [k for k in pruned if "pixel_values" in k and k in full]:
        a, b = full[key], pruned[key]
        if a.shape == b.shape:
            pixel_diff = max(pixel_diff, float((a - b).abs().max()))
        pruned[key] = a  # compare the models on identical pixels
    return full, pruned, pixel_diff


def verify_pruned(source_dir, pruned_dir, plan, data=None, num_samples=4, tolerance=TOLERANCE, seed=0):
    """Compare masked-full and pruned logits on ``num_samples`` inputs, in fp32.

    Args:
        source_dir: the source model folder.
        pruned_dir: the pruned model folder.
        plan: the ``RemovalPlan`` that made it (``drop``, ``exact``).
        data: benchmark file(s) to draw samples from (default: random images + a fixed prompt).
        num_samples: K.
        tolerance: largest max-abs logit difference accepted for exact plans.
        seed: seed of the synthetic images.

    Returns:
        ``{"samples", "inputs", "max_abs_diff", "tolerance", "exact", "passed", "pixel_max_abs_diff",
        "recommendation"}``.

    Raises:
        VerificationError: an exact plan whose logits differ by more than ``tolerance``.
    """
    import torch

    from ..models.loading import load_model

    try:
        full, full_proc, full_adapter = load_model(source_dir)
        pruned, pruned_proc, pruned_adapter = load_model(pruned_dir)
    except ModelLoadError as err:
        raise VerificationError(f"verification could not load a model: {err}") from err
    if data:
        images, questions = _data_inputs(data, num_samples)
    else:
        images, questions = _synthetic_inputs(full_adapter, full.config, num_samples, seed)
    full_batch, pruned_batch, pixel_diff = _batches(full_adapter, full_proc, pruned_adapter, pruned_proc,
                                                    images, questions, plan.drop)
    with torch.no_grad():
        ref = full_adapter.decode(full, full_adapter.encode(full, full_batch), full_batch,
                                  masked=frozenset(plan.drop), mask_mode="removal").logits
        got = pruned_adapter.decode(pruned, pruned_adapter.encode(pruned, pruned_batch), pruned_batch).logits
    keep = full_batch["attention_mask"].bool()
    diff = float((ref - got).abs()[keep].max())
    scale = float(ref[keep].abs().max())
    result = {
        "samples": len(images), "inputs": "data" if data else "synthetic", "max_abs_diff": diff,
        "max_abs_logit": scale, "tolerance": tolerance, "exact": plan.exact,
        "passed": (diff <= tolerance) if plan.exact else None, "pixel_max_abs_diff": pixel_diff,
        "recommendation": None,
    }
    if pixel_diff > 0:
        result["note"] = ("the pruned model's image processor gives slightly different pixels; the logits were "
                          "compared on identical pixels")
    if not math.isfinite(diff) or (plan.exact and diff > tolerance):
        raise VerificationError(f"pruned logits differ from the masked model's by {diff:.3g} > {tolerance:g} "
                                f"although the plan is exact; nothing was written (this is a bug: report it)")
    if not plan.exact:
        result["recommendation"] = (f"inexact plan ({plan.fusion_class}): logits differ by up to {diff:.3g}; "
                                    "fine-tune the pruned model (encslim finetune) to recover accuracy")
    logger.info("verification: max |logit diff| = %.3g over %d samples", diff, len(images))
    return result

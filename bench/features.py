"""The feature cache: run each encoder once per sample, reuse its features under every mask.

Also the data-set mean features used by ``mask_mode="mean"``, and a counter of the vision
tower forward passes actually run (read from hooks on the towers).
"""

import contextlib
import logging

import torch

from ..errors import DataError
from . import distributed

logger = logging.getLogger(__name__)


def slots_needed(slot_names, mask_sets):
    """Slots unmasked in at least one mask set: the only encoders the evaluation must run."""
    return [s for s in slot_names if any(s not in masked for masked in mask_sets)]


def encode_images(model, processor, adapter, images, prompts, slots):
    """Run the encoders of ``slots`` once on a batch of images.

    Args:
        model, processor, adapter: as loaded by :func:`encslim.models.loading.load_model`.
        images: PIL images.
        prompts: their prompts (some processors need text alongside images).
        slots: the slots to encode; the others get no pixels and are not run.

    Returns:
        ``{slot: (B, N_slot, D_slot)}``.
    """
    skip = frozenset(s for s in adapter.slot_names(model.config) if s not in set(slots))
    batch = adapter.prepare_batch(processor, images, prompts, masked=skip, mask_mode="removal")
    with torch.inference_mode():
        return adapter.encode(model, batch)


def with_placeholders(features, adapter, config, batch_size, device, dtype):
    """Add zero tensors for slots that were not encoded.

    In ``zero`` and ``mean`` modes the fusion takes a masked slot's shape from its features but
    never reads their values, so a zero tensor of the right shape stands in exactly for an
    encoder that need not run.
    """
    full = dict(features)
    ref = next(iter(features.values()), None)
    for slot in adapter.slots(config):
        if slot.name not in full:
            full[slot.name] = torch.zeros(
                batch_size, slot.num_tokens, slot.feature_dim,
                device=ref.device if ref is not None else device, dtype=ref.dtype if ref is not None else dtype,
            )
    return full


def mean_features(model, processor, adapter, samples, batch_size=8, progress=False):
    """Per-slot mean feature vector over the samples' images and tokens (for ``mask_mode="mean"``).

    Under data-parallel evaluation each rank encodes its shard and the sums are reduced, so
    every rank gets the mean over all samples.

    Args:
        model, processor, adapter: as loaded by :func:`encslim.models.loading.load_model`.
        samples: samples with images (text-only samples are ignored).
        batch_size: images per encoder batch.
        progress: show a progress bar.

    Returns:
        ``{slot: float32 tensor (D_slot,)}`` on the CPU.

    Raises:
        DataError: no sample has an image.
    """
    rank, world = distributed.rank_and_world()
    with_images = [s for s in samples if s.image is not None][rank::world]
    slots = adapter.slot_names(model.config)
    totals = {}
    for s in adapter.slots(model.config):
        totals[s.name] = torch.zeros(s.feature_dim, dtype=torch.float64)
        totals[f"#{s.name}"] = torch.zeros(1, dtype=torch.float64)
    chunks = [with_images[i:i + batch_size] for i in range(0, len(with_images), batch_size)]
    for chunk in _progress(chunks, progress, "mean features"):
        prompts = [adapter.build_prompt(processor, "") for _ in chunk]
        features = encode_images(model, processor, adapter, [s.image for s in chunk], prompts, slots)
        for slot, value in features.items():
            totals[slot] += value.detach().double().sum(dim=(0, 1)).cpu()
            totals[f"#{slot}"] += value.shape[0] * value.shape[1]
    totals = distributed.all_reduce_sum(totals)
    if any(float(totals[f"#{s}"]) == 0 for s in slots):
        raise DataError("mask mode 'mean' needs samples with images to average features over; add some")
    return {s: (totals[s] / totals[f"#{s}"]).float() for s in slots}


class EncoderCounter:
    """Counts encoder forward passes (one per image) through forward pre-hooks on the adapter's encoders.

    A family whose encoders are not modules cannot be hooked; ``hooked`` is then False and the
    evaluator counts the passes it requests instead.
    """

    def __init__(self, model, adapter):
        self.passes = 0
        self._handles = []
        encoders = adapter.encoders(model)
        self.hooked = bool(encoders) and all(isinstance(m, torch.nn.Module) for m in encoders.values())
        if self.hooked:
            for encoder in encoders.values():
                self._handles.append(encoder.register_forward_pre_hook(self._count, with_kwargs=True))

    def _count(self, module, args, kwargs):
        pixels = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        self.passes += int(pixels.shape[0])

    def add(self, passes):
        """Count passes the evaluator requested (used only when the towers cannot be hooked)."""
        if not self.hooked:
            self.passes += passes

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextlib.contextmanager
def counting_encoder_passes(model, adapter):
    """Context manager yielding an :class:`EncoderCounter` whose hooks are removed on exit."""
    counter = EncoderCounter(model, adapter)
    try:
        yield counter
    finally:
        counter.close()


def _progress(items, enabled, desc):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=None)  # off without a TTY

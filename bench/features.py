"""The feature cache: run each encoder once per sample, reuse its features under every mask.

Two scopes. Within one :func:`encslim.bench.evaluate.evaluate` call each batch's features are
computed once and reused under that call's mask sets. Across calls a :class:`FeatureStore`
(passed as ``evaluate(..., features=store)``) keeps every sample's features, so a caller that
evaluates adaptively (``encslim rank --subsets greedy``, sampled Shapley) runs each encoder once
per sample over the whole run, not once per call.

Also the data-set mean features used by ``mask_mode="mean"``, and a counter of the vision
tower forward passes actually run (read from hooks on the towers).
"""

import contextlib
import logging

import torch

from ..errors import DataError
from ..runtime import progress_bar
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


class FeatureStore:
    """Encoder features of every sample, kept on the CPU for the whole of a run (several evaluations).

    Entries are ``{key: {slot: (N_slot, D_slot) tensor}}`` in the model's dtype; the key names
    the model, the processor, the image and the prompt (the evaluator builds it), so one store
    is safe to share between mask modes and calls but never hands one model another's features.

    Memory: per sample the sum over slots of ``N_slot * D_slot * bytes per value``, e.g. the
    demo model's four 16-token slots of width 96-128 in float32 take 27 KB per sample (11 MB for
    400 samples); a 576-token, 1024-wide slot in bfloat16 takes 1.2 MB. Past ``max_bytes`` the
    store keeps nothing more and those features are simply encoded again when needed (the
    results are the same; the encoder passes reported go up).

    Args:
        max_bytes: the most feature bytes to keep (``None``: no limit; 0 keeps nothing); ``encslim rank``
            passes its ``--feature-memory-gb``.

    Attributes:
        nbytes: bytes held now.
        refused: features (sample, slot) not kept because the store was full.
    """

    def __init__(self, max_bytes=None):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.refused = 0
        self._entries = {}

    def __len__(self):
        return len(self._entries)

    def has(self, key, slot):
        return slot in self._entries.get(key, {})

    def missing(self, key, slots):
        """The slots of ``slots`` (order kept) whose features for ``key`` are not stored."""
        have = self._entries.get(key, {})
        return [s for s in slots if s not in have]

    def get(self, key, slot):
        """The stored ``(N, D)`` features (CPU)."""
        return self._entries[key][slot]

    def put(self, key, slot, value):
        """Keep one sample's ``(N, D)`` features (copied to the CPU); False when the store is full."""
        if self.has(key, slot):
            return True
        size = value.numel() * value.element_size()
        if self.max_bytes is not None and self.nbytes + size > self.max_bytes:
            if not self.refused:
                logger.warning("the feature store is full (%.1f MiB); further encoder features are not kept "
                               "and get encoded again when needed", self.nbytes / 2**20)
            self.refused += 1
            return False
        self._entries.setdefault(key, {})[slot] = value.detach().to("cpu").clone()
        self.nbytes += size
        return True

    def batch(self, keys, slots, encode, device):
        """``{slot: (B, N, D)}`` for a batch, encoding only what is not stored yet.

        Args:
            keys: the batch's sample keys, in batch order.
            slots: the slots whose features the batch needs.
            encode: ``f(rows, slots) -> {slot: (len(rows), N, D)}`` running the encoders of
                ``slots`` on the batch rows ``rows``.
            device: where the returned features go.

        Returns:
            The batch's features. When nothing was stored before, the freshly encoded tensors
            themselves (no copy back from the CPU).
        """
        slots = list(slots)
        groups = {}
        for row, key in enumerate(keys):
            need = tuple(self.missing(key, slots))
            if need:
                groups.setdefault(need, []).append(row)
        fresh = {}
        for need, rows in groups.items():
            encoded = encode(rows, list(need))
            if len(rows) == len(keys) and list(need) == slots:
                for slot, value in encoded.items():
                    for row, key in enumerate(keys):
                        self.put(key, slot, value[row])
                return encoded
            for slot, value in encoded.items():
                for k, row in enumerate(rows):
                    fresh[(row, slot)] = value[k]
                    self.put(keys[row], slot, value[k])
        out = {}
        for slot in slots:
            parts = [fresh[(row, slot)] if (row, slot) in fresh else self.get(key, slot).to(device)
                     for row, key in enumerate(keys)]
            out[slot] = stack_padded([p.to(device) for p in parts])
        return out


def stack_padded(rows):
    """``(B, N_max, D)`` from per-sample ``(N_i, D)`` features, zeros after a shorter row's own tokens (an
    image tiled into fewer tiles than another's: its prompt holds only its own ``N_i`` image tokens)."""
    longest = max(r.shape[0] for r in rows)
    if all(r.shape[0] == longest for r in rows):
        return torch.stack(rows)
    out = rows[0].new_zeros(len(rows), longest, *rows[0].shape[1:])
    for i, row in enumerate(rows):
        out[i, :row.shape[0]] = row
    return out


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
    for chunk in progress_bar(chunks, desc="mean features", progress=None if progress else False):
        prompts = [adapter.build_prompt(processor, "") for _ in chunk]
        images = [s.image for s in chunk]
        features = encode_images(model, processor, adapter, images, prompts, slots)
        lengths = _feature_lengths(adapter, processor, images)
        for slot, value in features.items():
            if lengths is None:  # every row all real tokens
                totals[slot] += value.detach().double().sum(dim=(0, 1)).cpu()
                totals[f"#{slot}"] += value.shape[0] * value.shape[1]
                continue
            for row, n in zip(value, lengths):  # padded rows (tiles): only each image's own tokens
                totals[slot] += row[:n].detach().double().sum(dim=0).cpu()
                totals[f"#{slot}"] += n
    totals = distributed.all_reduce_sum(totals)
    if any(float(totals[f"#{s}"]) == 0 for s in slots):
        raise DataError("mask mode 'mean' needs samples with images to average features over; add some")
    return {s: (totals[s] / totals[f"#{s}"]).float() for s in slots}


def _feature_lengths(adapter, processor, images):
    """Per image its real feature tokens when the family pads rows (``adapter.feature_lengths``), else None."""
    lengths = getattr(adapter, "feature_lengths", None)
    return None if lengths is None else list(lengths(processor, images))


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

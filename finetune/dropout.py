"""Encoder dropout: which encoder slots to mask during a training step (pure functions).

Training with encoder dropout masks each slot with probability ``p`` so that the model learns to
answer without any single encoder, and a later removal costs less (encoders trained jointly
otherwise co-adapt: zero-masking any of them breaks categories it cannot even see well).

The mask is the removal-consistent one (DESIGN §1):

* classes A1/A2 (channel concat): a masked slot's features are zeroed, **per sample**; for A1
  this is exactly the removal mask, for A2 it is the zero mask the removal plan also uses;
* classes B/C (sequence concat / cross attention): the masked slot's tokens (B) or keys (C) are
  dropped. Dropping different slots in different rows of one batch would give rows of different
  lengths (B) or per-row key masks (C), so **one mask set is drawn per batch** instead.

At least one slot always stays: when every slot is drawn, one of them, chosen uniformly, is kept.
Draws come from a generator seeded by :func:`batch_seed`, a function of the run's seed, the epoch
and the batch's sample indices, so a resumed run draws the same masks as an uninterrupted one.
"""

import hashlib

import torch

from ..models.masking import FusionClass

PER_SAMPLE_CLASSES = (FusionClass.A1, FusionClass.A2)


def batch_seed(seed, epoch, indices):
    """A 63-bit seed from the run seed, the epoch and the batch's sample indices (order kept)."""
    text = f"{seed}|{epoch}|{','.join(str(int(i)) for i in indices)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def draw_masks(num_rows, num_slots, p, generator):
    """``(num_rows, num_slots)`` bool tensor, True = masked, with at least one False per row.

    Args:
        num_rows: samples (per-sample masks) or 1 (one mask set per batch).
        num_slots: encoder slots.
        p: probability of masking each slot.
        generator: a seeded ``torch.Generator``.
    """
    masked = torch.rand(num_rows, num_slots, generator=generator) < p
    rescue = torch.randint(num_slots, (num_rows,), generator=generator)
    full = masked.all(dim=1)
    masked[full, rescue[full]] = False
    return masked


def per_sample_keep(slots, num_rows, p, generator):
    """``{slot: (num_rows,) float tensor}``: 1.0 keeps the slot's features in that row, 0.0 zeroes them."""
    masked = draw_masks(num_rows, len(slots), p, generator)
    return {slot: (~masked[:, i]).float() for i, slot in enumerate(slots)}


def per_batch_masked(slots, p, generator):
    """The slots masked for a whole batch, in slot order (never all of them)."""
    masked = draw_masks(1, len(slots), p, generator)[0]
    return [slot for i, slot in enumerate(slots) if masked[i]]

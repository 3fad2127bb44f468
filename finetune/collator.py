"""Batches for the Trainer: right-padded token ids, answer-only labels, pixels or cached features.

Labels are ``-100`` (ignored by the loss) on the prompt, hence on the image tokens, and on the
padding; only the answer tokens (and the closing ``</s>``) are learned. Padding is on the right
during training (positions start at 0 for every row, as in LLaVA's training); the processor pads
on the left for generation, where rows must end together.
"""

import torch

from .dropout import PER_SAMPLE_CLASSES, batch_seed, per_batch_masked, per_sample_keep

IGNORE_INDEX = -100
TARGET_KEY = "distill_targets"  # the batch key of a distilled run's teacher targets (encslim.finetune.distill)


class IndexDataset(torch.utils.data.Dataset):
    """Yields sample indices; the collator turns a list of indices into a batch."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


class FinetuneCollator:
    """Turn a list of example indices into model inputs.

    Args:
        examples: :class:`~encslim.finetune.examples.TrainExample` list.
        processor: the model's processor (image preprocessing).
        adapter: the model family's adapter (pixel inputs, slots, fusion class, image-token counts).
        config: the model's config.
        pad_token_id: the tokenizer's padding id.
        features: ``{slot: (N, T, D) tensor}`` cached encoder features, or ``None`` for pixels.
        encoder_dropout: probability of masking each slot (see :mod:`encslim.finetune.dropout`).
        seed: the run's seed; dropout draws depend on it, the epoch and the batch's indices.
        targets: the teacher's :class:`~encslim.finetune.distill.TeacherTargets` (distillation), or ``None``.

    Attributes:
        epoch: the current epoch, set by the trainer's epoch callback.
    """

    def __init__(self, examples, processor, adapter, config, pad_token_id, features=None,
                 encoder_dropout=0.0, seed=0, targets=None):
        self.examples = examples
        self.processor = processor
        self.adapter, self.config = adapter, config
        self.slots = adapter.slot_names(config)
        self.fusion_class = adapter.fusion_class(config)
        self.pad_token_id = pad_token_id
        self.features = features
        self.encoder_dropout = encoder_dropout
        self.seed = seed
        self.epoch = 0
        self.image_token_id = adapter.image_token_id(config)
        self.targets = targets

    def __call__(self, indices):
        indices = [int(i) for i in indices]
        examples = [self.examples[i] for i in indices]
        keep, masked = self.dropout_masks(indices)
        rows = [self.prompt_ids(e, masked) for e in examples]
        batch = pad_right(rows, [e.answer_ids for e in examples], self.pad_token_id)
        kept = [s for s in self.slots if s not in masked]
        if self.features is not None:
            batch["image_features"] = {s: self.features[s][indices] for s in kept}
        else:
            batch.update(self.adapter.pixel_inputs(self.processor, [e.image for e in examples], frozenset(masked)))
        if masked:
            batch["masked_slots"] = list(masked)
        if keep:
            batch["slot_keep"] = keep
        if self.targets is not None:
            batch[TARGET_KEY] = self.targets.batch(indices)
        return batch

    def dropout_masks(self, indices):
        """``(slot_keep or None, masked slot list)`` for the batch of ``indices``."""
        if self.encoder_dropout <= 0 or len(self.slots) < 2:
            return None, []
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, indices))
        if self.fusion_class in PER_SAMPLE_CLASSES:
            return per_sample_keep(self.slots, len(indices), self.encoder_dropout, generator), []
        return None, per_batch_masked(self.slots, self.encoder_dropout, generator)

    def prompt_ids(self, example, masked):
        """The prompt ids with ``masked`` slots removed (class B prompts lose those slots' image tokens).

        The expanded placeholder is one run of identical image tokens, so removing ``n`` of them
        gives exactly the ids the processor produces for the masked prompt.
        """
        ids = list(example.prompt_ids)
        remove = (self.adapter.image_tokens(self.config) - self.adapter.image_tokens(self.config, frozenset(masked))
                  if masked else 0)
        if remove:
            first = ids.index(self.image_token_id)
            del ids[first:first + remove]
        return ids


def pad_right(prompts, answers, pad_token_id):
    """``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only) padded on the right.

    Args:
        prompts: per row, the prompt ids.
        answers: per row, the answer ids.
        pad_token_id: id written into the padding.

    Returns:
        dict of ``(B, L)`` long tensors.
    """
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids = list(prompt) + list(answer)
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt): len(ids)] = torch.tensor(answer)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

"""Training from cached encoder features.

With frozen encoders and no image augmentation, an encoder's output for a sample never changes
during training. So each encoder runs once per sample before training, and every step runs only
the fusion and the LLM on the cached features (``model(image_features=...)``). This is the
feature cache of the ranking stage applied to training; it is valid only while the encoders
are frozen, which :attr:`FinetuneConfig.features_cacheable` checks.

The cache lives in host memory: ``N x tokens x channels`` floats per slot (logged before it is
built). Under multi-process training every process encodes the whole data set once.
"""

import logging

import torch

logger = logging.getLogger(__name__)


def cache_bytes(num_samples, slot_shapes, bytes_per_value=4):
    """Bytes a feature cache takes: ``slot_shapes`` is ``{slot: (tokens, channels)}``."""
    return num_samples * sum(t * d for t, d in slot_shapes.values()) * bytes_per_value


@torch.no_grad()
def compute_features(model, processor, adapter, examples, batch_size=32, progress=False):
    """Every slot's features for every example, computed once in eval mode.

    Args:
        model: the loaded model (not yet wrapped for training).
        processor: its processor.
        adapter: the model family's adapter (``pixel_inputs``, ``encode``).
        examples: :class:`~encslim.finetune.examples.TrainExample` list.
        batch_size: images per encoder pass.
        progress: show a progress bar.

    Returns:
        ``{slot: (N, T, D) float tensor on the CPU}``, rows in example order.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    chunks = {}
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="encoding features", disable=not progress, unit="batch"):
        images = [e.image for e in examples[start:start + batch_size]]
        batch = adapter.pixel_inputs(processor, images)
        for slot, value in adapter.encode(model, batch).items():
            chunks.setdefault(slot, []).append(value.detach().float().cpu())
    model.train(was_training)
    features = {slot: torch.cat(parts) for slot, parts in chunks.items()}
    shapes = {slot: tuple(f.shape[1:]) for slot, f in features.items()}
    logger.info("cached features of %d samples (%.1f MB): %s", len(examples),
                cache_bytes(len(examples), shapes) / 1e6, shapes)
    return features

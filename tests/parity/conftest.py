"""Helpers the parity tests share: reading a committed golden file, and encslim's run on its image."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def read_golden(path):
    """``(tensors, metadata)`` of a golden ``.safetensors`` file made by an original code base."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        return tensors, handle.metadata()


def encode_golden_image(loaded, tensors, meta):
    """encslim's batch for the golden's source image and prompt, and each tower's features: ``(batch, features)``."""
    from PIL import Image

    model, processor, adapter = loaded
    image = Image.fromarray(tensors["source_image"].numpy(), "RGB")
    batch = adapter.prepare_batch(processor, [image], [meta["prompt"]])
    with torch.no_grad():
        features = adapter.encode(model, batch)
    return batch, features

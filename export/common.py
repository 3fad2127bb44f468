"""What every export format shares: the source model, probe inputs, comparisons, card and manifest.

An export reads a model folder (never modifies it), writes a new folder atomically, checks that
the written folder computes what the source computes on real probe inputs (images through the
processor, chat prompts through the tokenizer), and finishes the folder with a model card
(``README.md``) and the manifest (``encslim_manifest.json``, sha256 of every file).
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from ..files import CARD_NAME, MANIFEST_NAME
from ..models.loading import adapter_for, read_config

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
PROBE_QUESTIONS = (
    "What is in the image?",
    "How many objects are there?",
    "What colour is the shape?",
    "What number is printed?",
)


@dataclass
class Source:
    """A model folder to export: its path, ``config.json``, family adapter and encslim manifest."""

    path: Path
    config: dict
    adapter: object
    manifest: dict = field(default_factory=dict)

    @property
    def model_type(self):
        return self.config.get("model_type")


def read_source(model_dir):
    """Read a model folder's config, adapter and (if present) its ``encslim_manifest.json``.

    Raises:
        ModelLoadError: not a model folder, or a family encslim does not support.
    """
    path = Path(model_dir)
    config = read_config(path)
    adapter = adapter_for(path)
    manifest = {}
    if (path / MANIFEST_NAME).is_file():
        try:
            manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{path / MANIFEST_NAME} is not valid JSON ({err}); re-run the step that wrote it")
    return Source(path=path, config=config, adapter=adapter, manifest=manifest)


def require_native(source, fmt):
    """Raise ``ConfigError`` unless ``source`` is a native encslim model (``model_type: encslim``)."""
    if source.model_type != "encslim":
        raise ConfigError(
            f"--format {fmt} needs a native encslim model (model_type 'encslim'); {source.path} holds "
            f"model_type '{source.model_type}'; use --format hf for it"
        )


def load_source(source, dtype="auto"):
    """Load ``(model, processor)`` of a source through its adapter, in eval mode on CPU.

    Args:
        source: a :class:`Source`.
        dtype: ``auto`` keeps the stored dtype; else ``float32``, ``bfloat16`` or ``float16``.
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' unknown; use one of {', '.join(DTYPES)}")
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    try:
        model, processor = source.adapter.load(str(source.path), device="cpu", dtype=torch_dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the model in {source.path}: {str(err).splitlines()[0]}") from err
    return model.eval(), processor


def probe_images(count=2, seed=0, size=(48, 40)):
    """``count`` seeded RGB images (smooth gradients plus noise), not square on purpose."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        y, x = np.mgrid[0: size[1], 0: size[0]]
        base = np.stack([x * 255 / size[0], y * 255 / size[1], np.full_like(x, 40 * (i + 1))], axis=-1)
        noisy = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(noisy, "RGB"))
    return images


def probe_prompts(processor, count=2):
    """``count`` prompts of different lengths (so batches pad).

    Chat prompts with the image placeholder for the native processor (``build_prompt``); plain
    questions for other families, whose adapter's ``prepare_batch`` adds their image token.
    """
    questions = [PROBE_QUESTIONS[i % len(PROBE_QUESTIONS)] for i in range(count)]
    build = getattr(processor, "build_prompt", None)
    return [build(q) for q in questions] if build else questions


def probe_batch(processor, count=2, seed=0):
    """Processor outputs for ``count`` probe images and prompts (native processor)."""
    return processor(text=probe_prompts(processor, count), images=probe_images(count, seed))


def max_abs_diff(a, b, mask=None):
    """Largest absolute difference of two arrays/tensors (as float64), over ``mask`` rows if given.

    Args:
        a, b: arrays or tensors of the same shape.
        mask: optional boolean array over the leading dims; only those positions are compared.
    """
    import numpy as np

    a, b = _numpy(a).astype(np.float64), _numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    if mask is not None:
        diff = diff[_numpy(mask).astype(bool)]
    return float(diff.max()) if diff.size else 0.0


def _numpy(x):
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    import numpy as np

    return np.asarray(x)


def check_logits(name, max_diff, atol):
    """One verification record: ``{"output", "max_abs_diff", "atol", "matched"}``."""
    return {"output": name, "max_abs_diff": max_diff, "atol": atol, "matched": bool(max_diff <= atol)}


def fail_unless_matched(records, what):
    """Raise ``VerificationError`` naming every record that did not match."""
    from ..errors import VerificationError

    bad = [r for r in records if not r["matched"]]
    if bad:
        parts = ", ".join(f"{r['output']} max |diff| {r['max_abs_diff']:.3g} > atol {r['atol']:g}" for r in bad)
        raise VerificationError(f"{what} does not match the source: {parts}; nothing was written")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


__all__ = ["Source", "read_source", "require_native", "load_source", "probe_images", "probe_prompts",
           "probe_batch", "max_abs_diff", "check_logits", "fail_unless_matched", "MANIFEST_NAME", "CARD_NAME"]

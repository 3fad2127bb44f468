"""What every export format shares: the source model, probe inputs, comparisons, card and manifest.

An export reads a model folder (never modifies it), writes a new folder atomically, checks that
the written folder computes what the source computes on real probe inputs (images through the
processor, chat prompts through the tokenizer), and finishes the folder with a model card
(``README.md``) and the manifest (``encslim_manifest.json``, sha256 of every file).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from ..files import CARD_NAME, MANIFEST_NAME, read_json
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
    """A model folder to export: its path, ``config.json`` (a dict), family adapter, encslim manifest and
    the family's config object (``adapter.read_config``)."""

    path: Path
    config: dict
    adapter: object
    manifest: dict = field(default_factory=dict)
    model_config: object = None

    @property
    def slot_names(self):
        return self.adapter.slot_names(self.model_config)

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
    adapter = adapter_for(model_dir)  # a ModelFolder keeps its encoder folders; every shard is checked
    manifest = {}
    if (path / MANIFEST_NAME).is_file():
        manifest = read_json(path / MANIFEST_NAME, fix="re-run the step that wrote it", error=ModelLoadError)
    return Source(path=path, config=config, adapter=adapter, manifest=manifest, model_config=adapter.read_config(path))


def export_refusal(source, fmt, kept=None):
    """Why ``source`` keeping slots ``kept`` (default: all) cannot be exported as ``fmt``: its adapter's
    reasons (:meth:`~encslim.models.adapter.Adapter.export_blockers`), empty when ``fmt`` is among its
    ``export_targets``."""
    kept = source.slot_names if kept is None else list(kept)
    return source.adapter.export_blockers(source.model_config, kept, fmt)


def require_target(source, fmt, needs, what):
    """Raise a one-line ``ConfigError`` unless ``fmt`` is among the source's export targets (its adapter decides).

    Args:
        source: a :class:`Source`.
        fmt: the format name (``--format``).
        needs: what the format needs, for the message (e.g. "a native encslim model (model_type 'encslim')").
        what: the format's name in prose (e.g. "LLaVA").
    """
    refuse_token_budget(source, fmt, what)
    reasons = export_refusal(source, fmt)
    if reasons:
        targets = source.adapter.export_targets(source.model_config, source.slot_names)
        raise ConfigError(
            f"--format {fmt} needs {needs}; {source.path} holds model_type '{source.model_type}' and cannot be "
            f"exported as {what}: {'; '.join(reasons)} (with all its slots it allows --format {', '.join(targets)})"
        )


# formats that carry a token budget: the family's own folder (its config.json field), its remote code, and ONNX
# (whose graphs the family's front end decides on); a stock class has no reducer
BUDGET_FORMATS = ("hf", "remote-code", "onnx")


def token_budget_of(source):
    """The :class:`~encslim.models.tokens.TokenBudget` a source's config carries, or ``None``."""
    from ..models.tokens import budget_of

    return budget_of(source.model_config)


def refuse_token_budget(source, fmt, what):
    """Raise a one-line ``ConfigError`` when ``source`` carries a token budget that format ``fmt`` cannot express.

    The reason is the family's (an ``export_blockers`` reason that names the budget) where it gives one, else
    that the stock classes have no token reducer.
    """
    budget = token_budget_of(source)
    if budget is None or fmt in BUDGET_FORMATS:
        return
    reasons = [r for r in export_refusal(source, fmt) if "budget" in r.lower()]
    reason = reasons[0] if reasons else (f"{what} has no token reducer: its processor writes every image token "
                                         "and its model reads every one; export --format hf or remote-code keeps "
                                         "the budget, or prune with --token-budget 1 to ship every token")
    raise ConfigError(f"--format {fmt} cannot carry the token budget of {source.path} ({budget.label}): {reason}")


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


def probe_prompts(adapter, processor, count=2):
    """``count`` chat prompts of different lengths (so batches pad), with the image placeholder:
    the family's :meth:`~encslim.models.adapter.Adapter.build_prompt`."""
    return [adapter.build_prompt(processor, PROBE_QUESTIONS[i % len(PROBE_QUESTIONS)]) for i in range(count)]


def probe_batch(adapter, processor, count=2, seed=0):
    """Model inputs (``adapter.prepare_batch``) for ``count`` probe images and prompts."""
    return adapter.prepare_batch(processor, probe_images(count, seed), probe_prompts(adapter, processor, count))


def probe_logits(adapter, model, batch):
    """The model's logits on a probe batch, through the adapter (encoders once, fusion, LLM)."""
    import torch

    with torch.no_grad():
        return adapter.decode(model, adapter.encode(model, batch), batch).logits


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


__all__ = ["BUDGET_FORMATS", "Source", "read_source", "export_refusal", "refuse_token_budget", "token_budget_of",
           "require_target", "load_source", "probe_images", "probe_prompts",
           "probe_batch", "max_abs_diff", "check_logits", "fail_unless_matched", "MANIFEST_NAME", "CARD_NAME"]

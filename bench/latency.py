"""Per-stage latency of one model, and the interleaved measurement loop over several models.

One iteration runs the model as separate stages, each between synchronisation points:

* ``encoder:<slot>``: one vision tower on the batch's pixels (only the towers the model runs);
* ``fusion``: fusion + projector and the merge of the image embeddings into the text embeddings;
* ``prefill``: the LLM over the whole prompt, up to the first generated token;
* ``decode``: ``max_new_tokens - 1`` further greedy steps with the KV cache (EOS suppressed, so
  every iteration generates exactly ``max_new_tokens`` tokens, like ``min_new_tokens``);
* ``end_to_end``: one real generation through the adapter (pixels in, tokens out) (greedy, ``min_new_tokens = max_new_tokens``),
  timed as a whole; preprocessing and tokenisation are done once, before timing.

Models are measured interleaved, A B A B ..., so drift hits all of them alike.
"""

import logging
import time
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.masking import MaskMode, check_slot_names
from . import stats

logger = logging.getLogger(__name__)

BENCH_QUESTION = "What is shown in the image? Answer the question using a single word or phrase."
MASK_RUN_MODES = (MaskMode.ZERO.value, MaskMode.REMOVAL.value)


@dataclass(frozen=True)
class ModelSpec:
    """One model to benchmark.

    Attributes:
        name: label in the report (unique).
        path: model folder.
        masked: slots masked at run time, without surgery (empty for a plain model).
        mask_mode: ``zero``: the masked encoders still run and their features are zeroed (masking
            alone); ``removal``: the masked encoders are skipped (what a pruned model does).
        role: ``full`` (the reference) or ``variant``.
    """

    name: str
    path: str
    masked: tuple = ()
    mask_mode: str = "removal"
    role: str = "variant"

    @property
    def skips_masked(self):
        return bool(self.masked) and self.mask_mode == "removal"


class LoadedModel:
    """A model loaded for benchmarking, with its inputs per batch size prepared once."""

    def __init__(self, spec, model, processor, adapter, device):
        self.spec, self.model, self.processor, self.adapter = spec, model, processor, adapter
        self.device = device
        slots = adapter.slot_names(model.config)
        check_slot_names(slots, spec.masked, ConfigError, f"--mask {','.join(spec.masked)} ({spec.path}): ")
        if spec.mask_mode not in MASK_RUN_MODES:
            raise ConfigError(f"mask mode '{spec.mask_mode}' unknown; use one of {', '.join(MASK_RUN_MODES)}")
        self.slots = slots
        skipped = set(spec.masked) if spec.skips_masked else set()
        self.encoders_run = [s for s in slots if s not in skipped]
        self._batches = {}

    @property
    def name(self):
        return self.spec.name

    def batch(self, batch_size):
        """The benchmark inputs at ``batch_size`` (cached), on the model's device and dtype."""
        if batch_size not in self._batches:
            self._batches[batch_size] = build_inputs(self, batch_size)
        return self._batches[batch_size]

    def image_tokens(self):
        """Image tokens in the LLM sequence for this model as run."""
        return self.adapter.image_tokens(self.model.config, frozenset(self.spec.masked), self.spec.mask_mode)

    def prompt_tokens(self):
        return int(self.batch(1)["input_ids"].shape[1])


def load(spec, device="cpu", dtype="float32"):
    """Load ``spec``'s model folder as a :class:`LoadedModel`."""
    from ..models.loading import load_model

    model, processor, adapter = load_model(spec.path, device=device, dtype=dtype)
    return LoadedModel(spec, model, processor, adapter, model.device)


def bench_image(size=256, seed=0):
    """A fixed seeded RGB image (smooth gradient plus noise); its content does not affect timing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                     np.full((size, size), 128.0, np.float32)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def build_inputs(loaded, batch_size):
    """Processor outputs for ``batch_size`` copies of the benchmark image and question."""
    import torch

    spec = loaded.spec
    prompt = loaded.adapter.build_prompt(loaded.processor, BENCH_QUESTION)
    batch = loaded.adapter.prepare_batch(loaded.processor, [bench_image()] * batch_size, [prompt] * batch_size,
                                         masked=frozenset(spec.masked), mask_mode=spec.mask_mode)
    dtype = next(loaded.model.parameters()).dtype
    out = {}
    for key, value in batch.items():
        value = value.to(loaded.device)
        out[key] = value.to(dtype) if torch.is_floating_point(value) else value
    return out


def _eos_ids(model):
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _greedy(logits, eos_ids):
    """Next tokens (B, 1), EOS excluded so that the output length is fixed."""
    if eos_ids:
        logits = logits.clone()
        logits[:, eos_ids] = float("-inf")
    return logits.argmax(-1, keepdim=True)


def run_iteration(loaded, batch, recorder, max_new_tokens, end_to_end=True):
    """Run every stage once under ``recorder.stage(name)``; return the greedy tokens (B, N).

    ``recorder`` is a timer (:mod:`encslim.bench.timing`) or a FLOP counter (:mod:`.costs`).
    """
    import torch

    from ..models.layout import CACHE_KWARG  # the cache keyword of this transformers

    model, spec, adapter = loaded.model, loaded.spec, loaded.adapter
    eos, masked = _eos_ids(model), frozenset(spec.masked)
    with torch.inference_mode():
        features = {}
        for slot in loaded.encoders_run:
            with recorder.stage(f"encoder:{slot}"):
                features.update(adapter.encode(model, batch, [slot]))
        with recorder.stage("fusion"):
            embeds = adapter.embed(model, features, batch, masked, spec.mask_mode)
        mask = batch["attention_mask"]
        with recorder.stage("prefill"):
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            out = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     use_cache=True, logits_to_keep=1)
            tokens = [_greedy(out.logits[:, -1], eos)]
        with recorder.stage("decode"):
            for _ in range(max_new_tokens - 1):
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = adapter.lm_forward(model, input_ids=tokens[-1], attention_mask=mask,
                                         position_ids=mask.long().sum(-1, keepdim=True) - 1,
                                         use_cache=True, **{CACHE_KWARG: getattr(out, CACHE_KWARG)})
                tokens.append(_greedy(out.logits[:, -1], eos))
        if end_to_end:
            with recorder.stage("end_to_end"):
                adapter.generate(model, None, batch, masked, spec.mask_mode, max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens)
    return torch.cat(tokens, dim=1)


@dataclass(frozen=True)
class LoopSettings:
    """How long to measure: ``warmup`` rounds discarded, then at least ``min_iters`` rounds and at
    least ``min_seconds`` of measured time per model (capped at ``max_iters`` rounds)."""

    max_new_tokens: int = 16
    warmup: int = 3
    min_iters: int = 10
    min_seconds: float = 2.0
    max_iters: int = 10000


@dataclass
class Measurement:
    """What :func:`run_interleaved` measured at one batch size."""

    iterations: dict
    order: list
    seconds: dict


def run_interleaved(models, batch_size, settings, timer):
    """Measure ``models`` round-robin at one batch size.

    Args:
        models: :class:`LoadedModel` list; the order is the order within each round.
        batch_size: rows per iteration.
        settings: :class:`LoopSettings`.
        timer: a timer from :func:`encslim.bench.timing.make_timer`.

    Returns:
        :class:`Measurement`: per model the ``{stage: ms}`` of each measured round, the names in
        the order they were measured (warm-up excluded), and the wall-clock seconds per model.
    """
    from ..runtime import progress_bar

    batches = {m.name: m.batch(batch_size) for m in models}
    # a bar over rounds (warm-up included) on a terminal; its total grows while min_seconds is unmet
    bar = progress_bar(total=settings.warmup + settings.min_iters, desc=f"bench batch {batch_size}", unit="round",
                       leave=False)
    with bar:
        for _ in range(settings.warmup):
            for m in models:
                run_iteration(m, batches[m.name], timer, settings.max_new_tokens)
                timer.collect()
            bar.update()
        iterations = {m.name: [] for m in models}
        spent = {m.name: 0.0 for m in models}
        order, rounds = [], 0
        while rounds < settings.max_iters and (
                rounds < settings.min_iters or min(spent.values()) < settings.min_seconds):
            if rounds >= settings.min_iters and bar.total is not None:
                bar.total += 1  # more rounds to reach min_seconds
            for m in models:
                start = time.perf_counter()
                run_iteration(m, batches[m.name], timer, settings.max_new_tokens)
                iterations[m.name].append(timer.collect())
                spent[m.name] += time.perf_counter() - start
                order.append(m.name)
            rounds += 1
            bar.update()
    logger.info("batch size %d: %d rounds over %d models", batch_size, rounds, len(models))
    return Measurement(iterations, order, spent)


def summarize_iterations(iterations, batch_size, max_new_tokens):
    """Statistics of one model's iterations (pure).

    Args:
        iterations: ``[{stage: ms}, ...]`` as returned by :func:`run_interleaved`.
        batch_size: rows per iteration.
        max_new_tokens: tokens generated per row.

    Returns:
        ``{"iterations": n, "stages": {stage: summary}, "decode_tokens_per_s": summary | None,
        "end_to_end_tokens_per_s": summary}``. Derived stages: ``vision`` (sum of the encoders),
        ``ttft`` (vision + fusion + prefill: time to first token) and ``stage_sum``
        (ttft + decode, to compare with the measured ``end_to_end``).
    """
    names = list(iterations[0])
    series = {name: [it[name] for it in iterations] for name in names}
    encoders = [n for n in names if n.startswith("encoder:")]
    zeros = [0.0] * len(iterations)
    series["vision"] = stats.add_series(zeros, *(series[n] for n in encoders))
    series["ttft"] = stats.add_series(series["vision"], series["fusion"], series["prefill"])
    series["stage_sum"] = stats.add_series(series["ttft"], series["decode"])
    decode_tokens = batch_size * (max_new_tokens - 1)
    decode_rates = [stats.rate(decode_tokens, ms) for ms in series["decode"]] if decode_tokens else []
    result = {
        "iterations": len(iterations),
        "stages": {name: stats.summarize(values) for name, values in series.items()},
        "decode_tokens_per_s": None,
        "end_to_end_tokens_per_s": None,
    }
    if decode_rates and None not in decode_rates:
        result["decode_tokens_per_s"] = stats.summarize(decode_rates)
    if "end_to_end" in series:
        e2e_rates = [stats.rate(batch_size * max_new_tokens, ms) for ms in series["end_to_end"]]
        if None not in e2e_rates:
            result["end_to_end_tokens_per_s"] = stats.summarize(e2e_rates)
    return result

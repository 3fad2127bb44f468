"""Accuracy of a model under a list of encoder mask sets, in one pass over the data.

The feature cache (DESIGN §4): encoders do not depend on the mask, so each encoder runs once
per sample and only fusion + LLM run once per mask set. With ``feature_cache=False`` every mask
set runs the whole model from pixels, as separate evaluations would; the scores are the same.
A :class:`~encslim.bench.features.FeatureStore` passed as ``features=`` keeps the features
beyond one call, so a caller evaluating mask sets in several calls (``encslim rank``) still runs
each encoder once per sample over all of them.

What decides the answers (mask mode and values, generation budget, MCQ mode, prompt styles) and the
batch size travel together as :class:`EvalSettings`. Answers come from greedy generation, or, for
multiple-choice samples with ``mcq_mode="logits"``,
from the option letters' first-token logits. Each (sample, mask set) result is a record
(:mod:`encslim.bench.records`); a rerun with the same records file skips finished work.
Under ``torchrun`` the samples are sharded by rank and the results gathered on every rank.
"""

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

import torch

from ..errors import ConfigError, DataError
from ..models.masking import MASK_MODES, check_mask_set
from ..models.tokens import TokenBudget, budget_of
from . import distributed
from .answering import Loaded, choose_options, generate_texts
from .features import counting_encoder_passes, encode_images, slots_needed, with_placeholders
from ..data.prompts import build_question, prompt_id, style_for
from .records import RecordStore, model_fingerprint, record_key, sample_fingerprint, settings_fingerprint
from .results import EvalResult
from ..data.scorers import score

logger = logging.getLogger(__name__)

MCQ_MODES = ("logits", "generate")


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate` answers: everything that decides an answer (and its record's key) besides the
    model, the sample and the mask set, plus the batch size.

    Attributes:
        mask_mode: ``removal`` (equals physical removal), ``zero`` (the study's) or ``mean``.
        mask_values: ``{slot: tensor (D,)}`` for ``mean`` mode (see ``features.mean_features``).
        max_new_tokens: generation budget for open questions (and MCQ in ``generate`` mode).
        mcq_mode: ``logits`` (choose by the options' first-token logits) or ``generate``.
        prompt_styles: ``{dataset: PromptStyle}`` overriding the default prompt per data set.
        batch_size: samples per forward batch (prompts padded on the left).
        token_budget: a :class:`~encslim.models.tokens.TokenBudget` to run under instead of the model's
            own (``None``: the model's own; budget 1: every token). Encoder features do not depend on it:
            a :class:`~encslim.bench.features.FeatureStore` serves every budget from one encoder pass.
    """

    mask_mode: str = "removal"
    mask_values: Optional[Mapping[str, Any]] = None
    max_new_tokens: int = 8
    mcq_mode: str = "logits"
    prompt_styles: Optional[Mapping[str, Any]] = None
    batch_size: int = 8
    token_budget: Optional[TokenBudget] = None


@dataclass
class _Item:
    """One sample with its prompt and the record key of each mask set."""

    sample: object
    prompt: str
    keys: dict = field(default_factory=dict)
    feature_key: str = None


@dataclass
class _Run:
    """Everything one evaluation call needs inside its batch loop."""

    model: object
    processor: object
    adapter: object
    mask_sets: list
    mask_mode: str
    mask_values: object
    max_new_tokens: int
    mcq_mode: str
    feature_cache: bool
    model_fp: str
    settings_fp: str
    store: object = None
    encoder_fp: str = None
    counter: object = None
    rank: int = 0


def evaluate(loaded, samples, mask_sets=(frozenset(),), settings=EvalSettings(), *, records_path=None,
             progress=False, feature_cache=True, features=None):
    """Score ``samples`` under every mask set in one pass.

    Args:
        loaded: ``(model, processor, adapter)`` (:class:`~encslim.bench.answering.Loaded`), as
            :func:`encslim.models.loading.load_model` returns them.
        samples: :class:`~encslim.data.samples.Sample` list with unique ids.
        mask_sets: sets of MASKED slot names; ``frozenset()`` is the full model.
        settings: :class:`EvalSettings` (mask mode and values, generation budget, MCQ mode, prompt
            styles, batch size).
        records_path: JSONL file of per-sample records; existing matching records are reused.
        progress: show a progress bar over samples x mask sets (rank 0 only, on a terminal only;
            ``None`` as ``True``).
        feature_cache: encode once per sample (True) or run the full model per mask set (False).
        features: a :class:`~encslim.bench.features.FeatureStore` to take encoder features from
            and keep them in across calls (``None``: this call's batches only). Ignored without
            ``feature_cache``.

    Returns:
        EvalResult with scores per mask set, predictions, categories and encoder passes.

    Raises:
        ConfigError: unknown slot, bad mode, masking every slot in removal mode, missing mask values.
        DataError: duplicate sample ids, or no samples.
    """
    model, processor, adapter = loaded = Loaded(*loaded)
    mask_mode, mask_values = settings.mask_mode, settings.mask_values
    mask_sets = normalize_mask_sets(adapter.slot_names(model.config), mask_sets, mask_mode)
    for masked in mask_sets:
        adapter.check_mask(model.config, masked, mask_mode, mask_values)  # family rules (a single slot)
    _check_arguments(samples, mask_sets, settings)
    rank, world = distributed.init_from_env()
    model_fp = model_fingerprint(model)
    encoder_fp = _encoder_fingerprint(model_fp, processor)  # features come before any token reducer
    if settings.token_budget is None:
        return _evaluate(loaded, samples, mask_sets, settings, (model_fp, encoder_fp), records_path, progress,
                         feature_cache, features, rank, world)
    with adapter.token_budget(model, processor, settings.token_budget):
        return _evaluate(loaded, samples, mask_sets, settings, (model_fp, encoder_fp), records_path, progress,
                         feature_cache, features, rank, world)


def _evaluate(loaded, samples, mask_sets, settings, fingerprints, records_path, progress, feature_cache, features,
              rank, world):
    """:func:`evaluate` under the token budget in force (the model's own, or ``settings.token_budget``)."""
    model, processor, adapter = loaded
    model_fp, encoder_fp = fingerprints
    mask_mode, mask_values = settings.mask_mode, settings.mask_values
    run = _Run(model, processor, adapter, mask_sets, mask_mode, mask_values, settings.max_new_tokens,
               settings.mcq_mode, feature_cache, model_fp, settings_fingerprint(_settings(processor, settings,
                                                                                          model.config)),
               store=features if feature_cache else None, encoder_fp=encoder_fp, rank=rank)
    items = _plan(run, samples, settings.prompt_styles)
    store = RecordStore(records_path, rank, world)
    done = store.load()
    todo = [it for it in items if any(k not in done for k in it.keys.values())]
    shard = todo[rank::world]
    new_records, passes = _evaluate_shard(run, shard, store, done, settings.batch_size,
                                          (progress is None or bool(progress)) and rank == 0)
    with_images = sum(1 for it in shard if it.sample.image is not None)
    gathered = distributed.all_gather((new_records, passes, len(shard), with_images))
    all_new = [r for part in gathered for r in part[0]]
    store.merge(all_new)
    distributed.barrier()
    done.update({r["key"]: r for r in all_new})
    evaluated = sum(part[2] for part in gathered)
    imaged = sum(part[3] for part in gathered)
    total = sum(part[1] for part in gathered)
    logger.info("evaluated %d samples (%d reused from records)", evaluated, len(items) - evaluated)
    return _result(items, done, mask_sets, mask_mode, total / imaged if imaged else 0.0, evaluated, total)


def _evaluate_shard(run, shard, store, done, batch_size, show_progress):
    """Run this process's share of the work in batches, appending each batch's records to ``store``.

    Returns:
        (new records, encoder passes counted while running them).
    """
    new_records = []
    with counting_encoder_passes(run.model, run.adapter) as counter:
        run.counter = counter
        batches = _batches(shard, batch_size, run.mcq_mode)
        with _progress(batches, len(run.mask_sets), show_progress) as bar:
            for batch in batches:
                records = _run_batch(run, batch, done)
                store.append(records)
                new_records.extend(records)
                bar.update(len(batch) * len(run.mask_sets))
    return new_records, counter.passes


def normalize_mask_sets(slot_names, mask_sets, mask_mode="removal"):
    """Mask sets as frozensets, duplicates dropped (order kept), slot names checked.

    Raises:
        ConfigError: an unknown slot, no mask set, or every slot masked in removal mode.
    """
    out = []
    for masked in mask_sets:
        masked = check_mask_set(slot_names, masked, mask_mode, values_required=False)
        if masked not in out:
            out.append(masked)
    if not out:
        raise ConfigError("no mask sets given; pass at least frozenset() for the full model")
    return out


def _check_arguments(samples, mask_sets, settings):
    if settings.mask_mode not in MASK_MODES:
        raise ConfigError(f"mask mode '{settings.mask_mode}' unknown; use one of {', '.join(MASK_MODES)}")
    if settings.mcq_mode not in MCQ_MODES:
        raise ConfigError(f"mcq mode '{settings.mcq_mode}' unknown; use one of {', '.join(MCQ_MODES)}")
    if settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise ConfigError("batch size and max new tokens must be at least 1")
    if not samples:
        raise DataError("no samples to evaluate")
    seen = {}
    for sample in samples:
        if sample.id in seen:
            raise DataError(f"sample id '{sample.id}' appears twice ({seen[sample.id]} and {sample.source}); "
                            f"ids must be unique")
        seen[sample.id] = sample.source or sample.id


def _processor_config(processor):
    return processor.to_dict() if hasattr(processor, "to_dict") else type(processor).__name__


def _settings(processor, settings, config=None):
    """What a record's settings fingerprint covers (the batch size and prompt styles are not in it); the
    token budget in force when there is one (absent otherwise, so older records keep their keys)."""
    values = None
    if settings.mask_mode == "mean":
        values = {k: v.detach().float().cpu().numpy().round(6).tolist()
                  for k, v in sorted(settings.mask_values.items())}
    out = {"mask_mode": settings.mask_mode, "max_new_tokens": settings.max_new_tokens,
           "mcq_mode": settings.mcq_mode, "mask_values": values, "processor": _processor_config(processor)}
    budget = budget_of(config) if config is not None else None
    if budget is not None:
        out["token_budget"] = budget.to_dict()
    return out


def _encoder_fingerprint(model_fp, processor):
    """What decides a sample's encoder features besides the sample: the model and the processor."""
    return settings_fingerprint({"model": model_fp, "processor": _processor_config(processor)})


def _prompt(adapter, processor, sample, prompt_styles):
    question = build_question(sample, style_for(sample, prompt_styles))
    return adapter.build_prompt(processor, question, with_image=sample.image is not None)


def _plan(run, samples, prompt_styles):
    items = []
    for sample in samples:
        prompt = _prompt(run.adapter, run.processor, sample, prompt_styles)
        item = _Item(sample, prompt)
        sample_fp = sample_fingerprint(sample, prompt)
        for masked in run.mask_sets:
            item.keys[masked] = record_key(run.model_fp, sample_fp, masked, run.settings_fp)
        item.feature_key = f"{run.encoder_fp}:{sample_fp}"
        items.append(item)
    return items


class RecordKeys:
    """The record keys :func:`evaluate` files its results under, without evaluating anything.

    Lets a caller (``encslim rank``) look its results up in a records file before deciding what
    to evaluate; the records stay the one per-sample cache. Arguments as for :func:`evaluate` (the
    mask mode of ``settings`` is the one :meth:`keys` is given).
    """

    evaluator_writes = True  # evaluate() files these records itself when given a records path

    def __init__(self, loaded, samples, settings=EvalSettings()):
        model, processor, adapter = loaded
        self.processor, self.settings = processor, settings
        self.model, self.adapter = model, adapter
        self.model_fp = model_fingerprint(model)
        self.sample_fps = [sample_fingerprint(s, _prompt(adapter, processor, s, settings.prompt_styles))
                           for s in samples]
        self._settings = {}

    def settings_fp(self, mask_mode):
        if mask_mode not in self._settings:
            settings = replace(self.settings, mask_mode=mask_mode)
            if settings.token_budget is None:  # the model's own budget (in its config), as evaluate() keys it
                fields = _settings(self.processor, settings, self.model.config)
            else:
                with self.adapter.token_budget(self.model, self.processor, settings.token_budget):
                    fields = _settings(self.processor, settings, self.model.config)
            self._settings[mask_mode] = settings_fingerprint(fields)
        return self._settings[mask_mode]

    def keys(self, masked, mask_mode):
        """The key of every sample's record under ``masked`` (in sample order)."""
        settings_fp = self.settings_fp(mask_mode)
        return [record_key(self.model_fp, fp, frozenset(masked), settings_fp) for fp in self.sample_fps]


def _batches(items, batch_size, mcq_mode):
    """Homogeneous batches: image or text-only, logit-MCQ or generated; input order kept per group."""
    groups = {}
    for item in items:
        kind = (item.sample.image is not None, item.sample.metric == "mcq" and mcq_mode == "logits")
        groups.setdefault(kind, []).append(item)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _run_batch(run, items, done):
    """Records of every pending (sample, mask set) of one batch."""
    pending = {m: [i for i, it in enumerate(items) if it.keys[m] not in done] for m in run.mask_sets}
    pending = {m: rows for m, rows in pending.items() if rows}
    if items[0].sample.image is None:
        # no image: no mask can change the answer, so answer once and record it under each mask set
        rows = sorted({i for r in pending.values() for i in r})
        answers = dict(zip(rows, _answer(run, [items[i] for i in rows], _text_inputs(run, items, rows), {}, frozenset())))
        return [_record(run, items[i], m, answers[i]) for m, r in pending.items() for i in r]
    features = _batch_features(run, items, list(pending)) if run.feature_cache else None
    records = []
    for masked, rows in pending.items():
        inputs, cached = (_cached_inputs(run, items, rows, masked, features) if run.feature_cache
                          else _pixel_inputs(run, items, rows, masked))
        predictions = _answer(run, [items[i] for i in rows], inputs, cached, masked)
        records += [_record(run, items[i], masked, p) for i, p in zip(rows, predictions)]
    return records


def _batch_features(run, items, mask_sets):
    """``{slot: (B, N, D)}`` of the slots some mask set keeps: encoded now, or from the run-wide store."""
    slots = slots_needed(run.adapter.slot_names(run.model.config), mask_sets)

    def encode(rows, wanted):
        run.counter.add(len(wanted) * len(rows))
        return encode_images(run.model, run.processor, run.adapter, [items[i].sample.image for i in rows],
                             [items[i].prompt for i in rows], wanted)

    if run.store is None:
        return encode(range(len(items)), slots)
    return run.store.batch([it.feature_key for it in items], slots, encode, run.model.device)


def _text_inputs(run, items, rows, masked=frozenset()):
    prompts = [items[i].prompt for i in rows]
    images = [items[i].sample.image for i in rows]
    with_images = getattr(run.adapter, "image_text_inputs", None)  # text that depends on the images (tiles)
    if with_images is not None and all(im is not None for im in images):
        batch = with_images(run.processor, images, prompts, masked=masked, mask_mode=run.mask_mode)
    else:
        batch = run.adapter.prepare_batch(run.processor, None, prompts, masked=masked, mask_mode=run.mask_mode)
    device = run.model.device
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def _cached_inputs(run, items, rows, masked, features):
    inputs = _text_inputs(run, items, rows, masked)
    if len(rows) != len(items):
        index = torch.tensor(rows, device=next(iter(features.values())).device) if features else None
        features = {k: v.index_select(0, index) for k, v in features.items()}
    if run.mask_mode != "removal":
        features = with_placeholders(features, run.adapter, run.model.config, len(rows), run.model.device,
                                     run.model.dtype)
    return inputs, features


def _pixel_inputs(run, items, rows, masked):
    batch = run.adapter.prepare_batch(run.processor, [items[i].sample.image for i in rows],
                                      [items[i].prompt for i in rows], masked=masked, mask_mode=run.mask_mode)
    inputs = {k: v.to(run.model.device) for k, v in batch.items()}
    return inputs, None


def _answer(run, items, inputs, features, masked):
    """Answers of one batch: ``features`` cached, or None to encode the pixels in ``inputs``."""
    common = {"masked": masked, "mask_mode": run.mask_mode, "mask_values": run.mask_values}
    loaded = Loaded(run.model, run.processor, run.adapter)
    if items[0].sample.metric == "mcq" and run.mcq_mode == "logits":
        return choose_options(loaded, features, inputs, [it.sample.options for it in items], **common)
    return generate_texts(loaded, features, inputs, run.max_new_tokens, **common)


def _record(run, item, masked, prediction):
    s = item.sample
    return {
        "key": item.keys[masked], "model": run.model_fp, "settings": run.settings_fp, "sample_id": s.id,
        "dataset": s.dataset, "category": s.category, "metric": s.metric, "masked": sorted(masked),
        "mask_mode": run.mask_mode, "prompt_id": prompt_id(item.prompt), "prediction": prediction,
        "answers": s.answers, "score": score(s.metric, prediction, s.answers, s.options, s.category),
        "rank": run.rank,
    }


def _result(items, records, mask_sets, mask_mode, passes, evaluated, total):
    scores = {m: {} for m in mask_sets}
    predictions = {m: {} for m in mask_sets}
    for item in items:
        for masked in mask_sets:
            record = records[item.keys[masked]]
            scores[masked][item.sample.id] = float(record["score"])
            predictions[masked][item.sample.id] = record["prediction"]
    categories = {it.sample.id: it.sample.category for it in items}
    return EvalResult(mask_sets=list(mask_sets), scores=scores, predictions=predictions, categories=categories,
                      encoder_passes=passes, mask_mode=mask_mode, evaluated=evaluated, encoder_passes_total=total)


def _progress(batches, n_mask_sets, enabled):
    """A bar over (sample, mask set) pairs, drawn only on a terminal (see :mod:`encslim.runtime`)."""
    from ..runtime import progress_bar

    total = sum(len(b) for b in batches) * n_mask_sets
    return progress_bar(total=total, desc=f"evaluate {n_mask_sets} mask set{'s' if n_mask_sets != 1 else ''}",
                        unit="eval", progress=enabled, leave=False)

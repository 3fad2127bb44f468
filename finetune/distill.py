"""Distillation from the full model: the pruned student learns the teacher's answer distribution.

``encslim finetune PRUNED --distill-from FULL`` trains on

    loss = (1 - a) * CE(labels) + a * T^2 * KL(teacher_T || student_T) [+ h * MSE(fused image tokens)]

with ``a`` = ``distill_weight``, ``T`` = ``distill_temperature`` and ``h`` = ``distill_hidden_weight``.
The KL is token-level, on the answer tokens only (the positions the label loss learns), averaged
over them.

**Teacher targets are computed once.** The full model runs on each training example (its own
prompt ids, built from the same question text, so it sees the same prompt tokens; only a class-B
teacher has more image tokens) and its log-probabilities at the answer positions are kept in host
memory, keyed by example, and fed through the collator. When the run will see every example,
that is one pass over the data before training, after which the teacher is freed; when
``max_steps`` lets it draw fewer examples than the file holds, the teacher stays loaded and runs
on each example the first time a batch draws it (``finetune.json``: ``targets: on demand`` and how
many it computed; the data loader reads one batch ahead, so a few more than were trained on). So a distilled run costs at most one teacher forward per example it trains on,
then exactly the steps of plain LoRA. What is stored per answer token:

* the full vocabulary's log-probabilities when the vocabulary has at most
  :data:`FULL_VOCAB_MAX` tokens (the tiny and demo models) or ``distill_top_k`` is 0;
* otherwise the ``distill_top_k`` (default 64) most probable tokens' log-probabilities and the
  log of the remaining mass (the *renormalised tail*): the KL is then taken over ``k + 1`` bins,
  the top-k tokens and one bin holding everything else, for teacher and student alike.

The targets must fit in memory (``distill_memory_gb``, checked before the teacher runs);
computing them on the fly during training is not implemented.

**Hidden-state loss** (``distill_hidden_weight > 0``): the fused image tokens the LLM receives
(the rows of ``inputs_embeds`` at the image-token positions) of student and teacher are compared
by mean squared error, where the shapes allow: same number of image tokens and same width, i.e.
fusion classes A1/A2/C; class B (token concatenation) loses tokens with every removed encoder, so
the term is skipped there (recorded in ``finetune.json``). It needs the stock
:meth:`Adapter.train_forward` (the student's embeddings are taken from ``adapter.embed``); a
family that overrides it gets the KL term only.

Student and teacher must share the tokenizer: identical vocabularies, else ``ConfigError``.
"""

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .collator import pad_right
from .inputs import data_paths, load_training_samples, model_examples

logger = logging.getLogger(__name__)

FULL_VOCAB_MAX = 4096  # vocabularies up to this size are stored whole
DEFAULT_TOP_K = 64


class TeacherTargets:
    """The teacher's answer distributions (and optionally fused image tokens), one entry per example.

    Attributes:
        logp: per example an ``(A, k)`` float tensor of log-probabilities (at the temperature).
        index: per example an ``(A, k)`` long tensor of token ids, or ``None`` for the full vocabulary.
        tail: per example an ``(A,)`` tensor: log of the probability outside the top k (``None`` when full).
        hidden: per example a ``(T, H)`` tensor of the fused image tokens, or ``None``.
        vocab_size: the teacher's vocabulary size.
        top_k: ``None`` for the full vocabulary, else k.
        temperature: the temperature the log-probabilities are taken at.
    """

    def __init__(self, logp, index, tail, hidden, vocab_size, top_k, temperature, fill=None):
        self.logp, self.index, self.tail, self.hidden = logp, index, tail, hidden
        self.vocab_size, self.top_k, self.temperature = vocab_size, top_k, temperature
        self.fill = fill  # on demand: fill(indices) -> (logp, index, tail, hidden) lists for them

    @property
    def mode(self):
        return "on demand" if self.fill is not None else "precomputed"

    @property
    def computed(self):
        """How many examples' targets the teacher has computed so far."""
        return sum(1 for t in self.logp if t is not None)

    def __len__(self):
        return len(self.logp)

    @property
    def nbytes(self):
        total = 0
        for group in (self.logp, self.index, self.tail, self.hidden):
            total += sum(t.numel() * t.element_size() for t in (group or []) if t is not None)
        return total

    def _ensure(self, indices):
        missing = sorted({i for i in indices if self.logp[i] is None})
        if not missing:
            return
        logp, index, tail, hidden = self.fill(missing)
        for k, i in enumerate(missing):
            self.logp[i] = logp[k]
            if self.index is not None:
                self.index[i], self.tail[i] = index[k], tail[k]
            if self.hidden is not None:
                self.hidden[i] = hidden[k]

    def batch(self, indices):
        """The targets of ``indices`` padded to the longest answer: a dict of tensors for the collator
        (computed by the teacher first where they are not yet, in on-demand mode)."""
        self._ensure(indices)
        rows = [self.logp[i] for i in indices]
        width = rows[0].shape[-1]
        longest = max(r.shape[0] for r in rows)
        out = {"logp": torch.zeros(len(rows), longest, width), "mask": torch.zeros(len(rows), longest,
                                                                                    dtype=torch.bool)}
        if self.index is not None:
            out["index"] = torch.zeros(len(rows), longest, width, dtype=torch.long)
            out["tail"] = torch.zeros(len(rows), longest)
        for row, i in enumerate(indices):
            n = self.logp[i].shape[0]
            out["logp"][row, :n] = self.logp[i]
            out["mask"][row, :n] = True
            if self.index is not None:
                out["index"][row, :n] = self.index[i]
                out["tail"][row, :n] = self.tail[i]
        if self.hidden is not None:
            out["hidden"] = torch.stack([self.hidden[i] for i in indices])
        return out


def target_bytes(examples, vocab_size, top_k, hidden_shape=None):
    """Bytes the teacher targets of ``examples`` take in memory (before they are computed)."""
    tokens = sum(len(e.answer_ids) for e in examples)
    per_token = vocab_size * 4 if top_k is None else top_k * (4 + 8) + 4
    hidden = len(examples) * math.prod(hidden_shape) * 4 if hidden_shape else 0
    return tokens * per_token + hidden


def resolve_top_k(vocab_size, top_k):
    """``None`` (store the full vocabulary) or the k to store; see the module docstring."""
    if top_k is None:
        return None if vocab_size <= FULL_VOCAB_MAX else DEFAULT_TOP_K
    if top_k == 0 or top_k >= vocab_size:
        return None
    return int(top_k)


def check_same_tokenizer(student_adapter, student_processor, teacher_adapter, teacher_processor, teacher_path):
    """Raise ``ConfigError`` unless student and teacher tokenize identically (same vocabulary)."""
    student = student_adapter.tokenizer(student_processor)
    teacher = teacher_adapter.tokenizer(teacher_processor)
    s_vocab, t_vocab = _vocab(student), _vocab(teacher)
    if s_vocab != t_vocab:
        differ = len(set(s_vocab.items()) ^ set(t_vocab.items()))
        raise ConfigError(f"--distill-from {teacher_path} has another vocabulary than the student ({len(t_vocab)} vs "
                          f"{len(s_vocab)} tokens, {differ} entries differ); distil from the model the student was "
                          "pruned from, which shares its tokenizer")


def _vocab(tokenizer):
    try:
        return dict(tokenizer.get_vocab())
    except (AttributeError, NotImplementedError):
        return {str(i): i for i in range(len(tokenizer))}


def _pixel_batch(model, processor, adapter, examples):
    tokenizer = adapter.tokenizer(processor)
    batch = pad_right([e.prompt_ids for e in examples], [e.answer_ids for e in examples], tokenizer.pad_token_id)
    batch.update(adapter.pixel_inputs(processor, [e.image for e in examples]))
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def answer_positions(labels):
    """``(positions, mask)``: per row, the logit positions that predict each answer token, in order.

    ``labels`` is ``(B, L)`` with ``-100`` off the answer; the logit at ``t - 1`` predicts token ``t``.
    """
    answer = labels != -100
    counts = answer.sum(1)
    longest = int(counts.max()) if counts.numel() else 0
    positions = torch.zeros(labels.shape[0], max(longest, 1), dtype=torch.long, device=labels.device)
    mask = torch.zeros_like(positions, dtype=torch.bool)
    for row in range(labels.shape[0]):
        where = torch.nonzero(answer[row], as_tuple=False).flatten() - 1
        positions[row, : where.numel()] = where
        mask[row, : where.numel()] = True
    return positions, mask


@torch.no_grad()
def answer_log_probs(model, processor, adapter, examples, temperature=1.0, batch_size=16, hidden=False):
    """Per example: log-probabilities ``(A, V)`` at its answer positions, and (``hidden``) its fused
    image tokens ``(T, H)``. The model runs in eval mode on the full prompt with every slot present."""
    was_training = model.training
    model.eval()
    image_token_id = adapter.image_token_id(model.config)
    logps, hiddens = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = _pixel_batch(model, processor, adapter, chunk)
        features = adapter.encode(model, batch)
        embeds = adapter.embed(model, features, batch, frozenset(), "removal")
        out = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits.float()
        positions, mask = answer_positions(batch["labels"])
        for row in range(len(chunk)):
            n = int(mask[row].sum())
            picked = logits[row, positions[row, :n]]
            logps.append(F.log_softmax(picked / temperature, dim=-1).cpu())
            if hidden:
                hiddens.append(embeds[row][batch["input_ids"][row] == image_token_id].float().cpu())
    model.train(was_training)
    return logps, (hiddens if hidden else None)


def compute_teacher_targets(teacher_path, samples, student, config, build, device="cpu"):
    """Run the full model once over the training samples: :class:`TeacherTargets`.

    Args:
        teacher_path: the full model's folder.
        samples: the training samples (the teacher builds its own prompts from them).
        student: ``(model, processor, adapter, examples)`` of the student.
        config: the :class:`~encslim.finetune.config.FinetuneConfig`.
        build: ``build(samples, processor, adapter, model)`` -> the teacher's examples.
        device: where the teacher runs.

    Raises:
        ConfigError: another vocabulary, answers tokenized differently, or targets over the memory limit.
    """
    from ..models.loading import load_model

    s_model, s_processor, s_adapter, s_examples = student
    teacher, t_processor, t_adapter = load_model(teacher_path, device=device)
    check_same_tokenizer(s_adapter, s_processor, t_adapter, t_processor, teacher_path)
    t_examples = build(samples, t_processor, t_adapter, teacher)
    bad = [s.id for s, t in zip(s_examples, t_examples) if s.answer_ids != t.answer_ids]
    if bad:
        raise ConfigError(f"--distill-from {teacher_path}: {len(bad)} answer(s) tokenize differently for the teacher "
                          f"(first '{bad[0]}'); distil from the model the student was pruned from")
    vocab = _lm_vocab(teacher)
    s_vocab = _lm_vocab(s_model)
    if vocab != s_vocab:
        raise ConfigError(f"--distill-from {teacher_path}: its LM head has {vocab} outputs, the student's {s_vocab}; "
                          "distil from the model the student was pruned from")
    top_k = resolve_top_k(vocab, config.distill_top_k)
    hidden_shape, hidden_note = _hidden_shape(s_model, s_adapter, teacher, t_adapter, config)
    used = samples_used(config, len(t_examples))
    need = target_bytes(t_examples, vocab, top_k, hidden_shape) * min(1.0, used / max(1, len(t_examples)))
    limit = config.distill_memory_gb * 2**30
    if need > limit:
        raise ConfigError(f"the teacher's targets would take {need / 2**30:.2f} GiB, over --distill-memory-gb "
                          f"{config.distill_memory_gb:g}; lower --distill-top-k or raise --distill-memory-gb")
    on_demand = used < len(t_examples)
    logger.info("teacher %s: %d examples, %s, about %.1f MB, %s", teacher_path, len(t_examples),
                "full vocabulary" if top_k is None else f"top-{top_k} + tail", need / 1e6,
                f"on demand (the run sees at most {used} of them)" if on_demand else "computed now")

    def fill(indices):
        logps, hiddens = answer_log_probs(teacher, t_processor, t_adapter, [t_examples[i] for i in indices],
                                          config.distill_temperature, config.feature_batch_size,
                                          hidden=hidden_shape is not None)
        return (*_stored(logps, top_k), hiddens)

    n = len(t_examples)
    empty = [None] * n
    targets = TeacherTargets(list(empty), None if top_k is None else list(empty),
                             None if top_k is None else list(empty), None if hidden_shape is None else list(empty),
                             vocab, top_k, config.distill_temperature, fill=fill)
    if not on_demand:  # every example will be seen: one pass now, then the teacher is freed
        targets._ensure(range(n))
        targets.fill = None
        del teacher
    targets.hidden_note = hidden_note
    return targets


def samples_used(config, n_examples):
    """The most training examples a run can draw: all of them, or ``max_steps`` x batch x
    accumulation x processes when that is fewer (the examples are drawn at random)."""
    if not config.max_steps:
        return n_examples
    import os

    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    return min(n_examples, config.max_steps * config.batch_size * config.grad_accum * world)


def _stored(logps, top_k):
    """``(logp, index, tail)`` as stored: the full rows, or the top-k values, their ids and the tail bin."""
    if top_k is None:
        return logps, None, None
    index, tail, kept = [], [], []
    for lp in logps:
        values, ids = lp.topk(top_k, dim=-1)
        kept.append(values)
        index.append(ids)
        tail.append(torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-7)))
    return kept, index, tail


def _lm_vocab(model):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    text = getattr(model.config, "text_config", model.config)
    return int(text.vocab_size)


def _hidden_shape(student, s_adapter, teacher, t_adapter, config):
    """``((T, H) or None, note)``: whether the fused image tokens can be compared."""
    from ..models.adapter import Adapter

    if not config.distill_hidden_weight:
        return None, "off"
    if type(s_adapter).train_forward is not Adapter.train_forward:
        return None, f"skipped: the {s_adapter.model_type} adapter has its own train_forward"
    t_tokens, s_tokens = t_adapter.image_tokens(teacher.config), s_adapter.image_tokens(student.config)
    t_width = getattr(getattr(teacher.config, "text_config", teacher.config), "hidden_size", None)
    s_width = getattr(getattr(student.config, "text_config", student.config), "hidden_size", None)
    if t_tokens != s_tokens or t_width != s_width:
        return None, (f"skipped: the teacher has {t_tokens} image tokens of width {t_width}, the student "
                      f"{s_tokens} of width {s_width}")
    return (t_tokens, t_width), "on"


def student_forward(adapter, model, inputs, base, want_hidden):
    """The student's training forward: ``(outputs, fused image tokens (B, T, H) or None)``.

    Without ``want_hidden`` this is ``adapter.train_forward``; with it, the same steps as the stock
    ``train_forward`` (encode, embed, LLM) keeping the embeddings.
    """
    if not want_hidden:
        return adapter.train_forward(model, inputs, base=base), None
    embeds, inputs, labels, masked = adapter.train_embeds(base, inputs)
    outputs = adapter.lm_forward(model, inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=labels)
    image = inputs["input_ids"] == adapter.image_token_id(base.config)
    counts = image.sum(1)
    if masked or counts.numel() == 0 or bool((counts != counts[0]).any()):
        return outputs, None
    return outputs, embeds[image].reshape(embeds.shape[0], int(counts[0]), embeds.shape[-1])


def kl_to_targets(student_logits, labels, targets, temperature):
    """Mean over answer tokens of KL(teacher || student) at ``temperature`` (token-level).

    Args:
        student_logits: ``(B, L, V)``.
        labels: ``(B, L)``, ``-100`` off the answer.
        targets: a batch of :meth:`TeacherTargets.batch`, on the logits' device.
    """
    positions, mask = answer_positions(labels)
    picked = torch.gather(student_logits, 1, positions.unsqueeze(-1).expand(-1, -1, student_logits.shape[-1]))
    logq = F.log_softmax(picked.float() / temperature, dim=-1)
    logp = targets["logp"].to(logq)
    width = min(logp.shape[1], logq.shape[1])
    logp, logq, mask = logp[:, :width], logq[:, :width], (mask[:, :width] & targets["mask"][:, :width].to(mask.device))
    if "index" in targets:
        logq_k = torch.gather(logq, -1, targets["index"][:, :width].to(logq.device))
        tail_p = targets["tail"][:, :width].to(logq)
        tail_q = torch.log1p(-logq_k.exp().sum(-1).clamp(max=1 - 1e-6))
        kl = (logp.exp() * (logp - logq_k)).sum(-1) + tail_p.exp() * (tail_p - tail_q)
    else:
        kl = (logp.exp() * (logp - logq)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def distill_loss(ce, outputs, labels, targets, config, student_hidden=None):
    """``(loss, parts)``: the combined loss of the module docstring and its parts as floats."""
    T, a = config.distill_temperature, config.distill_weight
    kl = kl_to_targets(outputs.logits, labels, targets, T)
    loss = (1 - a) * ce + a * T * T * kl
    parts = {"ce": float(ce.detach()), "kl": float(kl.detach())}
    if student_hidden is not None and "hidden" in targets and config.distill_hidden_weight:
        teacher_hidden = targets["hidden"].to(student_hidden)
        if teacher_hidden.shape == student_hidden.shape:
            mse = F.mse_loss(student_hidden, teacher_hidden)
            loss = loss + config.distill_hidden_weight * mse
            parts["hidden_mse"] = float(mse.detach())
    return loss, parts


def teacher_kl(student_path, teacher_path, data, prompt_format="eval", batch_size=16):
    """Mean token-level KL(teacher || student) at temperature 1 on the answers of ``data``.

    The measure distillation optimises, for checking a recovered model against its full model.
    Both are model folders (a LoRA run: its ``--merge`` output).
    """
    from ..models.loading import load_model

    samples = load_training_samples(data, data_paths(data))
    student, s_processor, s_adapter = load_model(student_path)
    teacher, t_processor, t_adapter = load_model(teacher_path)
    check_same_tokenizer(s_adapter, s_processor, t_adapter, t_processor, teacher_path)
    s_examples = model_examples(student, s_processor, s_adapter, samples, prompt_format)
    t_examples = model_examples(teacher, t_processor, t_adapter, samples, prompt_format)
    q, _ = answer_log_probs(student, s_processor, s_adapter, s_examples, 1.0, batch_size)
    p, _ = answer_log_probs(teacher, t_processor, t_adapter, t_examples, 1.0, batch_size)
    total = sum(float((lp.exp() * (lp - lq)).sum()) for lp, lq in zip(p, q))
    return total / sum(lp.shape[0] for lp in p)

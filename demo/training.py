"""The trained demo model: a tiny four-encoder native model whose specialization is known.

Its encoders see the image differently (DESIGN §7):

========  ===========  =======  =====================================================
slot      backbone     input    what it can see in the 128 px demo images
========  ===========  =======  =====================================================
siglip    SigLIP ViT   32 px    colours, shapes, counts, positions; no printed digits
vit       ViT /16      128 px   everything, including the printed digits
convnext  ConvNeXt     32 px    like siglip
clip      CLIP ViT     16 px    colours and coarse layout only
========  ===========  =======  =====================================================

The digits are printed as a 2x2 checkerboard emboss (:mod:`encslim.demo.data`) that
averages to the background in any downscaled view, so OCR & Chart can only be carried by
``vit``, while General and Vision-centric are seen by several encoders (redundancy). Fusion is
channel concat with a Linear-first projector (class A1): masking a slot (zeroing its channel
slice) is exactly removing it.

Training has two stages, as LLaVA-style models are built: each vision tower is first pretrained
on its own (a linear probe per image task on its slot features; the stand-in for the pretraining
real encoders come with), then the towers are frozen and the projector and LLM learn to answer,
with **encoder dropout** (each slot's features zeroed per sample with probability
``encoder_dropout``, the removal mask), so a redundant encoder can be masked at little cost,
and with **nested token budgets** (half of the batches read the fused 8x8 grid pooled to 1x2 or
2x2 windows), so a token budget removes what pooling destroys and nothing more: the order of a
number's two digits (OCR & Chart), not one large object's colour or shape (General).
"""

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from .data import DEMO_CATEGORIES, demo_corpus, iter_samples
from .evaluate import evaluate_demo, format_question, mask_label
from ..models.tokens import TokenBudget, reduce_grids

logger = logging.getLogger(__name__)

HIRES_SLOT = "vit"
# Normalisation: the demo images are mostly light, so the low-resolution slots centre their
# statistics (objects stand out from the first step); the high-resolution slot centres mid-grey,
# the ground of the printed digits, whose +-115 grey-level checkerboard then starts out strong.
LIGHT, GREY = {"image_mean": [0.88] * 3, "image_std": [0.21] * 3}, {"image_mean": [0.5] * 3, "image_std": [0.25] * 3}
_VIT = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4}
DEMO_ENCODERS = [
    {"name": "siglip", "image_size": 32, **LIGHT,
     "vision_config": {"model_type": "siglip_vision_model", **_VIT, "patch_size": 4}},
    {"name": "vit", "image_size": 128, **GREY,
     "vision_config": {"model_type": "vit", **_VIT, "num_hidden_layers": 4, "patch_size": 16}},
    {"name": "convnext", "image_size": 32, **LIGHT,
     "vision_config": {"model_type": "convnext", "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1],
                       "num_stages": 3, "patch_size": 2, "layer_scale_init_value": 1.0}},
    {"name": "clip", "image_size": 16, **LIGHT,
     "vision_config": {"model_type": "clip_vision_model", **_VIT, "patch_size": 2}},
]
# Two decoder layers over 64 image tokens: the prefill of the image tokens costs about as much as the
# high-resolution tower (`encslim.models.costs`), so a token budget buys about one tower's FLOPs.
DEMO_TEXT = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
             "tie_word_embeddings": False}
DEMO_GRID = 8  # image tokens: DEMO_GRID**2, one per 16x16 px cell of the 128 px image
META_FILE = "demo_meta.json"
LOSS_PLOT = "loss.png"


@dataclass
class DemoTrainConfig:
    """How the demo model is trained (two stages, as LLaVA-style models are built).

    Stage 1 pretrains each vision tower on its own, with a linear probe per image task on its
    slot features (the stand-in for the CLIP/SigLIP pretraining real encoders come with). Stage 2
    freezes the towers and trains the fusion projector and the LLM on all four categories, with
    encoder dropout.

    Attributes:
        seed: seeds the data streams, the weights and every random draw of training.
        encoder_steps: stage-1 steps (vision towers and their probes).
        encoder_lr: peak AdamW learning rate of stage 1.
        steps: stage-2 steps (fusion projector and LLM; towers frozen).
        batch_size: samples per step (one fresh batch of generated samples per step).
        lr: peak AdamW learning rate of stage 2.
        weight_decay: AdamW weight decay on matrices.
        warmup: linear warm-up steps of each stage, then cosine decay to 10 % of the peak.
        encoder_dropout: per-sample probability of masking each slot in stage 2.
        ocr_weight: stage-2 loss weight of OCR & Chart samples relative to the others.
        aux_weight: weight of the stage-2 probe loss on the fused image tokens.
        budget_share: share of stage-2 batches run under a reduced token budget (pooled grid).
        budgets: the pool budgets such a batch draws from, uniformly (nested pooling, as Matryoshka
            Multimodal Models train, Cai et al. 2024): the pooled grids are in distribution.
        n_eval: evaluation samples (the ``eval`` split of the same seed).
        threads: torch CPU threads.
    """

    seed: int = 0
    encoder_steps: int = 400
    encoder_lr: float = 2e-3
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 30
    encoder_dropout: float = 0.25
    ocr_weight: float = 1.5
    aux_weight: float = 1.0
    budget_share: float = 0.5
    budgets: tuple = (0.5, 0.25)
    n_eval: int = 400
    threads: int = 2


def build_demo_model(seed=0):
    """``(model, processor)``: the untrained demo architecture, weights drawn from ``seed``.

    The native family's classes come through the registry and transformers' Auto classes (no stage
    imports a family package).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from ..models.registry import get_family, resolve
    from ..models.tokenizer import build_tokenizer

    resolve(get_family("native").transformers)()  # registers model_type "encslim" with the Auto classes
    tokenizer = build_tokenizer(corpus=demo_corpus(), vocab_size=1024)
    text = dict(DEMO_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model("encslim", text_config=text, encoders=[dict(e) for e in DEMO_ENCODERS],
                           fusion={"type": "channel_concat", "projector": "linear_first", "grid": DEMO_GRID},
                           image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, PROCESSOR_MAPPING[type(config)].from_config(tokenizer, config)


def make_batch(processor, samples, rng, image_tokens=None):
    """Tokenize prompts and answers (loss on answer tokens only) and process the images.

    ``image_tokens``: placeholders per image (default: the processor's count).
    Returns ``(input_ids, attention_mask, labels, pixels {slot: tensor})``; left padding.
    """
    tok = processor.tokenizer
    rows = []
    for s in samples:
        prompt = processor.build_prompt(format_question(s, rng))
        if image_tokens is None:
            prompt = processor.expand_image_tokens(prompt)
        else:
            prompt = prompt.replace(processor.image_token, processor.image_token * image_tokens)
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        answer_ids = tok(" " + s["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention[i, width - len(ids):] = 1
        labels[i, width - len(ids):] = torch.tensor(lab)
    pixels = processor.preprocess_images([s["image"] for s in samples])
    return input_ids, attention, labels, pixels


def sample_loss(logits, labels):
    """Mean cross-entropy over each sample's answer tokens: ``(B,)``."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
    ).view(shift_labels.shape)
    counts = (shift_labels != -100).sum(1).clamp(min=1)
    return token_loss.sum(1) / counts


# Auxiliary probe labels per image task: the probe reads the mean of the fused image tokens.
AUX_LABELS = {
    "colour": ("blue", "green", "orange", "purple", "red", "yellow"),
    "shape": ("circle", "square", "triangle", "diamond"),
    "count": ("1", "2", "3", "4", "5"),
    "position": ("left", "right", "above", "below"),
    "number": tuple(str(n) for n in range(10, 100)),
}
AUX_TASK = {"chart": "number", "digit": "number"}


def aux_targets(samples):
    """``(task_index, label_index)`` tensors for the probe; ``-1`` where a sample has none."""
    tasks = list(AUX_LABELS)
    task_ids, label_ids = [], []
    for s in samples:
        task = AUX_TASK.get(s["task"], s["task"])
        if task in AUX_LABELS and s["answer"] in AUX_LABELS[task] and not s["options"]:
            task_ids.append(tasks.index(task))
            label_ids.append(AUX_LABELS[task].index(s["answer"]))
        else:
            task_ids.append(-1)
            label_ids.append(-1)
    return torch.tensor(task_ids), torch.tensor(label_ids)


class AuxProbe(torch.nn.Module):
    """One linear classifier per image task on the fused image tokens, flattened (training only)."""

    def __init__(self, hidden, tokens):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden * tokens, len(v)) for v in AUX_LABELS.values())

    def forward(self, image_embeds, task_ids, label_ids):
        flat = image_embeds.flatten(1)
        losses = []
        for t, head in enumerate(self.heads):
            rows = task_ids == t
            if rows.any():
                losses.append(torch.nn.functional.cross_entropy(head(flat[rows]), label_ids[rows], reduction="sum"))
        if not losses:
            return image_embeds.new_zeros(())
        return torch.stack(losses).sum() / (task_ids >= 0).sum()


def _adamw(named_params, lr, weight_decay):
    decay = [p for _, p in named_params if p.ndim >= 2]
    no_decay = [p for _, p in named_params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def lr_factor(step, total, warmup):
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _step(optimizer, loss, params, base_lr, factor):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
    optimizer.step()


IMAGE_CATEGORIES = ["OCR & Chart", "General", "Vision-centric"]


def train_steps(model, processor, config, steps=None, progress=None):
    """Train ``model`` in place, both stages; return the loss per step (stage 1, then stage 2).

    ``steps`` stops after that many steps in all (default: both stages in full), for tests.

    Stage 1 (``config.encoder_steps``): each vision tower gets its own linear probe per image
    task (colour, shape, count, position, number) on its flattened slot features; the towers learn
    what their view of the image shows, and nothing else: a 32 px tower cannot learn to read
    the embossed digits, which vanish at that resolution. Trained jointly with the LLM from
    scratch instead, the towers co-adapt and reading rarely takes off.

    Stage 2 (``config.steps``): the towers are frozen; the fusion projector and the LLM learn to
    answer all four categories (loss on the answer tokens, OCR & Chart weighted by
    ``config.ocr_weight``), each slot masked per sample with probability
    ``config.encoder_dropout`` (the removal mask), so no answer depends on one slot when another
    sees the same thing. A linear probe per image task on the fused image tokens (weight
    ``config.aux_weight``, discarded afterwards) gives the projector a direct signal. A share
    ``config.budget_share`` of the batches runs under a pool budget drawn from ``config.budgets``:
    the fused grid is average-pooled after projection (``models.tokens.reduce_grids``, as the
    model does under ``config.token_budget``) and the prompt holds as many placeholders, so the
    LLM learns to read pooled grids too (what survives pooling is then the data's doing).
    """
    from ..runtime import progress_bar

    total = config.encoder_steps + config.steps
    steps = total if steps is None else min(steps, total)
    torch.manual_seed(config.seed + 1)
    rng = random.Random(f"encslim-demo-train-{config.seed}")
    losses = []
    # drawn on a terminal only (and not when progress is False): a log file gets no bar
    with progress_bar(total=steps, desc="demo model", unit="step", progress=progress, mininterval=1.0) as bar:
        model.train()
        n1 = min(steps, config.encoder_steps)
        _train_towers(model, processor, config, n1, losses, bar)
        _train_fusion(model, processor, config, steps - n1, rng, losses, bar)
    model.requires_grad_(True)
    model.eval()
    return losses


def _train_towers(model, processor, config, n_steps, losses, bar):
    """Stage 1: each tower with its own probes (see :func:`train_steps`); appends to ``losses``."""
    slots = model.slot_names
    stream = iter_samples("train", config.encoder_steps * config.batch_size, config.seed, categories=IMAGE_CATEGORIES)
    probes = torch.nn.ModuleDict({s: AuxProbe(model.config.slot_feature_dim(s), model.config.num_image_tokens())
                                  for s in slots})
    named = list(model.vision_towers.named_parameters()) + list(probes.named_parameters())
    optimizer = _adamw(named, config.encoder_lr, config.weight_decay)
    for step in range(n_steps):
        batch = [next(stream) for _ in range(config.batch_size)]
        targets = aux_targets(batch)
        features = model.encode(processor.preprocess_images([s["image"] for s in batch]))
        loss = sum(probes[s](features[s], *targets) for s in slots)
        _step(optimizer, loss, [p for _, p in named], config.encoder_lr,
              lr_factor(step, config.encoder_steps, config.warmup))
        losses.append(loss.item())
        _report(bar, losses, "encoders")


def _train_fusion(model, processor, config, n_steps, rng, losses, bar):
    """Stage 2: towers frozen; fusion + LLM with encoder dropout (see :func:`train_steps`); appends to ``losses``."""
    slots = model.slot_names
    model.vision_towers.requires_grad_(False)
    stream = iter_samples("train", config.steps * config.batch_size, config.seed)
    probe = AuxProbe(model.config.text_config.hidden_size, model.config.num_image_tokens())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(probe.named_parameters())
    optimizer = _adamw(named, config.lr, config.weight_decay)
    grids = [(model.config.fusion["grid"],) * 2]
    for step in range(n_steps):
        batch = [next(stream) for _ in range(config.batch_size)]
        budget = draw_budget(config, rng)
        tokens = sum(budget.tokens_out(g) for g in grids) if budget else None
        input_ids, attention, labels, pixels = make_batch(processor, batch, rng, image_tokens=tokens)
        with torch.no_grad():
            features = model.encode(pixels)
        keep = torch.rand(len(batch), len(slots)) >= config.encoder_dropout
        features = {s: f * keep[:, i, None, None].to(f.dtype) for i, (s, f) in enumerate(features.items())}
        fused = model.fuse(features)
        embeds = merge_image(model, reduce_grids(fused, grids, budget), input_ids)
        logits = model.decode(None, inputs_embeds=embeds, attention_mask=attention).logits
        weights = torch.tensor([config.ocr_weight if s["category"] == "OCR & Chart" else 1.0 for s in batch])
        loss = (sample_loss(logits, labels) * weights).sum() / weights.sum()
        if config.aux_weight:
            loss = loss + config.aux_weight * probe(fused, *aux_targets(batch))
        _step(optimizer, loss, [p for _, p in named], config.lr, lr_factor(step, config.steps, config.warmup))
        losses.append(loss.item())
        _report(bar, losses, "llm")


def draw_budget(config, rng):
    """The token budget of one stage-2 batch: ``None`` (every token), or with probability ``config.budget_share``
    a pool budget drawn uniformly from ``config.budgets``."""
    if config.budget_share and rng.random() < config.budget_share:
        return TokenBudget("pool", rng.choice(list(config.budgets)))
    return None


def merge_image(model, image_embeds, input_ids):
    """The LLM input embeddings: text embeddings with ``image_embeds`` (already reduced) in the ``<image>`` positions."""
    embeds = model.get_input_embeddings()(input_ids)
    positions = (input_ids == model.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(positions, image_embeds.to(embeds.dtype))


def _report(bar, losses, stage):
    bar.update(1)
    if len(losses) % 20 == 1:
        bar.set_postfix(stage=stage, loss=f"{losses[-1]:.3f}")
        logger.info("%s step %d loss %.4f", stage, len(losses) - 1, losses[-1])


def save_loss_plot(losses, path):
    """Write the loss curve (raw and a 25-step moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.4, label="loss")
    k = 25
    if len(losses) >= k:
        smooth = [sum(losses[i - k:i]) / k for i in range(k, len(losses) + 1)]
        ax.plot(range(k - 1, len(losses)), smooth, lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="answer cross-entropy", yscale="log", title="encslim demo model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_demo_model(out, config=None, overwrite=False, progress=None):
    """Train the demo model and write it (weights, config, processor, tokenizer, meta, plot) to ``out``.

    Args:
        out: output folder.
        config: a :class:`DemoTrainConfig` (default: the shipped settings).
        overwrite: replace an existing ``out``.
        progress: show a progress bar (``None``: only on a TTY).

    Returns:
        The ``demo_meta.json`` dict: seed, settings, training seconds, losses, and accuracy per
        category with all encoders and with each single encoder masked.
    """
    config = config or DemoTrainConfig()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train_and_save(out, config, overwrite, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


META_BUDGETS = (0.5, 0.25)  # the pool budgets demo_meta.json reports the full model's accuracy at


def demo_accuracy(model, processor, samples):
    """What ``demo_meta.json`` reports of a trained demo model on ``samples`` (the eval split).

    Returns:
        ``{"accuracy": {mask label: {category: acc}}, "budget_accuracy": {budget label: {category: acc}}}``:
        the full model and each single slot masked, every token; the full model under each pool budget of
        :data:`META_BUDGETS` (label ``"1"`` for every token).
    """
    masks = [()] + [(s,) for s in model.slot_names]
    accuracy = evaluate_demo(model, processor, samples, masks)
    by_budget = {"1": accuracy[()]}
    for value in META_BUDGETS:
        budget = TokenBudget("pool", value)
        by_budget[budget.label] = evaluate_demo(model, processor, samples, token_budget=budget)[()]
    return {"accuracy": {mask_label(m): accuracy[m] for m in masks}, "budget_accuracy": by_budget}


def _train_and_save(out, config, overwrite, progress):
    from .data import generate
    from ..files import atomic_output_dir

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model, processor = build_demo_model(config.seed)
        start = time.perf_counter()
        losses = train_steps(model, processor, config, progress=progress)
        seconds = time.perf_counter() - start
        meta = {"seed": config.seed, "config": asdict(config), "train_seconds": round(seconds, 1),
                "torch": torch.__version__, "categories": DEMO_CATEGORIES, "hires_slot": HIRES_SLOT,
                "first_losses": losses[:5], "losses": [round(v, 5) for v in losses],
                **demo_accuracy(model, processor, generate("eval", config.n_eval, config.seed))}
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        save_loss_plot(losses, tmp / LOSS_PLOT)
    return meta


__all__ = ["DemoTrainConfig", "DEMO_ENCODERS", "HIRES_SLOT", "build_demo_model", "make_batch", "sample_loss",
           "train_steps", "train_demo_model", "save_loss_plot", "lr_factor", "IMAGE_CATEGORIES", "demo_accuracy",
           "draw_budget", "merge_image", "META_BUDGETS"]

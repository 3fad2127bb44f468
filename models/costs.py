"""The analytic cost of a configuration (kept encoder set, visual-token budget): FLOPs per image.

A configuration's cost has three parts, each counted for ONE image and one prompt, computed from
the model's modules and config (no timing, no forward pass beyond what ``vision_flops`` counted).
A tiling family (Eagle2) encodes, projects and reduces every tile: its vision and fusion FLOPs and
image tokens are those of one tile times the mean tile count of the images (``grids``):

* **vision**: the kept slots' encoder FLOPs, as :func:`encslim.models.inspect.vision_flops`
  counts them (``FlopCounterMode`` over one forward per slot); a budget does not change them,
  because the reducers run after fusion and projection.
* **fusion**: ``2 x parameters x tokens`` of the projector (a matmul costs two FLOPs per
  weight per token). Each slot's own share of the fusion (:meth:`Adapter.slot_parameters`:
  its projector columns, its projector, its K/V) runs on that slot's tokens; the shared rest
  of the fusion module runs on the image tokens before any reducer (the reducer comes after
  the projector, so a budget saves no fusion FLOPs). A removed slot's share is gone.
* **prefill**: the LLM's forward over the prompt, ``L = text tokens + image tokens`` where the
  image tokens are those after the reducer (:meth:`Adapter.image_tokens` under the budget):
  ``2 * P * L + 2 * n_layers * L^2 * d``. ``P`` is the LLM's decoder parameters without the
  token embeddings and the output head (an embedding is a lookup, and generation computes the
  head on the last position only), so ``2 * P * L`` counts every dense matmul of every
  layer; ``2 * n_layers * L^2 * d`` (``d`` the attention width, heads x head size) counts the
  causal attention scores and their weighted sum: ``QK^T`` and ``AV`` cost ``2 * L^2 * d``
  each, and under a causal mask half of each is computed.

This is the standard dense-transformer count (Kaplan et al. 2020, "Scaling Laws for Neural
Language Models", section 2.1; the same split into parameter and context terms), which is what
token-reduction papers report as "prefill FLOPs": it makes the token budget's saving visible as
the fall of both terms with ``L``. Decoding after the prefill is not counted (it does not
depend on the image tokens but through the KV length).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tokens import TokenBudget, budget_applied

REMOVAL = "removal"  # costs are those of the model that ships the kept set


@dataclass(frozen=True)
class LanguageModelShape:
    """What the prefill cost needs of the LLM.

    Attributes:
        params: decoder parameters without token embeddings and output head.
        layers: decoder layers.
        width: attention width (heads x head size).
    """

    params: int
    layers: int
    width: int


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        text = getter()
        if getattr(text, "num_hidden_layers", None):
            return text
    for name in ("text_config", "llm_config"):
        sub = getattr(config, name, None)
        if sub is not None and getattr(sub, "num_hidden_layers", None):
            return sub
    return config


def language_model_shape(model: Any, adapter: Any) -> LanguageModelShape:
    """The LLM's decoder parameters (embeddings and head excluded), layers and attention width."""
    import torch

    llm = adapter.parts(model)["language_model"]
    excluded: set[int] = set()
    heads: list[Any] = [m for m in llm.modules() if isinstance(m, torch.nn.Embedding)]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        heads.append(output)
    for module in heads:
        excluded.update(id(p) for p in module.parameters())
    params = sum(p.numel() for p in llm.parameters() if id(p) not in excluded)
    text = _text_config(model.config)
    n_heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return LanguageModelShape(int(params), int(text.num_hidden_layers), int(n_heads * head_dim))


def prefill_flops(shape: LanguageModelShape, length: float) -> float:
    """FLOPs of the LLM's prefill over ``length`` tokens: ``2 P L + 2 n_layers L^2 d`` (module docstring)."""
    return 2.0 * shape.params * length + 2.0 * shape.layers * length * length * shape.width


def fusion_flops(model: Any, adapter: Any, masked: Iterable[str] = ()) -> float:
    """FLOPs of the fusion and projector for one image with ``masked`` slots removed (module docstring)."""
    config = model.config
    gone = frozenset(masked)
    shares = adapter.slot_parameters(model)
    fusion = adapter.parts(model)["fusion"]
    shared = sum(p.numel() for p in fusion.parameters()) - sum(s["fusion"] for s in shares.values())
    tokens = {s.name: s.num_tokens for s in adapter.slots(config)}
    with budget_applied(config, None):  # the projector runs before any reducer
        image_tokens = adapter.image_tokens(config, gone, REMOVAL) if gone < set(tokens) else 0
    own = sum(2.0 * shares[s]["fusion"] * tokens[s] for s in tokens if s not in gone)
    return float(own + 2.0 * max(shared, 0) * image_tokens)


def image_tokens(model: Any, adapter: Any, masked: Iterable[str], budget: TokenBudget | None) -> int:
    """Image tokens the LLM reads per image with ``masked`` slots removed, under ``budget`` (``None``: all)."""
    config = model.config
    gone = frozenset(masked)
    if gone >= set(adapter.slot_names(config)):
        return 0  # no encoder left: the configuration reads no image
    with budget_applied(config, budget if budget is not None and budget.active else None):
        return int(adapter.image_tokens(config, gone, REMOVAL))


def text_tokens(adapter: Any, processor: Any, config: Any, prompts: Sequence[str]) -> float:
    """Mean text tokens of ``prompts`` (chat prompts with their image placeholder), the placeholders not counted."""
    if not prompts:
        return 0.0
    tokenizer = adapter.tokenizer(processor)
    image_id = adapter.image_token_id(config)
    counts = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        counts.append(sum(1 for i in ids if i != image_id))
    return sum(counts) / len(counts)


def configuration_cost(model: Any, adapter: Any, masked: Iterable[str], budget: TokenBudget | None,
                       text_length: float, slot_flops: Mapping[str, float | None],
                       shape: LanguageModelShape | None = None, grids: float = 1.0) -> dict[str, Any]:
    """The cost of one configuration per image and prompt.

    Args:
        model: the model (its config and modules are read; nothing runs).
        adapter: its family adapter.
        masked: the removed slots.
        budget: the token budget (``None`` or budget 1: every token).
        text_length: mean text tokens of the prompts (:func:`text_tokens`).
        slot_flops: ``{slot: vision FLOPs of one forward}`` (``None``: unknown).
        shape: the LLM's :func:`language_model_shape` (computed when not given).
        grids: mean grids per image (:meth:`Adapter.grids_per_image`: an image's tiles for tiling families);
            vision, fusion and image tokens are per grid, so each is multiplied by it.

    Returns:
        ``{"image_tokens", "cost": {"vision_flops", "fusion_flops", "prefill_flops", "total_flops"}}``;
        vision and total are ``None`` when a kept slot's vision FLOPs are unknown.
    """
    gone = frozenset(masked)
    kept = [s for s in adapter.slot_names(model.config) if s not in gone]
    known = [slot_flops.get(s) for s in kept]
    vision = None if any(v is None for v in known) else grids * float(sum(v for v in known if v is not None))
    per_image = grids * image_tokens(model, adapter, gone, budget)
    tokens: float = int(per_image) if float(per_image).is_integer() else round(per_image, 3)
    fusion = grids * fusion_flops(model, adapter, gone) if kept else 0.0
    prefill = prefill_flops(shape or language_model_shape(model, adapter), text_length + tokens)
    total = None if vision is None else vision + fusion + prefill
    return {"image_tokens": tokens, "cost": {"vision_flops": vision, "fusion_flops": fusion,
                                             "prefill_flops": prefill, "total_flops": total}}


__all__ = ["LanguageModelShape", "configuration_cost", "fusion_flops", "image_tokens", "language_model_shape",
           "prefill_flops", "text_tokens"]

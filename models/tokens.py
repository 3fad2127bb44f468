"""Visual-token budgets: the reducers that shorten the image tokens the LLM reads, and their config field.

A token budget is a fraction ``b`` of the image tokens a grid hands the LLM. The reducer runs after
fusion and projection, on each token grid the family has: the fused grid (channel concat), each
tile's grid (Eagle2), each encoder's grid (sequence concat). Two methods:

* ``pool``: spatial average pooling by a window of ``round(1/b)`` tokens, as square as possible
  (0.5: 1x2, 0.25: 2x2, 0.125: 2x4, 1/9: 3x3); a grid that the window does not divide keeps its
  edge windows, averaged over the tokens inside them (``ceil`` mode). The grid shape after
  pooling is ``ceil(h/fh) x ceil(w/fw)``. Average pooling of visual tokens is the reduction of
  LLaVA-1.6's and Matryoshka Multimodal Models' pooled grids (Cai et al. 2024, arXiv:2405.17430).
* ``attention``: keeps the ``round(b * h * w)`` tokens of a grid that receive the most attention
  in the LLM's first decoder layer (that layer's input norm, query and key projections applied to
  the grid's tokens; softmax attention among them, averaged over heads and query tokens), in their
  original order. This is VisionZip's dominant-token selection (Yang et al., "VisionZip: Longer is
  Better but Not Necessary in Vision Language Models", CVPR 2025, arXiv:2412.04467: keep the tokens
  that receive the most attention), scored in the LLM's first layer as FastV scores in an LLM layer
  (Chen et al., ECCV 2024, arXiv:2403.06764), so one method serves every family after fusion. No
  rotary embedding enters the score: it must not depend on where the image sits in the prompt,
  which keeps the score a function of the image alone (the vLLM plugin computes it from the image).

A model carries its budget in ``config.json`` as ``"token_budget": {"method": "pool", "budget": 0.25}``
(absent or ``budget: 1``: every token). The family's processor writes as many image placeholders as
the reducer leaves, and its model applies the reducer when it merges the image into the text.

This module imports the standard library only (torch when a reducer runs; encslim's error class when
present), so ``export --format remote-code`` ships it beside the native modeling code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a reducer runs: reading a budget imports no torch
    import torch

try:  # inside encslim, a bad budget is a user error (one line, exit 2)
    from encslim.errors import ConfigError as BudgetError
except ImportError:  # shipped as remote code, without encslim
    class BudgetError(ValueError):  # type: ignore[no-redef]
        """A token budget names an unknown method or a budget outside (0, 1]."""

CONFIG_KEY = "token_budget"
METHODS = ("pool", "attention")
SOURCES = {
    "pool": "spatial average pooling of the projected token grid (LLaVA-1.6 / Matryoshka Multimodal Models, "
            "Cai et al. 2024, arXiv:2405.17430)",
    "attention": "top-k tokens by the attention they receive in the LLM's first decoder layer (VisionZip's "
                 "dominant tokens, Yang et al., CVPR 2025, arXiv:2412.04467; scored in an LLM layer as FastV, "
                 "Chen et al., ECCV 2024, arXiv:2403.06764)",
}
Grid = tuple[int, int]


@dataclass(frozen=True)
class TokenBudget:
    """A token budget: the method and the fraction of each grid's tokens the LLM reads.

    Attributes:
        method: ``pool`` or ``attention`` (see the module docstring).
        budget: the fraction in (0, 1]; 1 keeps every token (no reducer runs).
    """

    method: str = "pool"
    budget: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BudgetError(f"token method '{self.method}' unknown; use one of {', '.join(METHODS)}")
        if not isinstance(self.budget, (int, float)) or isinstance(self.budget, bool) \
                or not 0 < float(self.budget) <= 1:
            raise BudgetError(f"token budget {self.budget!r} must be a fraction in (0, 1], e.g. 0.5 or 0.25")
        object.__setattr__(self, "budget", float(self.budget))
        cells = 1 / self.budget
        if self.method == "pool" and self.active and abs(cells - round(cells)) > 0.02 * cells:
            raise BudgetError(f"pool budget {self.budget:g} is not 1/k: pooling keeps one token per window of k "
                              "tokens (0.5, 0.333, 0.25, 0.2, ...); use --token-method attention for other fractions")

    @property
    def active(self) -> bool:
        """Whether a reducer runs (a budget below 1)."""
        return self.budget < 1

    def window(self) -> Grid:
        """The pooling window ``(fh, fw)``: ``fh * fw = round(1 / budget)``, as square as possible (fh <= fw)."""
        cells = max(1, round(1 / self.budget))
        fh = max(d for d in range(1, math.isqrt(cells) + 1) if cells % d == 0)
        return fh, cells // fh

    def grid_out(self, grid: Grid) -> Grid | None:
        """The grid shape after pooling, or ``None`` for ``attention`` (a token list, no grid)."""
        if self.method != "pool":
            return None
        fh, fw = self.window()
        return -(-grid[0] // fh), -(-grid[1] // fw)

    def tokens_out(self, grid: Grid) -> int:
        """Tokens a ``(h, w)`` grid keeps under this budget."""
        h, w = grid
        if not self.active:
            return h * w
        if self.method == "pool":
            gh, gw = self.grid_out(grid)  # type: ignore[misc]
            return gh * gw
        return max(1, round(self.budget * h * w))

    def to_dict(self) -> dict[str, Any]:
        """The config.json value: ``{"method": ..., "budget": ...}``."""
        return {"method": self.method, "budget": self.budget}

    @property
    def label(self) -> str:
        """``"1"`` or ``"pool 0.25"``: how reports name the budget."""
        return "1" if not self.active else f"{self.method} {self.budget:g}"


def parse_budget(value: Any) -> TokenBudget | None:
    """A :class:`TokenBudget` from a config value: ``None``, a dict, a number (pool) or a TokenBudget.

    Returns ``None`` when no reducer runs (absent, or budget 1).

    Raises:
        BudgetError: an unknown method or key, or a budget outside (0, 1].
    """
    if value is None:
        return None
    if isinstance(value, TokenBudget):
        spec = value
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"method", "budget"})
        if unknown:
            raise BudgetError(f"token_budget has unknown key(s) {', '.join(unknown)}; it takes method and budget")
        spec = TokenBudget(value.get("method", "pool"), value.get("budget", 1.0))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        spec = TokenBudget("pool", value)
    else:
        raise BudgetError(f"token_budget {value!r} is not a budget; write {{\"method\": \"pool\", \"budget\": 0.25}}")
    return spec if spec.active else None


def parse_budgets(text: str | Sequence[float]) -> list[float]:
    """``"1,0.5,0.25"`` (or a list) -> ``[1.0, 0.5, 0.25]``: unique, in (0, 1], largest first.

    Raises:
        BudgetError: a value that is not a number in (0, 1], naming it.
    """
    items = [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise BudgetError(f"--token-budgets: '{item}' is not a number; give fractions such as 1,0.5,0.25") from None
        TokenBudget("attention", value)  # the range check (a method's own rule applies where it is chosen)
        values.append(value)
    if not values:
        raise BudgetError("--token-budgets is empty; give fractions such as 1,0.5,0.25")
    return sorted(set(values), reverse=True)


def budget_of(config: Any) -> TokenBudget | None:
    """The budget a model config carries (``config.token_budget``), or ``None``."""
    return parse_budget(getattr(config, CONFIG_KEY, None))


def square_grid_tokens(count: int, budget: TokenBudget | None) -> int:
    """Tokens a square grid of ``count`` tokens keeps under ``budget`` (``None`` or budget 1: all of them).

    Raises:
        BudgetError: ``count`` is no square, so no budget applies.
    """
    if budget is None or not budget.active:
        return count
    side = math.isqrt(count)
    if side * side != count:
        raise BudgetError(f"{count} image tokens are no square grid, so no token budget applies")
    return budget.tokens_out((side, side))


@contextmanager
def budget_applied(config: Any, budget: TokenBudget | None) -> Iterator[None]:
    """Set ``config.token_budget`` to ``budget`` (``None``: every token) for the duration, then restore it."""
    had = hasattr(config, CONFIG_KEY)
    old = getattr(config, CONFIG_KEY, None)
    if budget is not None and budget.active:
        setattr(config, CONFIG_KEY, budget.to_dict())
    elif had:  # no key at all (not ``null``): a config saved meanwhile reads as one without a budget
        delattr(config, CONFIG_KEY)
    try:
        yield
    finally:
        if had:
            setattr(config, CONFIG_KEY, old)
        elif hasattr(config, CONFIG_KEY):
            delattr(config, CONFIG_KEY)


# --------------------------------------------------------------------------- the reducers
def pool_grid(tokens: torch.Tensor, grid: Grid, budget: TokenBudget) -> torch.Tensor:
    """Average-pool ``(B, h*w, D)`` tokens of an ``(h, w)`` grid (row-major) to ``(B, h'*w', D)``."""
    import torch.nn.functional as F

    b, n, d = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"a {h}x{w} grid has {h * w} tokens, got {n}")
    fh, fw = budget.window()
    x = tokens.reshape(b, h, w, d).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(x.float(), (fh, fw), (fh, fw), ceil_mode=True).to(tokens.dtype)
    return pooled.flatten(2).transpose(1, 2)


def received_attention(tokens: torch.Tensor, layer: Any, config: Any) -> torch.Tensor:
    """``(B, N)``: the attention each token receives from the others in ``layer`` (mean over heads, queries).

    Args:
        tokens: ``(B, N, H)`` image tokens in the LLM's embedding space.
        layer: a transformers decoder layer with ``input_layernorm`` and ``self_attn.{q,k}_proj`` (Llama,
            Qwen2, Qwen3 (its ``q_norm``/``k_norm`` applied), Mistral...).
        config: the LLM's config (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``).
    """
    attn = layer.self_attn
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden = layer.input_layernorm(tokens)
    b, n, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, n, -1, head_dim)
    k = attn.k_proj(hidden).view(b, n, -1, head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    import torch

    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(head_dim)
    return scores.softmax(-1).mean(dim=(1, 2))


def top_tokens(tokens: torch.Tensor, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` tokens of each row with the highest ``scores``, in their original order (ties: the earlier)."""
    import torch

    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep]
    index = order.sort(dim=-1).values
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def reduce_grids(tokens: torch.Tensor, grids: Sequence[Grid], budget: TokenBudget | None,
                 scorer: Any = None) -> torch.Tensor:
    """Reduce ``(B, sum h*w, D)`` tokens laid out as consecutive grids, each on its own.

    Args:
        tokens: projected image tokens, grid after grid (tiles, or one grid per encoder).
        grids: the ``(h, w)`` of each grid, in order.
        budget: the budget (``None`` or budget 1: returned as they are).
        scorer: for ``attention``, ``f(tokens (B, n, D)) -> (B, n)`` scores (:func:`scorer_for`).

    Returns:
        ``(B, sum tokens_out(grid), D)``.
    """
    if budget is None or not budget.active:
        return tokens
    import torch

    total = sum(h * w for h, w in grids)
    if tokens.shape[1] != total:
        raise ValueError(f"the grids {list(grids)} hold {total} tokens, got {tokens.shape[1]}")
    parts, start = [], 0
    for grid in grids:
        part = tokens[:, start:start + grid[0] * grid[1]]
        start += grid[0] * grid[1]
        if budget.method == "pool":
            parts.append(pool_grid(part, grid, budget))
        else:
            if scorer is None:
                raise BudgetError("the attention token method needs the LLM's first decoder layer to score tokens")
            parts.append(top_tokens(part, scorer(part), budget.tokens_out(grid)))
    return torch.cat(parts, dim=1)


def scorer_for(language_model: torch.nn.Module) -> Any:
    """The ``attention`` scorer of a transformers causal LM (or its inner model): its first decoder layer."""
    inner = getattr(language_model, "model", language_model)
    layers = getattr(inner, "layers", None)
    if layers is None or not len(layers):
        raise BudgetError(f"{type(language_model).__name__} has no decoder layers to score tokens with; "
                          "use --token-method pool")
    layer, config = layers[0], getattr(language_model, "config", None) or inner.config
    config = getattr(config, "text_config", None) or config
    return lambda part: received_attention(part, layer, config)


__all__ = ["BudgetError", "CONFIG_KEY", "METHODS", "SOURCES", "TokenBudget", "budget_applied", "budget_of",
           "parse_budget", "parse_budgets", "pool_grid", "received_attention", "reduce_grids", "scorer_for",
           "square_grid_tokens", "top_tokens"]

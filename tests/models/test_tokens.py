"""The token reducers and the budget config field (models/tokens.py)."""

import pytest
import torch

from encslim.errors import ConfigError
from encslim.models.tokens import (TokenBudget, budget_applied, budget_of, parse_budget, parse_budgets, pool_grid,
                                   reduce_grids, top_tokens)


@pytest.mark.parametrize("budget,window,out", [(1, (1, 1), 16), (0.5, (1, 2), 8), (0.25, (2, 2), 4),
                                               (0.125, (2, 4), 2), (1 / 9, (3, 3), 4)])
def test_pool_windows_and_counts(budget, window, out):
    spec = TokenBudget("pool", budget)
    assert spec.window() == window
    assert spec.tokens_out((4, 4)) == out


def test_pool_averages_each_window_row_major():
    grid = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid, values 0..15 row-major
    pooled = pool_grid(grid, (4, 4), TokenBudget("pool", 0.25))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    halves = pool_grid(grid, (4, 4), TokenBudget("pool", 0.5))
    assert halves.flatten().tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5]


def test_pool_keeps_edge_windows_of_an_odd_grid():
    grid = torch.arange(25.0).reshape(1, 25, 1)
    spec = TokenBudget("pool", 0.25)
    assert spec.grid_out((5, 5)) == (3, 3) and spec.tokens_out((5, 5)) == 9
    pooled = pool_grid(grid, (5, 5), spec).flatten().tolist()
    assert pooled[2] == pytest.approx((4 + 9) / 2) and pooled[-1] == 24.0


def test_top_tokens_keep_order_and_highest_scores():
    tokens = torch.arange(6.0).reshape(1, 6, 1)
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.05, 0.7]])
    assert top_tokens(tokens, scores, 3).flatten().tolist() == [1.0, 3.0, 5.0]


def test_reduce_grids_reduces_each_grid_on_its_own():
    a = torch.zeros(1, 16, 2)
    b = torch.ones(1, 4, 2)
    out = reduce_grids(torch.cat([a, b], 1), [(4, 4), (2, 2)], TokenBudget("pool", 0.25))
    assert out.shape == (1, 5, 2) and out[0, :4].abs().sum() == 0 and out[0, 4].tolist() == [1.0, 1.0]
    assert reduce_grids(a, [(4, 4)], None) is a


def test_attention_needs_a_scorer_and_keeps_k():
    x = torch.randn(2, 16, 4)
    spec = TokenBudget("attention", 0.25)
    with pytest.raises(ConfigError, match="first decoder layer"):
        reduce_grids(x, [(4, 4)], spec)
    out = reduce_grids(x, [(4, 4)], spec, scorer=lambda t: t[..., 0])
    assert out.shape == (2, 4, 4)
    kept = x[0, x[0, :, 0].topk(4).indices.sort().values]
    assert torch.equal(out[0], kept)


def test_parse_and_errors():
    assert parse_budget(None) is None and parse_budget({"method": "pool", "budget": 1}) is None
    assert parse_budget(0.5) == TokenBudget("pool", 0.5)
    assert parse_budget({"method": "attention", "budget": 0.25}).label == "attention 0.25"
    assert parse_budgets("0.25, 1,0.5,0.5") == [1.0, 0.5, 0.25]
    with pytest.raises(ConfigError, match="token method 'fastv' unknown; use one of pool, attention"):
        TokenBudget("fastv", 0.5)
    with pytest.raises(ConfigError, match=r"must be a fraction in \(0, 1\]"):
        TokenBudget("pool", 1.5)
    with pytest.raises(ConfigError, match="'half' is not a number"):
        parse_budgets("1,half")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_budget({"method": "pool", "ratio": 0.5})
    # pooling keeps 1/k of a grid: 0.7 would keep every token and 0.4 the same as 0.5
    for budget in (0.7, 0.4, 0.3):
        with pytest.raises(ConfigError, match=f"pool budget {budget} is not 1/k.*--token-method attention"):
            TokenBudget("pool", budget)
    assert TokenBudget("attention", 0.7).tokens_out((4, 4)) == 11 and TokenBudget("pool", 0.333).window() == (1, 3)
    assert parse_budgets("0.7,1") == [1.0, 0.7]  # the method's own rule applies where the method is chosen


def test_budget_applied_restores_the_config():
    class Config:
        pass

    config = Config()
    with budget_applied(config, TokenBudget("pool", 0.25)):
        assert budget_of(config) == TokenBudget("pool", 0.25)
    assert not hasattr(config, "token_budget")
    config.token_budget = {"method": "attention", "budget": 0.5}
    with budget_applied(config, None):
        assert budget_of(config) is None
    assert budget_of(config) == TokenBudget("attention", 0.5)

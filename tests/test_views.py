"""Grid views against numpy indexing loops; attention statistics split by a mask
against numpy (torch-style unbiased std) on the selected examples."""

import numpy as np
import pytest

import toymech as tm
from toymech.analysis import views
from toymech.tasks import grokking

from random_params import random_params


def test_to_grid_follows_the_datasets_row_order():
    p = 5
    task = grokking.AdditionTask(p)
    tokens = grokking.all_inputs(task)
    acts = np.random.default_rng(0).normal(size=(p * p, 3, 4)).astype(np.float32)
    grid = np.asarray(views.to_grid(acts[:, -1], p))
    assert grid.shape == (p, p, 4)
    for row, (a, b, _) in enumerate(tokens):
        np.testing.assert_array_equal(grid[a, b], acts[row, -1])
    np.testing.assert_array_equal(views.from_grid(grid), acts[:, -1])
    np.testing.assert_array_equal(views.to_grid(acts.transpose(1, 0, 2), p, axis=1)[2], grid)
    rect = views.to_grid(np.arange(12), 3, 4)
    assert rect.shape == (3, 4) and int(rect[2, 1]) == 9
    with pytest.raises(ValueError, match="n_a \\* n_b"):
        views.to_grid(acts, 4)


def test_scatter_grid_places_a_subset_and_fills_the_rest():
    a, b = np.array([0, 2, 1]), np.array([1, 0, 2])
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    grid = np.asarray(views.scatter_grid(a, b, values, 3))
    want = np.full((3, 3, 2), np.nan, np.float32)
    want[a, b] = values
    np.testing.assert_array_equal(grid, want)
    ints = views.scatter_grid(a, b, np.array([7, 8, 9]), 3, 4, fill=0)
    assert ints.shape == (3, 4) and int(ints[2, 0]) == 8 and int(ints[0, 0]) == 0
    with pytest.raises(ValueError, match="outside"):
        views.scatter_grid(np.array([3]), np.array([0]), np.array([1.0]), 3)


def test_split_stats_match_numpy_on_each_group():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3, 2)).astype(np.float32)
    mask = rng.random(20) < 0.4
    s = views.split_stats(x, mask)
    for g, sel in enumerate((mask, ~mask)):
        np.testing.assert_allclose(s.mean[g], x[sel].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.std[g], x[sel].std(0, ddof=1), rtol=1e-5, atol=1e-6)
        assert int(s.count[g]) == sel.sum()
    pop = views.split_stats(x, mask, ddof=0)
    np.testing.assert_allclose(pop.std[0], x[mask].std(0), rtol=1e-5, atol=1e-6)
    empty = views.split_stats(x, np.ones(20, bool))
    assert np.isnan(np.asarray(empty.mean[1])).all() and int(empty.count[1]) == 0


def test_attention_stats_from_a_query_position_split_by_carry():
    cfg = tm.ModelConfig(n_layers=1, d_model=16, n_heads=3, d_head=4, d_mlp=None, d_vocab=12, n_ctx=6,
                         normalization_type="LN")
    params = random_params(cfg, seed=4)
    tokens = np.random.default_rng(5).integers(0, 12, size=(40, 6))
    _, acts = tm.apply(cfg, params, tokens, capture=("blocks.0.attn.hook_pattern",))
    pattern = np.asarray(acts["blocks.0.attn.hook_pattern"])  # [batch, head, q, k]
    carry = tokens[:, 1] + tokens[:, 2] >= 10  # any per-example split
    s = views.attention_stats(pattern, 4, carry)
    assert s.mean.shape == (2, 3, 6)
    for g, sel in enumerate((carry, ~carry)):
        np.testing.assert_allclose(s.mean[g], pattern[sel, :, 4, :].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.std[g], pattern[sel, :, 4, :].std(0, ddof=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.mean[0, :, 5]), 0.0, atol=1e-7)  # causal: no attention ahead
    everyone = views.attention_stats(pattern, -1)
    np.testing.assert_allclose(everyone.mean[0], pattern[:, :, -1, :].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="query_pos"):
        views.attention_stats(pattern, 6, carry)

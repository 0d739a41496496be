"""Tests for toymech.tasks.grokking: data, split, precise loss, accuracy."""

import decimal
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toymech.tasks import grokking as gk


@pytest.mark.parametrize("p,modular", [(7, True), (10, False), (4, True)])
def test_inputs_and_labels_cover_the_grid_row_major(p, modular):
    task = gk.AdditionTask(p, modular)
    pairs = list(itertools.product(range(p), range(p)))  # a major, b minor
    np.testing.assert_array_equal(gk.all_inputs(task), [[a, b, p] for a, b in pairs])
    want = [(a + b) % p if modular else a + b for a, b in pairs]
    np.testing.assert_array_equal(gk.labels(task), want)
    assert gk.labels(task).max() < task.d_vocab_out
    assert task.d_vocab == p + 1 and task.equals_token == p
    assert task.d_vocab_out == (p if modular else 2 * p)


def test_split_is_a_seeded_partition():
    train, test = gk.split_indices(113 * 113, 0.3, 598)
    assert len(train) == int(113 * 113 * 0.3) and len(train) + len(test) == 113 * 113
    assert not set(train.tolist()) & set(test.tolist())
    perm = np.random.default_rng(598).permutation(113 * 113)  # the documented rule
    np.testing.assert_array_equal(train, np.sort(perm[:len(train)]))
    again, _ = gk.split_indices(113 * 113, 0.3, 598)
    other, _ = gk.split_indices(113 * 113, 0.3, 599)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 0.001])
def test_split_rejects_degenerate_fractions(frac):
    with pytest.raises(ValueError, match="frac_train"):
        gk.split_indices(100, frac, 0)


def test_bad_modulus_is_rejected():
    with pytest.raises(ValueError, match="p must be an int >= 2"):
        gk.AdditionTask(1)


def test_dataset_and_model_config_match_the_task():
    task = gk.AdditionTask(10, modular=False)
    data = gk.make_dataset(task, 0.72, 598)
    assert len(data.train) == 72 and data.tokens.shape == (100, 3)
    cfg = gk.model_config(task)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.normalization_type) == (11, 20, 3, None)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (1, 4, 128, 32, 512)


def _reference_loss(logits, labels):
    """Cross-entropy ln(sum_j exp(x_j - x_label)) in 50-digit decimal arithmetic (float64's
    logsumexp itself loses the digits of a 1e-12 loss)."""
    ctx = decimal.Context(prec=50)
    out = []
    for row, label in zip(logits.astype(np.float64), labels):
        xc = decimal.Decimal(float(row[label]))
        total = sum((ctx.exp(decimal.Decimal(float(v)) - xc) for v in row), decimal.Decimal(0))
        out.append(float(ctx.ln(total)))
    return np.array(out)


def test_loss_matches_float64_for_ordinary_and_tiny_losses():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 3, 13)).astype(np.float32) * 3
    labels = rng.integers(0, 13, size=64)
    # a nearly perfect model: correct logit 30 above the rest -> loss ~1e-12, far below float32 eps
    logits[:32, -1, :] -= 15.0
    logits[np.arange(32), -1, labels[:32]] += 30.0
    got = np.asarray(gk.per_example_loss(jnp.asarray(logits), jnp.asarray(labels)))
    want = _reference_loss(logits[:, -1], labels)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=0)
    assert (want[:32] < 1e-6).all() and (got[:32] > 0).all()
    naive = -np.asarray(jax.nn.log_softmax(jnp.asarray(logits[:32, -1])))[np.arange(32), labels[:32]]
    assert (naive == 0).any()  # plain float32 log_softmax rounds such losses to 0: what the precise form avoids
    np.testing.assert_allclose(float(gk.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))), want.mean(),
                               rtol=2e-5)


def test_loss_gradient_is_softmax_minus_onehot():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 7)).astype(np.float32) * 4
    labels = rng.integers(0, 7, size=8)
    grad = np.asarray(jax.grad(lambda x: gk.per_example_loss(x, jnp.asarray(labels)).sum())(jnp.asarray(logits)))
    x = logits.astype(np.float64)
    soft = np.exp(x - x.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, soft - np.eye(7)[labels], atol=1e-6)


def test_accuracy_and_final_logits():
    logits = jnp.asarray([[[0, 0, 9.0], [1.0, 5.0, 0]], [[0, 0, 0], [3.0, 1.0, 2.0]]])  # [2, 2, 3]
    np.testing.assert_allclose(float(gk.accuracy(logits, jnp.asarray([1, 1]))), 0.5)
    assert gk.final_logits(logits).shape == (2, 3)
    with pytest.raises(ValueError, match="logits must be"):
        gk.final_logits(jnp.zeros((3,)))


def test_resample_b_changes_b_only():
    task = gk.AdditionTask(7)
    tokens = gk.all_inputs(task)
    corrupted = gk.resample_b(task, tokens, seed=1)
    assert (corrupted[:, [0, 2]] == tokens[:, [0, 2]]).all()
    assert (corrupted[:, 1] != tokens[:, 1]).all() and ((corrupted[:, 1] >= 0) & (corrupted[:, 1] < 7)).all()
    assert len(set(corrupted[:, 1].tolist())) == 7  # every b is drawn
    with pytest.raises(ValueError, match=r"a, b in 0..6"):
        gk.resample_b(task, tokens + 1, seed=0)

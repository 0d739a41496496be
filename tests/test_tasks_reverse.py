"""Tests of toymech.tasks.reverse: the data set against the notebook's printed rows and
itertools, the mirrored positions, and the output-position loss and accuracy."""

import itertools

import jax
import numpy as np
import pytest

import toymech as tm
from toymech.tasks import reverse as rv

SEQS = rv.all_sequences()
TINY = rv.model_config(d_model=8, n_heads=2, d_head=4, d_mlp=8)


def test_all_sequences_follow_itertools_product_order():
    assert SEQS.shape == (65536, 17) and SEQS.dtype == np.int32
    product = list(itertools.product(range(4), repeat=8))
    for r in (0, 1, 4, 12345, 65535):
        x = product[r]
        y = [(v + 1) % 4 for v in reversed(x)]
        assert SEQS[r].tolist() == [4, *x, *y]


def test_split_matches_the_notebook():
    train, holdout = rv.split(SEQS)
    assert train.shape == (60000, 17) and holdout.shape == (5536, 17)
    # Printed by the study-2 notebook (seeds/001_8801df8ab1e67bca.txt).
    assert train[0].tolist() == [4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert holdout[0].tolist() == [4, 3, 2, 2, 2, 1, 2, 0, 0, 1, 1, 3, 2, 3, 3, 3, 0]
    assert holdout[1].tolist() == [4, 3, 2, 2, 2, 1, 2, 0, 1, 2, 1, 3, 2, 3, 3, 3, 0]
    with pytest.raises(ValueError, match="n_train"):
        rv.split(SEQS, 65536)


def test_outputs_and_mirror_positions():
    fed = SEQS[:, :-1]
    for i, (p, m) in enumerate(zip(rv.OUTPUT_POSITIONS, rv.MIRROR_POSITIONS)):
        # logits at p predict token p + 1 = y_i, which is x_{7-i} + 1 and x_{7-i} sits at m.
        np.testing.assert_array_equal(SEQS[:, p + 1], (fed[:, m] + 1) % 4)
        assert m == rv.INPUT_POSITIONS[7 - i]
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        rv.outputs(np.zeros((2, 7), int))


def test_model_config_is_the_study_decoder():
    cfg = rv.model_config()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        2, 4, 1, 2, 16, 5, 17)
    assert (cfg.act_fn, cfg.normalization_type, cfg.attention_dir) == ("relu", "LN", "causal")


def _reference(cfg, params, seqs):
    """Per-token loss and correctness from tm.apply and a numpy log-softmax."""
    logits = np.asarray(tm.apply(cfg, params, seqs[:, :-1])[0], np.float64)[:, 8:]  # [b, 8, v]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    targets = seqs[:, 9:]
    loss = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return loss, logits.argmax(-1) == targets


def test_loss_fn_counts_only_output_positions():
    params = tm.init_params(TINY, jax.random.key(0))
    seqs = SEQS[::4096]
    loss, metrics = rv.loss_fn(TINY, params, seqs)
    ref_loss, ref_correct = _reference(TINY, params, seqs)
    np.testing.assert_allclose(loss, ref_loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], ref_correct.mean())


def test_split_metrics_score_each_split():
    params = tm.init_params(TINY, jax.random.key(1))
    seqs = SEQS[::997]
    is_train = np.arange(len(seqs)) % 3 != 0
    got = rv.split_metrics(TINY, params, {"sequences": seqs, "is_train": is_train})
    ref_loss, ref_correct = _reference(TINY, params, seqs)
    np.testing.assert_allclose(got["train_accuracy"], ref_correct[is_train].mean(), rtol=1e-6)
    np.testing.assert_allclose(got["holdout_accuracy"], ref_correct[~is_train].mean(), rtol=1e-6)
    np.testing.assert_allclose(got["train_loss"], ref_loss[is_train].mean(), rtol=1e-5)
    np.testing.assert_allclose(got["holdout_loss"], ref_loss[~is_train].mean(), rtol=1e-5)


def test_resample_position_changes_one_input_and_its_output():
    sequences = rv.all_sequences()[::97]
    for position in (0, 3, 7):
        corrupted = rv.resample_position(sequences, position, seed=position)
        changed = corrupted != sequences
        assert changed[:, 1 + position].all() and changed[:, 1 + rv.N_DIGITS + (7 - position)].all()
        assert changed.sum(1).tolist() == [2] * len(sequences)
        assert ((corrupted[:, 9:] == (corrupted[:, 8:0:-1] + 1) % 4)).all()  # y = reverse(x) + 1 mod 4, by hand
    for position in (-1, 8):
        with pytest.raises(ValueError, match=r"position must be an int in 0..7"):
            rv.resample_position(sequences, position, seed=0)

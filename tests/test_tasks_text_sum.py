"""Tests of toymech.tasks.text_sum: the notebook's encoding and padding, data files,
and the last-real-token regression loss."""

import jax
import numpy as np
import pytest

import toymech as tm
from toymech.tasks import text_sum as ts

S1, S2 = "103 + 40 = ?", "50 + 7 = ?"
# Printed by the study-1 notebook (seeds/000_46e58850586c22e6.txt).
NOTEBOOK_S1 = [2, 1, 4, 11, 12, 11, 5, 1, 11, 14, 11, 15]
NOTEBOOK_S2 = [6, 1, 11, 12, 11, 8, 11, 14, 11, 15]

TINY = ts.model_config(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=16)


def test_encode_matches_notebook():
    assert ts.encode(S1).tolist() == NOTEBOOK_S1
    assert ts.encode(S2).tolist() == NOTEBOOK_S2
    assert ts.encode("-").tolist() == [13]
    assert ts.problem_text(103, 40) == S1


def test_encode_rejects_unknown_character():
    with pytest.raises(ValueError, match=r"'x' at index 2"):
        ts.encode("1 x 2")


def test_decode_inverts_encode_and_drops_padding():
    tokens, _ = ts.pad_batch([ts.encode(S1), ts.encode(S2)])
    assert [ts.decode(row) for row in tokens] == [S1, S2]
    with pytest.raises(ValueError, match="16"):
        ts.decode([2, 16])


def test_pad_batch_matches_notebook():
    tokens, mask = ts.pad_batch([ts.encode(S1), ts.encode(S2)], pad_id=0)
    assert tokens.tolist() == [NOTEBOOK_S1, NOTEBOOK_S2 + [0, 0]]
    assert mask.tolist() == [[True] * 12, [True] * 10 + [False] * 2]
    assert tokens.dtype == np.int32 and mask.dtype == bool


def test_pad_batch_length_and_errors():
    tokens, mask = ts.pad_batch([[1, 2]], length=4, pad_id=9)
    assert tokens.tolist() == [[1, 2, 9, 9]] and mask.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="3 tokens > length=2"):
        ts.pad_batch([[1], [1, 2, 3]], length=2)
    with pytest.raises(ValueError, match="empty"):
        ts.pad_batch([[1], []])


def test_pool_last_reads_the_last_real_token():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 4, 2, 5])
    _, mask = ts.pad_batch([[1] * n for n in lengths])
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    expected = np.stack([x[b, n - 1] for b, n in enumerate(lengths)])
    np.testing.assert_array_equal(ts.last_real_index(mask), lengths - 1)
    np.testing.assert_array_equal(ts.pool_last(x, mask), expected)


def test_generate_split_is_deterministic_disjoint_and_in_range():
    (xa, ya), (xv, yv) = ts.generate_split(300, 100, max_operand=99, seed=3)
    (xb, yb), _ = ts.generate_split(300, 100, max_operand=99, seed=3)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert len(xa) == 300 and len(xv) == 100
    train, val = set(zip(xa.tolist(), ya.tolist())), set(zip(xv.tolist(), yv.tolist()))
    assert len(train) == 300 and len(val) == 100 and not train & val
    assert min(xa.min(), ya.min(), xv.min(), yv.min()) >= 0 and max(xa.max(), ya.max()) <= 99
    with pytest.raises(ValueError, match="n_train"):
        ts.generate_split(90, 20, max_operand=9, seed=0)


def test_tsv_roundtrip(tmp_path):
    path = tmp_path / "d" / "train.tsv"
    ts.write_tsv(path, [103, 50], [40, 7])
    assert path.read_text() == "103\t40\t143\n50\t7\t57\n"
    x, y, z = ts.read_tsv(path)
    assert x.tolist() == [103, 50] and y.tolist() == [40, 7] and z.tolist() == [143, 57]


@pytest.mark.parametrize("bad_line, message", [
    ("1\t2\n", "expected 3 tab-separated fields"),
    ("1\t2\t3\t4\n", "expected 3 tab-separated fields"),
    ("1\tb\t3\n", "fields must be non-negative integers"),
    ("-1\t2\t1\n", "fields must be non-negative integers"),
    ("1\t2\t4\n", "z = 4 is not x \\+ y = 3"),
])
def test_read_tsv_names_file_and_line_of_a_malformed_line(tmp_path, bad_line, message):
    path = tmp_path / "user.tsv"
    path.write_text("1\t1\t2\n\n" + bad_line + "5\t5\t10\n")
    with pytest.raises(ValueError, match=f"user.tsv, line 3: {message}"):
        ts.read_tsv(path)


def test_read_tsv_rejects_an_empty_file(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no problems"):
        ts.read_tsv(path)


def test_make_dataset_and_batch():
    data = ts.make_dataset([103, 50], [40, 7], [143, 57], length=13)
    assert data.tokens.shape == (2, 13) and data.mask.sum(1).tolist() == [12, 10]
    batch = data.batch()
    np.testing.assert_allclose(batch["target"], [143 / 2000, 57 / 2000])
    assert ts.max_length(([103, 9], [40, 999])) == len("103 + 999 = ?")


def test_model_config_is_the_study_encoder():
    cfg = ts.model_config()
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.attention_dir, cfg.act_fn, cfg.normalization_type) == (
        16, 1, "bidirectional", "gelu", "LN")


def test_prediction_ignores_padding_and_reads_the_last_real_token():
    params = tm.init_params(TINY, jax.random.key(0))
    tokens, mask = ts.pad_batch([ts.encode(S1), ts.encode(S2)])
    pred, _ = ts.predict(TINY, params, tokens, mask)
    # The short problem alone, unpadded: same prediction (padding gets no attention).
    alone, _ = tm.apply(TINY, params, ts.encode(S2)[None])
    np.testing.assert_allclose(pred[1], alone[0, -1, 0], rtol=1e-5, atol=1e-6)
    full, _ = tm.apply(TINY, params, tokens, key_padding_mask=mask)
    np.testing.assert_allclose(pred[0], full[0, 11, 0], rtol=1e-6)


def test_loss_fn_is_scaled_mse_at_the_last_real_token():
    params = tm.init_params(TINY, jax.random.key(1))
    data = ts.make_dataset([103, 50, 999], [40, 7, 999], [143, 57, 1998])
    batch = data.batch()
    loss, metrics = ts.loss_fn(TINY, params, batch)
    out = np.asarray(tm.apply(TINY, params, data.tokens, key_padding_mask=data.mask)[0])[..., 0]
    pred = np.array([out[b, n - 1] for b, n in enumerate(data.mask.sum(1))])
    np.testing.assert_allclose(loss, np.mean((pred - data.z / 2000) ** 2), rtol=1e-5)
    np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(pred * 2000 - data.z)), rtol=1e-4)


@pytest.mark.parametrize("operand", ["x", "y"])
def test_change_operand_keeps_the_length_and_mask(operand):
    x, y = np.array([0, 7, 12, 99, 345, 1000]), np.array([5, 80, 3, 999, 20, 1])
    data = ts.make_dataset(x, y, x + y)
    corrupted = ts.change_operand(data, operand, seed=2)
    new, old = getattr(corrupted, operand), getattr(data, operand)
    assert (new != old).all() and [len(str(v)) for v in new] == [len(str(v)) for v in old]
    assert (corrupted.mask == data.mask).all() and corrupted.tokens.shape == data.tokens.shape
    other = "y" if operand == "x" else "x"
    assert (getattr(corrupted, other) == getattr(data, other)).all() and (corrupted.z == corrupted.x + corrupted.y).all()
    assert [ts.decode(t[m]) for t, m in zip(corrupted.tokens, corrupted.mask)] == [
        ts.problem_text(a, b) for a, b in zip(corrupted.x, corrupted.y)]
    with pytest.raises(ValueError, match="operand must be 'x' or 'y'"):
        ts.change_operand(data, "z", seed=0)

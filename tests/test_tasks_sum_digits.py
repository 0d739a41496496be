"""Tests of toymech.tasks.sum_digits: data, the fixture reader, carries, loss and metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech.tasks import sum_digits as sd


def _parse(text: str) -> tuple[int, int, int]:
    """'2968+1606=4574' -> (2968, 1606, 4574), by string splitting (independent of the token layout code)."""
    left, c = text.split("=")
    a, b = left.split("+")
    return int(a), int(b), int(c)


def test_make_sequences_layout_determinism_and_range():
    tokens = sd.make_sequences(2000, seed=7)
    assert tokens.shape == (2000, 14) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, sd.make_sequences(2000, seed=7))
    assert not np.array_equal(tokens, sd.make_sequences(2000, seed=8))
    for text in sd.to_text(tokens[:200]):
        a, b, c = _parse(text)
        assert len(text) == 14 and a + b == c and a < 5000 and b < 5000
    assert (tokens[:, 4] == 10).all() and (tokens[:, 9] == 11).all()
    assert set(np.unique(tokens[:, [0, 5]])) == {0, 1, 2, 3, 4}  # first digits of a, b
    assert set(np.unique(tokens[:, [1, 2, 3, 6, 7, 8]])) == set(range(10))
    sd.check_sequences(tokens)  # everything generated is valid


def test_read_the_challenge_fixture(shared_dir):
    tokens = sd.read_sequences(shared_dir / "fixtures" / "arena_sum_eval_1000.txt")
    assert tokens.shape == (1000, 14)
    # the notebook's first example, printed as 2968+1606=4574
    assert sd.to_text(tokens[:1]) == ["2968+1606=4574"]
    # the notebook's carry counts (its split: c_i != a_i + b_i)
    split = sd.digit_differs_from_pair_sum(tokens)
    assert split.any(1).sum() == 826 and (~split.any(1)).sum() == 174
    assert split[:, :3].sum(0).tolist() == [515, 715, 689]


@pytest.mark.parametrize("line, message", [
    ("2 9 6 8 10 1 6 0 6 11 4 5 7", r"line 3: expected 14 space-separated token ids, got 13"),
    ("2 9 6 8 10 1 6 0 6 11 4 5 7 x", r"line 3: token ids must be integers"),
    ("2 9 6 8 10 1 6 0 6 11 4 5 7 5", r"line 3: the sum is wrong \(2968 \+ 1606 = 4574, not 4575\)"),
    ("2 9 6 8 11 1 6 0 6 11 4 5 7 4", r"line 3: position 4 must be '\+'"),
    ("2 9 6 8 10 1 6 0 6 10 4 5 7 4", r"line 3: position 9 must be '='"),
    ("5 0 0 0 10 0 0 0 0 11 5 0 0 0", r"line 3: a or b is 5000 or more"),
    ("2 9 6 12 10 1 6 0 6 11 4 5 7 4", r"line 3: a digit position holds a non-digit"),
])
def test_reader_names_file_and_line_of_a_malformed_line(tmp_path, line, message):
    path = tmp_path / "seqs.txt"
    path.write_text("1 5 0 1 10 3 2 6 1 11 4 7 6 2\n\n" + line + "\n")  # line 2 is blank (skipped)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        sd.read_sequences(path)


def test_reader_round_trip_and_empty_file(tmp_path):
    tokens = sd.make_sequences(5, seed=0)
    path = tmp_path / "ok.txt"
    path.write_text("".join(" ".join(map(str, row)) + "\n" for row in tokens) + "\n")
    np.testing.assert_array_equal(sd.read_sequences(path), tokens)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt: no sequences"):
        sd.read_sequences(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match=r"operands must be in 0..4999, got a=5000"):
        sd.sequences_from_operands(np.array([5000]), np.array([1]))


def test_carries_against_the_closed_form():
    tokens = sd.make_sequences(3000, seed=3)
    a, b, _ = zip(*map(_parse, sd.to_text(tokens)))
    a, b = np.array(a), np.array(b)
    # digit i (0 = thousands) receives a carry iff the parts of a and b to its right overflow
    k = 10 ** (3 - np.arange(4))  # 10^(number of digits to the right of digit i)
    want = (a[:, None] % k + b[:, None] % k) >= k
    np.testing.assert_array_equal(sd.carry_in(tokens), want)
    assert not sd.carry_in(tokens)[:, 3].any() and sd.carry_in(tokens)[:, :3].any(0).all()
    digit = lambda x, i: x // k[i] % 10
    pair = np.stack([digit(a, i) + digit(b, i) for i in range(4)], 1)
    np.testing.assert_array_equal(sd.digit_differs_from_pair_sum(tokens), want | (pair >= 10))


def test_losses_and_metrics_against_numpy():
    rng = np.random.default_rng(0)
    tokens = sd.make_sequences(16, seed=1)
    logits = rng.normal(size=(16, 14, 12)).astype(np.float32) * 3
    logits[0, 9, tokens[0, 10]] = 50.0  # one digit surely right
    loss, correct = map(np.asarray, sd.token_losses(jnp.asarray(logits), jnp.asarray(tokens)))
    out = logits[:, 9:13].astype(np.float64)
    logp = out - out.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, tokens[:, 10:14, None], -1)[..., 0]
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(correct, out.argmax(-1) == tokens[:, 10:14])
    assert correct[0, 0]
    scores = np.asarray(sd.token_scores(jnp.asarray(logits), jnp.asarray(tokens)))
    np.testing.assert_allclose(scores, np.stack([want, correct], -1), rtol=1e-5, atol=1e-6)
    m = sd.metrics(jnp.asarray(logits), jnp.asarray(tokens))
    np.testing.assert_allclose(m["loss"], want.mean(), rtol=1e-5)
    assert float(m["accuracy"]) == pytest.approx(correct.mean())
    assert float(m["sequence_accuracy"]) == pytest.approx(correct.all(1).mean())


def test_loss_fn_runs_the_model_on_all_14_tokens():
    cfg = sd.model_config(d_model=16, n_heads=2, d_head=8)
    params = tm.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(sd.make_sequences(8, seed=2))
    loss, extra = sd.loss_fn(cfg, params, tokens)
    logits, _ = tm.apply(cfg, params, tokens)
    np.testing.assert_allclose(loss, sd.token_losses(logits, tokens)[0].mean(), rtol=1e-6)
    assert set(extra) == {"accuracy", "sequence_accuracy"}
    grads = jax.jit(jax.grad(lambda p: sd.loss_fn(cfg, p, tokens)[0]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("carries", [None, False, True])
def test_corrupt_a_digit_changes_one_digit_of_a_with_or_without_carries(carries):
    tokens = sd.make_sequences(400, seed=3)
    for digit in range(4):
        clean, corrupted = sd.corrupt_a_digit(tokens, digit, seed=digit, carries=carries)
        if digit == 0 and carries:  # a1 + b1 < 10 always (a, b < 5000): no carry to change
            assert clean.shape == corrupted.shape == (0, 14)
            continue
        assert clean.shape == corrupted.shape and len(clean) > 300
        sd.check_sequences(corrupted)  # still valid sums with a, b < 5000
        changed = clean != corrupted
        assert changed[:, digit].all() and not changed[:, [p for p in sd.A_POSITIONS if p != digit]].any()
        assert not changed[:, sd.B_POSITIONS].any()
        _, b, _ = sd.operands(clean)
        a2, b2, c2 = sd.operands(corrupted)
        assert (c2 == a2 + b2).all() and (b2 == b).all()
        carry_same = (sd.carry_in(clean) == sd.carry_in(corrupted)).all(1)
        if carries is not None:
            assert (carry_same != carries).all()
            if carries is False:  # only that digit's sum digit changes
                assert not changed[:, [p for i, p in enumerate(sd.TARGET_POSITIONS) if i != digit]].any()


def test_corrupt_a_digit_refuses_bad_digits():
    tokens = sd.make_sequences(10, seed=0)
    for digit in (-1, 4, 1.0):
        with pytest.raises(ValueError, match=r"digit must be an int in 0..3"):
            sd.corrupt_a_digit(tokens, digit, seed=0)

"""Sum of two 4-digit numbers: read `a + b =`, write the four digits of the sum.

Study 4 of STUDIES.md (the ARENA September 2023 challenge). A sequence is 14
tokens

    [a1 a2 a3 a4  +  b1 b2 b3 b4  =  c1 c2 c3 c4]      positions 0..13

with digit tokens 0..9, `+` = 10 and `=` = 11, most significant digit first,
a and b below 5000 (first digits 0..4) so that c = a + b has four digits.
The model is a causal decoder fed all 14 tokens; the logits at position p
predict token p + 1, and the loss and accuracy count only the four sum
digits: logits at `OUTPUT_POSITIONS` (9..12) against the tokens at
`TARGET_POSITIONS` (10..13).

Data. `make_sequences(n, seed)` draws a and b uniformly from 0..4999 with
`numpy.random.default_rng(seed)`: same seed, same data on every machine (the
challenge drew with torch, so not its exact sequences). The evaluation
sequences of the challenge are a fixture file, one sequence per line as 14
space-separated ids, read by `read_sequences`, which names the file and
line of anything malformed.

Carries. `carry_in(tokens)` marks the sum digits that receive a carry from
the digits to their right (c_i = (a_i + b_i + carry_in_i) mod 10; the units
digit never does). `digit_differs_from_pair_sum` is the notebook's split,
c_i != a_i + b_i: the digit either receives or produces a carry.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from toymech.config import ModelConfig
from toymech.model import apply_unchecked

N_DIGITS = 4
PLUS = 10
EQUALS = 11
D_VOCAB = 12
SEQ_LEN = 3 * N_DIGITS + 2  # 14
MAX_OPERAND = 5000  # a, b < 5000, so a + b < 10000 has 4 digits
A_POSITIONS = np.arange(0, N_DIGITS)  # a1..a4
B_POSITIONS = np.arange(N_DIGITS + 1, 2 * N_DIGITS + 1)  # b1..b4 (5..8)
TARGET_POSITIONS = np.arange(2 * N_DIGITS + 2, SEQ_LEN)  # c1..c4 (10..13)
OUTPUT_POSITIONS = TARGET_POSITIONS - 1  # the logits predicting c1..c4 (9..12)
VOCAB = tuple(str(d) for d in range(10)) + ("+", "=")


def model_config(*, n_layers: int = 2, d_model: int = 48, n_heads: int = 3, d_head: int = 24,
                 d_mlp: int | None = None, normalization_type: str | None = "LN") -> ModelConfig:
    """The challenge's model: 2 layers, 3 heads of 24, d_model 48, attention only,
    LayerNorm, causal, d_vocab 12, n_ctx 14 (ReLU is moot without MLPs)."""
    return ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                       d_vocab=D_VOCAB, n_ctx=SEQ_LEN, act_fn="relu", normalization_type=normalization_type,
                       attention_dir="causal")


def digits(x: np.ndarray) -> np.ndarray:
    """The 4 decimal digits of ints x [n], most significant first.  # int [n, 4]"""
    x = np.asarray(x)
    return (x[:, None] // 10 ** np.arange(N_DIGITS - 1, -1, -1)) % 10


def sequences_from_operands(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[a, +, b, =, a + b]` for ints a, b [n] in 0..4999.  # int32 [n, 14]"""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"sequences_from_operands: a and b must be int [n] of one shape, got {a.shape}, {b.shape}")
    bad = (a < 0) | (a >= MAX_OPERAND) | (b < 0) | (b >= MAX_OPERAND)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"sequences_from_operands: operands must be in 0..{MAX_OPERAND - 1}, "
                         f"got a={a[i]}, b={b[i]} at row {i}")
    n = len(a)
    cols = [digits(a), np.full((n, 1), PLUS), digits(b), np.full((n, 1), EQUALS), digits(a + b)]
    return np.concatenate(cols, axis=1).astype(np.int32)


def make_sequences(n: int, seed: int) -> np.ndarray:
    """n sequences with a, b uniform in 0..4999 drawn by `default_rng(seed)`.  # int32 [n, 14]"""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"make_sequences: n must be a positive int, got {n!r}")
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, MAX_OPERAND, size=(2, n))
    return sequences_from_operands(a, b)


def operands(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) as ints [n] read from the digit positions of tokens [n, 14]."""
    tokens = np.asarray(tokens)
    place = 10 ** np.arange(N_DIGITS - 1, -1, -1)
    read = lambda pos: tokens[:, pos] @ place
    return read(A_POSITIONS), read(B_POSITIONS), read(TARGET_POSITIONS)


def check_sequences(tokens: np.ndarray, where: str = "sequences", lines: np.ndarray | None = None) -> np.ndarray:
    """Returns tokens as int32 [n, 14] after checking every row is a valid sum.

    Checks: shape, digit tokens 0..9 at the digit positions, `+` at 4, `=` at
    9, first digits of a and b at most 4, and c = a + b. The error names
    `where` and the row (or `lines[row]`, the row's line in a file).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != SEQ_LEN:
        raise ValueError(f"{where}: expected sequences [n, {SEQ_LEN}], got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{where}: expected integer token ids, got dtype {tokens.dtype}")
    row_name = (lambda i: f"line {lines[i]}") if lines is not None else (lambda i: f"row {i}")
    digit_pos = np.concatenate([A_POSITIONS, B_POSITIONS, TARGET_POSITIONS])
    problems = (
        (((tokens[:, digit_pos] < 0) | (tokens[:, digit_pos] > 9)).any(1), "a digit position holds a non-digit"),
        (tokens[:, N_DIGITS] != PLUS, f"position {N_DIGITS} must be '+' ({PLUS})"),
        (tokens[:, 2 * N_DIGITS + 1] != EQUALS, f"position {2 * N_DIGITS + 1} must be '=' ({EQUALS})"),
        ((tokens[:, [A_POSITIONS[0], B_POSITIONS[0]]] > 4).any(1), "a or b is 5000 or more (first digit > 4)"),
    )
    for bad, why in problems:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: {row_name(i)}: {why}: {' '.join(map(str, tokens[i]))}")
    a, b, c = operands(tokens)
    wrong = a + b != c
    if wrong.any():
        i = int(np.argmax(wrong))
        raise ValueError(f"{where}: {row_name(i)}: the sum is wrong ({a[i]} + {b[i]} = {a[i] + b[i]}, "
                         f"not {c[i]}): {' '.join(map(str, tokens[i]))}")
    return tokens.astype(np.int32)


def read_sequences(path: str | os.PathLike) -> np.ndarray:
    """Reads a fixture file: one sequence per line, 14 space-separated token ids.

    Blank lines are skipped. Raises ValueError naming the file and line of a
    line that is not 14 integers or not a valid sum (see `check_sequences`),
    and of an empty file.  # int32 [n, 14]
    """
    path = os.fspath(path)
    rows, line_numbers = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != SEQ_LEN:
                raise ValueError(f"{path}: line {number}: expected {SEQ_LEN} space-separated token ids, "
                                 f"got {len(fields)}: {line.rstrip()!r}")
            try:
                rows.append([int(x) for x in fields])
            except ValueError:
                raise ValueError(f"{path}: line {number}: token ids must be integers: {line.rstrip()!r}") from None
            line_numbers.append(number)
    if not rows:
        raise ValueError(f"{path}: no sequences in the file")
    return check_sequences(np.asarray(rows), path, np.asarray(line_numbers))


def carry_in(tokens: np.ndarray) -> np.ndarray:
    """Whether each sum digit c1..c4 receives a carry from the digits to its
    right (always False for the units digit c4).  # bool [n, 4]"""
    tokens = np.asarray(tokens)
    a, b = tokens[:, A_POSITIONS], tokens[:, B_POSITIONS]
    out = np.zeros(a.shape, bool)
    carry = np.zeros(len(a), bool)
    for i in range(N_DIGITS - 1, -1, -1):  # units first
        out[:, i] = carry
        carry = a[:, i] + b[:, i] + carry >= 10
    return out


def digit_differs_from_pair_sum(tokens: np.ndarray) -> np.ndarray:
    """The notebook's carry split: c_i != a_i + b_i, i.e. digit i receives or
    produces a carry.  # bool [n, 4]"""
    tokens = np.asarray(tokens)
    return tokens[:, TARGET_POSITIONS] != tokens[:, A_POSITIONS] + tokens[:, B_POSITIONS]


def corrupt_a_digit(tokens: np.ndarray, digit: int, seed: int, *, carries: bool | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Corrupted inputs for circuit discovery: digit `digit` of a (0 = a1, the most significant,
    .. 3 = a4) changed to another value drawn by `default_rng(seed)`, the sum recomputed.

    carries: None, any new value; False, only values that leave every carry (`carry_in`) as it
    was, so only that digit's sum digit changes; True, only values that change a carry. Rows
    with no such value (or a1 kept below 5) are dropped. Returns (clean rows kept, corrupted),
    int32 [m, 14] each, row for row.
    """
    tokens = check_sequences(tokens, "corrupt_a_digit")
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit < N_DIGITS:
        raise ValueError(f"corrupt_a_digit: digit must be an int in 0..{N_DIGITS - 1} (0 = a1), got {digit!r}")
    a, b, _ = operands(tokens)
    place = 10 ** (N_DIGITS - 1 - digit)
    old = (a // place) % 10
    carry = carry_in(tokens)
    allowed = []  # [10, n]: may digit become v in row i
    for v in range(10):
        new_a = a + (v - old) * place
        ok = (v != old) & (new_a < MAX_OPERAND)
        same = (carry_in(sequences_from_operands(np.where(ok, new_a, a), b)) == carry).all(1)
        allowed.append(ok if carries is None else ok & (same != carries))
    allowed = np.asarray(allowed).T  # [n, 10]
    keep = allowed.any(1)
    pick = np.random.default_rng(seed).random(allowed.shape) * allowed  # a uniform choice among the allowed
    new = pick.argmax(1)
    corrupted = sequences_from_operands(a + (new - old) * place * keep, b)
    return tokens[keep], corrupted[keep]


def to_text(tokens: np.ndarray) -> list[str]:
    """'2968+1606=4574' for each sequence of tokens [n, 14]."""
    return ["".join(VOCAB[t] for t in row) for row in np.asarray(tokens)]


# --- loss and metrics -----------------------------------------------------------


def token_losses(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy and correctness of the four sum digits.

    logits: [b, 14, d_vocab_out] (the model run on all 14 tokens) or [b, 4,
    d_vocab_out] (run with `output_positions=OUTPUT_POSITIONS`); tokens: int
    [b, 14]. Returns (loss [b, 4], correct bool [b, 4]), digit i scored from the
    logits at position 9 + i.
    """
    out = logits if logits.shape[1] == N_DIGITS else logits[:, OUTPUT_POSITIONS]
    out = out.astype(jnp.float32)  # [b, 4, v]
    targets = tokens[:, TARGET_POSITIONS]  # [b, 4]
    logp = jax.nn.log_softmax(out, axis=-1)
    loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return loss, jnp.argmax(out, axis=-1) == targets


def token_scores(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """(loss, correct as 0/1) of each sum digit: [b, 4, 2] (an ablation-sweep metric)."""
    loss, correct = token_losses(logits, tokens)
    return jnp.stack([loss, correct.astype(loss.dtype)], axis=-1)


def metrics(logits: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
    """Mean loss, per-digit accuracy (fraction of the 4b digits right) and
    sequence accuracy (all four right) of logits [b, 14 or 4, v] on tokens [b, 14]."""
    loss, correct = token_losses(logits, tokens)
    return {"loss": loss.mean(), "accuracy": correct.mean(), "sequence_accuracy": correct.all(-1).mean()}


def loss_fn(cfg: ModelConfig, params: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
    """Training loss: mean cross-entropy over the four sum digits of tokens
    [b, 14], with {'accuracy', 'sequence_accuracy'}."""
    logits, _ = apply_unchecked(cfg, params, tokens, output_positions=tuple(OUTPUT_POSITIONS.tolist()))  # [b, 4, v]
    m = metrics(logits, tokens)
    return m.pop("loss"), m

"""Regression of a sum from text: the model reads "x + y = ?" and outputs x + y.

Study 1 of STUDIES.md. Everything here is task data and task loss; the study
(training, probes, the causal test) is `toymech.studies.text_sum`.

Encoding. One token per character: digit d -> d + 1, ' ' -> 11, '+' -> 12,
'-' -> 13 (reserved: the study's problems have no minus sign), '=' -> 14,
'?' -> 15; 0 is padding only, so `encode("103 + 40 = ?")` is
[2, 1, 4, 11, 12, 11, 5, 1, 11, 14, 11, 15] and d_vocab = 16.

Batches. `pad_batch` right-pads token sequences to a common length and
returns a bool mask of the real tokens, which the model takes as
`key_padding_mask` (padded keys get zero attention).

Data files. A data set is a TSV file with one problem per line,
`x<TAB>y<TAB>z`, non-negative integers with z = x + y. `write_tsv` /
`read_tsv` write and read them; `generate_split` draws a deterministic,
disjoint train/val split of operand pairs. A malformed line in a file
(wrong field count, not a non-negative integer, z != x + y) is a ValueError
naming the file and the line number.

Regression head. The model's unembedding has one output (d_vocab_out = 1)
and is read at the *last real token* of each sequence. (The original
notebook pooled `h[:, -1, :]`, the last position of the padded batch, which
for a shorter problem is a padding position; we pool the last real token
instead.) Targets are the sums divided by `SCALE` = 2000, so they lie in
about [0, 1]; the loss is the mean squared error in those scaled units.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toymech.config import ModelConfig
from toymech.model import apply_unchecked, output_positions_for

PAD_ID = 0
CHAR_TO_ID = {**{str(d): d + 1 for d in range(10)}, " ": 11, "+": 12, "-": 13, "=": 14, "?": 15}
ID_TO_CHAR = {i: c for c, i in CHAR_TO_ID.items()}
D_VOCAB = 16
VOCAB = ("<pad>",) + tuple(ID_TO_CHAR[i] for i in range(1, D_VOCAB))  # token names (lens.token_names)
SCALE = 2000.0  # targets are sum / SCALE


# --------------------------------------------------------------------------- text <-> tokens


def problem_text(x: int, y: int) -> str:
    """The model's input string for operands x and y: "x + y = ?"."""
    return f"{x} + {y} = ?"


def encode(text: str) -> np.ndarray:
    """Token ids of `text`, one per character.  # int32 [len(text)]

    Raises ValueError naming the first character outside the vocabulary.
    """
    try:
        return np.asarray([CHAR_TO_ID[c] for c in text], dtype=np.int32)
    except KeyError:
        bad = next(i for i, c in enumerate(text) if c not in CHAR_TO_ID)
        raise ValueError(
            f"encode: character {text[bad]!r} at index {bad} of {text!r} is not in the vocabulary "
            f"{''.join(CHAR_TO_ID)!r}"
        ) from None


def decode(ids: Sequence[int]) -> str:
    """The text of token ids, padding (0) dropped; the inverse of `encode`."""
    ids = np.asarray(ids).ravel().tolist()
    unknown = [i for i in ids if i != PAD_ID and i not in ID_TO_CHAR]
    if unknown:
        raise ValueError(f"decode: token ids {sorted(set(unknown))} are not in the vocabulary 0..{D_VOCAB - 1}")
    return "".join(ID_TO_CHAR[i] for i in ids if i != PAD_ID)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID,
              length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token sequences to one length.

    Args:
      seqs: token sequences (each non-empty).
      pad_id: the padding token.
      length: the padded length; None = the longest sequence (a longer
        sequence is an error).
    Returns:
      (tokens int32 [batch, length], mask bool [batch, length]) with mask True
      at the real tokens.
    """
    lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
    if len(seqs) == 0 or lengths.min() == 0:
        raise ValueError("pad_batch: needs at least one sequence and no empty sequence")
    longest = int(lengths.max())
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"pad_batch: sequence {int(lengths.argmax())} has {longest} tokens > length={length}")
    mask = np.arange(length)[None, :] < lengths[:, None]  # [b, p]
    tokens = np.full(mask.shape, pad_id, dtype=np.int32)
    tokens[mask] = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
    return tokens, mask


def last_real_index(mask: jax.Array) -> jax.Array:
    """Position of each row's last real token: mask bool [batch, pos] -> int [batch].

    Assumes right padding (real tokens first), as `pad_batch` makes.
    """
    return jnp.sum(mask, axis=-1).astype(jnp.int32) - 1


def pool_last(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [batch, pos, ...] read at each row's last real token -> [batch, ...]."""
    index = last_real_index(mask)
    return jnp.take_along_axis(x, index.reshape(-1, *[1] * (x.ndim - 1)), axis=1)[:, 0]


# --------------------------------------------------------------------------- data files


def generate_split(n_train: int, n_val: int, max_operand: int, seed: int
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Disjoint train and val operand pairs drawn from 0..max_operand.

    The (max_operand + 1)² pairs are shuffled by `numpy.random.default_rng(seed)`;
    the first n_train are the training pairs and the next n_val the validation
    pairs. Returns ((x_train, y_train), (x_val, y_val)), int64 arrays.
    """
    side = max_operand + 1
    if n_train < 1 or n_val < 1 or n_train + n_val > side * side:
        raise ValueError(
            f"generate_split: need 1 <= n_train, n_val and n_train + n_val <= {side * side} "
            f"(pairs of operands 0..{max_operand}), got n_train={n_train}, n_val={n_val}"
        )
    pairs = np.random.default_rng(seed).choice(side * side, n_train + n_val, replace=False)
    x, y = np.divmod(pairs, side)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def write_tsv(path: str | os.PathLike, x: Sequence[int], y: Sequence[int]) -> None:
    """Writes one `x<TAB>y<TAB>x+y` line per pair."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    lines = "".join(f"{a}\t{b}\t{a + b}\n" for a, b in zip(x.tolist(), y.tolist()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(lines)


def read_tsv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads `x<TAB>y<TAB>z` lines: returns (x, y, z), int64 [n] each.

    Blank lines are skipped. Raises ValueError naming the file and line of the
    first malformed line (not three fields, a field that is not a
    non-negative integer, or z != x + y), and for a file with no problems.
    """
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            where = f"{path}, line {number}"
            if len(fields) != 3:
                raise ValueError(f"{where}: expected 3 tab-separated fields x, y, z, got {len(fields)}: {line!r}")
            if not all(re.fullmatch(r"[0-9]+", field.strip()) for field in fields):
                raise ValueError(f"{where}: fields must be non-negative integers, got {line!r}")
            x, y, z = (int(field) for field in fields)
            if z != x + y:
                raise ValueError(f"{where}: z = {z} is not x + y = {x + y}")
            rows.append((x, y, z))
    if not rows:
        raise ValueError(f"{path}: no problems in the file")
    x, y, z = np.asarray(rows, dtype=np.int64).T
    return x, y, z


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Encoded problems: tokens int32 [n, length], mask bool [n, length] (True at real
    tokens), operands x, y and sums z int64 [n]."""

    tokens: np.ndarray
    mask: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    def batch(self) -> dict[str, np.ndarray]:
        """The arrays `loss_fn` reads: tokens, mask and the scaled float32 target."""
        return {"tokens": self.tokens, "mask": self.mask, "target": (self.z / SCALE).astype(np.float32)}


def make_dataset(x: Sequence[int], y: Sequence[int], z: Sequence[int], length: int | None = None) -> Dataset:
    """Encodes the problems "x + y = ?" and pads them (see `pad_batch`)."""
    x, y, z = (np.asarray(a, np.int64) for a in (x, y, z))
    tokens, mask = pad_batch([encode(problem_text(a, b)) for a, b in zip(x.tolist(), y.tolist())], length=length)
    return Dataset(tokens, mask, x, y, z)


def change_operand(data: Dataset, operand: str, seed: int) -> Dataset:
    """Corrupted inputs for circuit discovery: operand `operand` ("x" or "y") of every problem
    changed to another number with as many digits, drawn by `default_rng(seed)`, and the sum
    recomputed. Same token length and mask as `data`, so the two pair up position for position."""
    if operand not in ("x", "y"):
        raise ValueError(f"change_operand: operand must be 'x' or 'y', got {operand!r}")
    old = getattr(data, operand)
    n_digits = np.maximum(1, np.floor(np.log10(np.maximum(old, 1))).astype(int) + 1)
    low = np.where(n_digits == 1, 0, 10 ** (n_digits - 1))
    size = 10**n_digits - low  # values with that many digits
    draw = np.random.default_rng(seed).integers(1, size)  # an offset from the old value, never 0
    new = low + (old - low + draw) % size
    x, y = (new, data.y) if operand == "x" else (data.x, new)
    return make_dataset(x, y, x + y, length=data.tokens.shape[1])


def max_length(*x_y_pairs: tuple[Sequence[int], Sequence[int]]) -> int:
    """Length of the longest problem text over several (x, y) operand arrays."""
    return max(len(problem_text(int(np.max(x)), int(np.max(y)))) for x, y in x_y_pairs)


# --------------------------------------------------------------------------- model and loss


def model_config(*, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, d_head: int = 16,
                 d_mlp: int | None = 256, n_ctx: int = 16) -> ModelConfig:
    """The study's encoder: bidirectional, GELU MLP, LayerNorm, d_vocab 16, one output.

    toymech blocks are pre-LN (resid += attn(LN(resid)); a final LN before the
    head), where the notebook's `nn.TransformerEncoderLayer` is post-LN by default.
    """
    return ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                       d_vocab=D_VOCAB, d_vocab_out=1, n_ctx=n_ctx, act_fn="gelu", normalization_type="LN",
                       attention_dir="bidirectional")


def predict(cfg: ModelConfig, params: dict, tokens: jax.Array, mask: jax.Array, *, intervention=None,
            capture=()) -> tuple[jax.Array, dict]:
    """The regression output (scaled units) at each row's last real token.

    tokens int [batch, pos], mask bool [batch, pos] -> (predictions [batch],
    captured activations). Tokens are not range-checked (use on data made by
    `make_dataset`, or call `toymech.apply` first).
    """
    last = output_positions_for(cfg, last_real_index(mask)[:, None], capture=capture, intervention=intervention)
    out, acts = apply_unchecked(cfg, params, tokens, intervention=intervention, capture=capture,
                                key_padding_mask=mask, output_positions=last)  # out [b, 1 or p, 1]
    return (out[:, 0, 0] if last is not None else pool_last(out[..., 0], mask)), acts


def loss_fn(cfg: ModelConfig, params: dict, batch: dict) -> tuple[jax.Array, dict]:
    """Mean squared error (scaled units) of the prediction at the last real token.

    batch: {'tokens' int [b, p], 'mask' bool [b, p], 'target' float [b]} (see
    `Dataset.batch`). Metrics: 'mae', the mean absolute error in sum units.
    """
    pred, _ = predict(cfg, params, batch["tokens"], batch["mask"])
    err = pred - batch["target"]
    return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err)) * SCALE}

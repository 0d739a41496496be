"""Reverse and increment: read x0..x7, write reverse(x) + 1 mod 4.

Study 2 of STUDIES.md. Vocabulary {0, 1, 2, 3, BOS = 4}. For input digits
x0..x7 the outputs are y_i = (x_{7-i} + 1) mod 4 and a sequence is
`[BOS, x0..x7, y0..y7]` (17 tokens). The data set is all 4^8 = 65,536 input
sequences in `itertools.product` order (row r holds the base-4 digits of r,
x0 most significant); the first 60,000 rows are for training and the last
5,536 are held out.

The model is a causal decoder fed the first 16 tokens; the logits at position
p predict token p + 1, and the loss and accuracy count only the eight output
tokens: logits at positions 8..15 (`OUTPUT_POSITIONS`) against tokens 9..16.
In the fed sequence the inputs x0..x7 sit at positions 1..8 (`INPUT_POSITIONS`),
so y_i, predicted at position 8 + i, copies the input at position 8 - i: the
"mirrored" input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from toymech.config import ModelConfig
from toymech.model import apply_unchecked, output_positions_for

N_SYMBOLS = 4  # digit tokens 0..3
BOS = 4
D_VOCAB = 5
VOCAB = ("0", "1", "2", "3", "BOS")  # token names, for toymech.analysis.lens.token_names
N_DIGITS = 8
SEQ_LEN = 1 + 2 * N_DIGITS  # 17: BOS, inputs, outputs
N_TRAIN = 60_000
INPUT_POSITIONS = np.arange(1, 1 + N_DIGITS)  # where x0..x7 sit in the fed tokens
OUTPUT_POSITIONS = np.arange(N_DIGITS, 2 * N_DIGITS)  # logits predicting y0..y7
MIRROR_POSITIONS = 2 * N_DIGITS - OUTPUT_POSITIONS  # input position y_i copies: 8 - i


def outputs(inputs: np.ndarray) -> np.ndarray:
    """y = reverse(x) + 1 mod 4 for inputs int [n, 8] -> int32 [n, 8]."""
    inputs = np.asarray(inputs)
    if inputs.ndim != 2 or inputs.shape[1] != N_DIGITS:
        raise ValueError(f"outputs: inputs must be [n, {N_DIGITS}], got shape {inputs.shape}")
    return ((inputs[:, ::-1] + 1) % N_SYMBOLS).astype(np.int32)


def all_sequences() -> np.ndarray:
    """Every `[BOS, x0..x7, y0..y7]` sequence, row r = base-4 digits of r.  # int32 [65536, 17]"""
    rows = np.arange(N_SYMBOLS**N_DIGITS)
    powers = N_SYMBOLS ** np.arange(N_DIGITS - 1, -1, -1)
    inputs = (rows[:, None] // powers[None, :]) % N_SYMBOLS  # [n, 8], x0 most significant
    bos = np.full((len(rows), 1), BOS)
    return np.concatenate([bos, inputs, outputs(inputs)], axis=1).astype(np.int32)


def split(sequences: np.ndarray, n_train: int = N_TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """(first n_train rows, the rest): the study's train and holdout sets."""
    if not 0 < n_train < len(sequences):
        raise ValueError(f"split: n_train must be in 1..{len(sequences) - 1}, got {n_train}")
    return sequences[:n_train], sequences[n_train:]


def resample_position(sequences: np.ndarray, position: int, seed: int) -> np.ndarray:
    """Corrupted inputs for circuit discovery: input x_position (0..7) of each `[BOS, x, y]`
    sequence int [n, 17] replaced by another symbol drawn by `default_rng(seed)`, the outputs
    recomputed (so y_{7 - position} changes).  # int32 [n, 17]"""
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or sequences.shape[1] != SEQ_LEN:
        raise ValueError(f"resample_position: sequences must be [n, {SEQ_LEN}], got shape {sequences.shape}")
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < N_DIGITS:
        raise ValueError(f"resample_position: position must be an int in 0..{N_DIGITS - 1}, got {position!r}")
    inputs = sequences[:, INPUT_POSITIONS].copy()
    shift = np.random.default_rng(seed).integers(1, N_SYMBOLS, len(inputs))  # never the same symbol
    inputs[:, position] = (inputs[:, position] + shift) % N_SYMBOLS
    return np.concatenate([sequences[:, :1], inputs, outputs(inputs)], axis=1).astype(np.int32)


def model_config(*, n_layers: int = 2, d_model: int = 4, n_heads: int = 1, d_head: int = 2,
                 d_mlp: int | None = 16) -> ModelConfig:
    """The study's decoder: ReLU, LayerNorm, causal, d_vocab 5, n_ctx 17."""
    return ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                       d_vocab=D_VOCAB, n_ctx=SEQ_LEN, act_fn="relu", normalization_type="LN",
                       attention_dir="causal")


def output_logits(cfg: ModelConfig, params: dict, sequences: jax.Array, *, intervention=None,
                  capture=()) -> tuple[jax.Array, dict]:
    """Runs the model on the first 16 tokens of sequences int [b, 17].

    Returns (logits at the output positions [b, 8, d_vocab], captured
    activations over all 16 positions). Tokens are not range-checked.
    """
    positions = output_positions_for(cfg, tuple(OUTPUT_POSITIONS.tolist()), capture=capture, intervention=intervention)
    logits, acts = apply_unchecked(cfg, params, sequences[:, :-1], intervention=intervention, capture=capture,
                                   output_positions=positions)  # [b, 8 or 16, v]
    return (logits if positions else logits[:, N_DIGITS:]), acts


def token_losses(logits: jax.Array, sequences: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy and correctness of output logits [b, 8, v] against
    the targets sequences[:, 9:]. Returns (loss [b, 8], correct bool [b, 8])."""
    targets = sequences[:, 1 + N_DIGITS:]  # [b, 8]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return loss, jnp.argmax(logits, axis=-1) == targets


def loss_fn(cfg: ModelConfig, params: dict, sequences: jax.Array) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy over the 8 output tokens, and their accuracy.

    sequences: int [b, 17]. Returns (loss, {'accuracy': fraction of correct output tokens}).
    """
    loss, correct = token_losses(output_logits(cfg, params, sequences)[0], sequences)
    return loss.mean(), {"accuracy": correct.mean()}


def split_metrics(cfg: ModelConfig, params: dict, data: dict) -> dict:
    """Loss and accuracy on the train and holdout rows of one array of sequences.

    data: {'sequences': int [n, 17], 'is_train': bool [n]} (every sequence once,
    marked by split, so both sets are scored in one pass). Returns
    'train_accuracy', 'holdout_accuracy', 'train_loss', 'holdout_loss' (means
    over output tokens, as the notebook's `evaluate_model`).
    """
    loss, correct = token_losses(output_logits(cfg, params, data["sequences"])[0], data["sequences"])
    is_train = data["is_train"].astype(jnp.float32)  # [n]
    mean_over = lambda v, w: jnp.sum(v.mean(-1) * w) / jnp.sum(w)
    return {
        "train_accuracy": mean_over(correct, is_train),
        "holdout_accuracy": mean_over(correct, 1.0 - is_train),
        "train_loss": mean_over(loss, is_train),
        "holdout_loss": mean_over(loss, 1.0 - is_train),
    }

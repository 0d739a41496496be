"""The grokking task: addition of two numbers read from `[a, b, =]`.

Two settings share this module (study 3 of STUDIES.md):

* modular addition (Nanda et al., "Progress measures for grokking via
  mechanistic interpretability"): a, b in 0..p-1, label (a + b) mod p,
  d_vocab = p + 1 (the p numbers and `=`), d_vocab_out = p;
* plain addition (the notebook's own variant, p = 10): label a + b in
  0..2p-2, d_vocab = p + 1, d_vocab_out = 2p (as in the notebook; the last
  logit, 2p - 1, is never a label).

The dataset is every pair (a, b), row a * p + b, so reshaping any per-example
array to [p, p] gives an (a, b) grid. The train/test split is a seeded
permutation of those rows.

Split and seed. The notebook shuffles with `torch.randperm` under
`torch.manual_seed(598)`; toymech does not depend on torch, so the split is
`numpy.random.default_rng(seed).permutation(p * p)`, its first
`int(p * p * frac_train)` rows for training and the rest for testing. Same
seed, same split on every machine, but not the notebook's exact split.

Loss precision. The notebook computes the loss in float64 because a nearly
perfect model has a train loss of ~1e-7, below float32's resolution of
`log(1 + s)` near 1 (its epsilon is 1.2e-7): the naive float32 loss rounds to
0 or jumps in steps of 1e-7. `cross_entropy` avoids the cancellation instead
of widening the dtype: with k the arg-max logit,
`loss = (x_k - x_label) + log1p(sum_{j != k} exp(x_j - x_k))`, which is exact
to float32's relative precision for any loss size and whose gradient is the
exact softmax minus one-hot. So float32 training needs no `jax_enable_x64`
(which would be process-global and slow every float32 op's neighbours).

Measures over training (Nanda et al.): `grid_forward` is the final-position
forward pass on every `[a, b, =]`, factored through per-token tables;
`grokking_progress` computes every measure of `toymech.analysis.progress`
(restricted / excluded loss, Gini, weight norm) plus the train/test loss and
the logits' cosine coefficients, for a whole stack of checkpoints at once.
"""

from __future__ import annotations

import dataclasses

import functools
from typing import NamedTuple, Sequence

import jax
from jax import Array
import jax.numpy as jnp
import numpy as np

from toymech.analysis import fourier
from toymech.analysis.progress import (excluded_logits, fourier_gini, map_checkpoints, neuron_logit_map,
                                       restricted_logits, sum_squared_weights)
from toymech.config import ModelConfig
from toymech.model import ACT_FNS


@dataclasses.dataclass(frozen=True)
class AdditionTask:
    """Addition of a, b in 0..p-1, modulo p (`modular=True`) or plain."""

    p: int
    modular: bool = True

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, int) or self.p < 2:
            raise ValueError(f"AdditionTask.p must be an int >= 2, got {self.p!r}")

    @property
    def equals_token(self) -> int:
        """Token id of `=` (the numbers use ids 0..p-1)."""
        return self.p

    @property
    def vocab(self) -> tuple[str, ...]:
        """The input tokens' names: '0'..'p-1' and '=' (for `toymech.analysis.lens.token_names`)."""
        return tuple(str(n) for n in range(self.p)) + ("=",)

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    @property
    def d_vocab_out(self) -> int:
        """p logits for modular addition; 2p for plain addition (sums 0..2p-2)."""
        return self.p if self.modular else 2 * self.p

    @property
    def n_examples(self) -> int:
        return self.p * self.p


def all_inputs(task: AdditionTask) -> np.ndarray:
    """Every `[a, b, =]` sequence, row a * p + b.  # int32 [p*p, 3]"""
    a, b = np.divmod(np.arange(task.n_examples), task.p)
    return np.stack([a, b, np.full_like(a, task.equals_token)], axis=1).astype(np.int32)


def labels(task: AdditionTask) -> np.ndarray:
    """The answer for each row of `all_inputs`.  # int32 [p*p]"""
    a, b = np.divmod(np.arange(task.n_examples), task.p)
    s = a + b
    return (s % task.p if task.modular else s).astype(np.int32)


def resample_b(task: AdditionTask, tokens: np.ndarray, seed: int) -> np.ndarray:
    """Corrupted inputs for circuit discovery: b of each `[a, b, =]` row int [n, 3] replaced by
    another number in 0..p-1 drawn by `default_rng(seed)`.  # int32 [n, 3]"""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != 3 or (tokens[:, :2] >= task.p).any() or (tokens[:, :2] < 0).any():
        raise ValueError(f"resample_b: tokens must be [a, b, =] rows int [n, 3] with a, b in 0..{task.p - 1}, "
                         f"got shape {tokens.shape}")
    out = tokens.astype(np.int32)
    out[:, 1] = (tokens[:, 1] + np.random.default_rng(seed).integers(1, task.p, len(tokens))) % task.p
    return out


def split_indices(n: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a seeded permutation of range(n) cut at int(n * frac_train)."""
    if not 0.0 < frac_train < 1.0:
        raise ValueError(f"frac_train must be strictly between 0 and 1, got {frac_train!r}")
    cut = int(n * frac_train)
    if cut == 0 or cut == n:
        raise ValueError(f"frac_train={frac_train} of {n} examples leaves an empty train or test set")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:cut]).astype(np.int32), np.sort(perm[cut:]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """All inputs and labels of a task, and which rows are for training and testing."""

    task: AdditionTask
    tokens: np.ndarray  # int32 [p*p, 3]
    labels: np.ndarray  # int32 [p*p]
    train: np.ndarray  # int32 [n_train] row indices
    test: np.ndarray  # int32 [n_test] row indices


def make_dataset(task: AdditionTask, frac_train: float, seed: int) -> Dataset:
    """The full grid of inputs with its seeded train/test split."""
    train, test = split_indices(task.n_examples, frac_train, seed)
    return Dataset(task, all_inputs(task), labels(task), train, test)


def model_config(task: AdditionTask, *, n_layers: int = 1, d_model: int = 128, n_heads: int = 4,
                 d_head: int = 32, d_mlp: int = 512, act_fn: str = "relu") -> ModelConfig:
    """The study's architecture for `task`: no LayerNorm, causal, n_ctx 3."""
    return ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                       d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=3, act_fn=act_fn,
                       normalization_type=None, attention_dir="causal")


def final_logits(logits: jax.Array) -> jax.Array:
    """Logits at the `=` position: [batch, pos, vocab] -> [batch, vocab]; [batch, vocab] unchanged."""
    if logits.ndim == 3:
        return logits[:, -1, :]
    if logits.ndim == 2:
        return logits
    raise ValueError(f"logits must be [batch, pos, vocab] or [batch, vocab], got shape {logits.shape}")


def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of the `=` position for each example, precise for tiny losses.  # [batch]

    With k the arg-max logit: loss = (x_k - x_label) + log1p(sum_{j != k} exp(x_j - x_k)).
    Mathematically equal to logsumexp(x) - x_label; numerically it keeps full
    relative precision when the loss is far below float32's epsilon.
    """
    x = final_logits(logits).astype(jnp.float32)  # [b, v]
    top = jnp.argmax(x, axis=-1)  # [b]
    x_top = jnp.take_along_axis(x, top[:, None], axis=-1)  # [b, 1]
    others = jnp.where(jnp.arange(x.shape[-1]) == top[:, None], 0.0, jnp.exp(x - x_top))  # [b, v]
    x_label = jnp.take_along_axis(x, labels[:, None], axis=-1)  # [b, 1]
    return (x_top - x_label)[:, 0] + jnp.log1p(others.sum(-1))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy at the `=` position (see `per_example_loss`).  # scalar"""
    return per_example_loss(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose arg-max logit at `=` is the label.  # scalar"""
    return (jnp.argmax(final_logits(logits), axis=-1) == labels).mean()


# --- measures over training ---------------------------------------------------

_SPLITS = ("train", "test", "all")


class GridForward(NamedTuple):
    """Final-position outputs of a one-layer model on every [a, b, =]
    (row a * p + b): logits [p*p, v]; pre, post: [p*p, d_mlp] MLP
    pre-/post-activations (hook_pre, hook_post)."""
    logits: Array
    pre: Array
    post: Array


def _check_grid_model(cfg: ModelConfig, p: int, where: str) -> None:
    problems = []
    if cfg.n_layers != 1:
        problems.append(f"n_layers={cfg.n_layers} (needs 1)")
    if cfg.d_mlp is None:
        problems.append("no MLP (d_mlp=None)")
    if cfg.normalization_type is not None:
        problems.append(f"normalization_type={cfg.normalization_type!r} (needs None)")
    if cfg.n_ctx < 3:
        problems.append(f"n_ctx={cfg.n_ctx} (needs >= 3)")
    if not 0 < p < cfg.d_vocab:
        problems.append(f"p={p} needs the tokens 0..p (p the '=' token) in d_vocab={cfg.d_vocab}")
    if problems:
        raise ValueError(f"{where}: needs a one-layer MLP model without LayerNorm on [a, b, =] "
                         f"inputs; got {', '.join(problems)}")


def grid_forward(cfg: ModelConfig, params, p: int) -> GridForward:
    """The final-position forward pass on all p*p inputs `[a, b, =]`, fast.

    Equal (to float32 rounding) to `tm.apply(cfg, params, tokens,
    capture=(hook_pre, hook_post))` at position 2 for tokens =
    `all_inputs(task)` (the '=' token is p), but factored: the query
    at `=` is the same for every input, and the keys/values at positions 0
    and 1 depend on a or b alone, so the per-token tables [p, head, ...]
    carry everything except the attention weights [p, p, head, 3] and the
    MLP itself. W_E @ W_V @ W_O @ W_in is never applied to p*p rows; the
    cost is dominated by post @ W_logit. Works for causal and bidirectional
    attention (the last query sees every key either way).

    Needs a one-layer MLP model with `normalization_type=None` (raises
    ValueError otherwise).
    """
    _check_grid_model(cfg, p, "grid_forward")
    emb, attn, mlp = params["embed"]["W_E"], params["blocks_0"]["attn"], params["blocks_0"]["mlp"]
    W_pos, W_U, b_U = params["pos_embed"]["W_pos"], params["unembed"]["W_U"], params["unembed"]["b_U"]
    x_a = emb[:p] + W_pos[0]  # [p, d]  a at position 0
    x_b = emb[:p] + W_pos[1]  # [p, d]  b at position 1
    x_e = emb[p] + W_pos[2]  # [d]  '=' at position 2
    q = jnp.einsum("d,hde->he", x_e, attn["W_Q"]) + attn["b_Q"]  # [h, e]

    def key_value(x):  # [..., d] -> attention scores [..., h], value outputs [..., h, d]
        k = jnp.einsum("...d,hde->...he", x, attn["W_K"]) + attn["b_K"]
        v = jnp.einsum("...d,hde->...he", x, attn["W_V"]) + attn["b_V"]
        score = jnp.einsum("he,...he->...h", q, k) / np.sqrt(cfg.d_head).astype(q.dtype)
        return score, jnp.einsum("...he,hed->...hd", v, attn["W_O"])

    (s_a, o_a), (s_b, o_b), (s_e, o_e) = key_value(x_a), key_value(x_b), key_value(x_e)
    scores = jnp.stack(jnp.broadcast_arrays(s_a[:, None], s_b[None, :], s_e), axis=-1)  # [a, b, h, 3]
    pattern = jax.nn.softmax(scores, axis=-1)
    w_a, w_b, w_e = pattern[..., 0], pattern[..., 1], pattern[..., 2]  # [a, b, h] each
    base = x_e + attn["b_O"]  # [d] residual at '=' before the heads' outputs

    def through(M):  # the residual stream at '=' times M [d, n] -> [a, b, n]
        t_a, t_b, t_e = o_a @ M, o_b @ M, o_e @ M  # [p, h, n], [p, h, n], [h, n]
        out = base @ M
        for h in range(cfg.n_heads):  # one fused elementwise pass (batched dots with K=h are slow on CPU)
            out = (out + w_a[:, :, h, None] * t_a[:, None, h] + w_b[:, :, h, None] * t_b[None, :, h]
                   + w_e[:, :, h, None] * t_e[h])
        return out

    pre = through(mlp["W_in"]) + mlp["b_in"]  # [a, b, m]
    post = ACT_FNS[cfg.act_fn](pre)
    logits = (through(W_U) + post @ (mlp["W_out"] @ W_U) + mlp["b_out"] @ W_U + b_U)  # [a, b, v]
    n = p * p
    return GridForward(logits.reshape(n, -1), pre.reshape(n, -1), post.reshape(n, -1))


class ProgressMeasures(NamedTuple):
    """Per checkpoint ([n_ckpt] unless noted): train_loss, test_loss,
    restricted_loss, excluded_loss, cos_coefficients [n_ckpt, p // 2]
    (frequency k in column k - 1), sum_squared_weights, gini_embedding,
    gini_logit."""
    train_loss: Array
    test_loss: Array
    restricted_loss: Array
    excluded_loss: Array
    cos_coefficients: Array
    sum_squared_weights: Array
    gini_embedding: Array
    gini_logit: Array


def _split_rows(dataset: Dataset, split: str, where: str) -> np.ndarray:
    if split not in _SPLITS:
        raise ValueError(f"{where}: split must be one of {_SPLITS}, got {split!r}")
    return {"train": dataset.train, "test": dataset.test,
            "all": np.arange(dataset.task.n_examples)}[split]


def grokking_progress(cfg: ModelConfig, stacked_params, dataset: Dataset,
                      key_freqs: Sequence[int], *, restricted_split: str = "test",
                      excluded_split: str = "train", batch_size: int | None = 1) -> ProgressMeasures:
    """Nanda et al.'s progress measures for every checkpoint, in one jitted call.

    Args:
      cfg: the (one-layer, no-LayerNorm) model config.
      stacked_params: params with a leading checkpoint axis on every leaf.
      dataset: the task's full grid (`make_dataset`): rows a * p + b,
        labels, train/test rows.
      key_freqs: the key frequencies (e.g. from `fourier.key_frequencies` on
        the final checkpoint's embedding).
      restricted_split, excluded_split: rows the restricted / excluded loss
        are averaged over ('train' | 'test' | 'all'; defaults as the notebook).
      batch_size: checkpoints evaluated together (`map_checkpoints`).

    Returns:
      ProgressMeasures, each with a leading checkpoint axis. Losses are
      `per_example_loss` (precise float32) averaged over the rows.
    """
    p = dataset.task.p
    _check_grid_model(cfg, p, "grokking_progress")
    rows = {name: jnp.asarray(_split_rows(dataset, split, "grokking_progress"))
            for name, split in (("train", "train"), ("test", "test"),
                                ("restricted", restricted_split), ("excluded", excluded_split))}
    key_freqs = [int(k) for k in key_freqs]
    bad = [k for k in key_freqs if not 1 <= k <= p // 2]
    if bad:
        raise ValueError(f"grokking_progress: key frequencies must be in 1..{p // 2}, got {bad}")
    directions = fourier.sum_frequency_directions(p, key_freqs, drop_vanishing=True).reshape(-1, p * p)  # [K, p*p]
    return _progress(cfg, stacked_params, jnp.asarray(dataset.labels), rows, directions, p, batch_size)


@functools.partial(jax.jit, static_argnames=("cfg", "p", "batch_size"))
def _progress(cfg, stacked_params, labels, rows, directions, p, batch_size) -> ProgressMeasures:
    def loss(logits, which):  # logits for the rows of split `which`
        return per_example_loss(logits, labels[rows[which]]).mean()

    def one(params):
        out = grid_forward(cfg, params, p)
        W_logit = neuron_logit_map(params)
        g_embed, g_logit = fourier_gini(params["embed"]["W_E"], W_logit, p)
        return ProgressMeasures(
            train_loss=loss(out.logits[rows["train"]], "train"),
            test_loss=loss(out.logits[rows["test"]], "test"),
            restricted_loss=loss(restricted_logits(out.post, out.logits, W_logit, directions, rows["restricted"]),
                                 "restricted"),
            excluded_loss=loss(excluded_logits(out.post, out.logits, W_logit, directions, rows["excluded"]),
                               "excluded"),
            cos_coefficients=fourier.logit_cos_coefficients(out.logits.reshape(p, p, -1)),
            sum_squared_weights=sum_squared_weights(params),
            gini_embedding=g_embed,
            gini_logit=g_logit)

    return map_checkpoints(one, stacked_params, batch_size)

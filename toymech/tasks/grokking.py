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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from toymech.config import ModelConfig


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

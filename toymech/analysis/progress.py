"""Progress measures over training (Nanda et al., "Progress measures for
grokking via mechanistic interpretability"), computed for a whole stack of
checkpoints in one jitted call.

A checkpoint stack is the params pytree with a leading checkpoint axis on
every leaf (what `toymech.train` saves every `checkpoint_every` epochs, or
`jax.tree.map(lambda *xs: jnp.stack(xs), *list_of_params)`).

Array-level measures (one checkpoint; vmap or `map_checkpoints` them):
* `sum_squared_weights`, `gini`, `fourier_gini` (sparsity of the embedding
  and of the neuron-logit map W_logit = W_out @ W_U in the Fourier basis);
* `restricted_logits` / `excluded_logits`: keep only / remove the key
  frequencies' cos(w(a+b)), sin(w(a+b)) components of the MLP neuron
  activations over the (a, b) grid and read the logits off again.

Over a stack:
* `map_checkpoints`: run any per-checkpoint function over a stack, vmapped in
  chunks so memory stays bounded.

The grokking task's own measures (the factored forward pass on every
`[a, b, =]`, and all of the above per checkpoint in one call) are
`toymech.tasks.grokking.grid_forward` / `grokking_progress`: they know the
task's inputs, which this model-agnostic layer does not.

Restricted / excluded loss, as in the grokking notebook (Nanda's code): with
D the unit directions cos(w_k (a+b)), sin(w_k (a+b)) over the p x p grid for
each key frequency k, and A [p*p, d_mlp] the neuron activations at `=`,
* restricted: A_r = mean(A) + sum_D <A, D> D, logits_r = A_r @ W_logit
  shifted so that their mean over inputs equals the model's mean logits
  (the notebook's bias correction); loss on the test split by default;
* excluded: A_x = A - sum_D <A, D> D pushed through the rest of the model
  (W_out, the residual stream, W_U and the biases); loss on the train split
  by default. (The notebook drops b_out and b_U here; they are zero in its
  model, whose biases are frozen at zero. Here they are kept.)
Both need the logits to be linear in the MLP output: a one-layer model with
`normalization_type=None`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from toymech.analysis import fourier

Array = jax.Array


def map_checkpoints(fn: Callable, stacked_params, batch_size: int | None = 1):
    """fn applied to every checkpoint of a stack: vmapped over chunks of
    `batch_size` checkpoints, chunks in sequence (`jax.lax.map`); None
    vmaps all at once. Returns fn's output with a leading checkpoint axis.

    On a CPU one checkpoint at a time (the default) is fastest: a
    checkpoint's activations stay in cache (grokking_progress at p = 113:
    0.26 s per checkpoint one at a time, 0.55 s in chunks of 8, on a busy
    2-core machine; `toymech.tasks.grokking.grokking_progress`). On an accelerator, larger chunks fill the device.

    Any model, any measure, e.g. the loss of every checkpoint:

        loss = lambda pr: grokking.cross_entropy(tm.apply_unchecked(cfg, pr, tokens)[0], labels)
        losses = jax.jit(lambda s: map_checkpoints(loss, s))(stacked_params)  # [n_ckpt]
    """
    if batch_size is None:
        return jax.vmap(fn)(stacked_params)
    return jax.lax.map(fn, stacked_params, batch_size=batch_size)


def sum_squared_weights(params) -> Array:
    """Sum of squares of every parameter (the "total weight norm" measure
    that weight decay drives down during cleanup).  # scalar"""
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


def gini(x: Array, axis: int = -1) -> Array:
    """Gini coefficient of |x| along `axis` (0 = all equal, -> 1 = one entry
    holds everything), the sparsity measure of Nanda et al.:

        G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_(i)),  x_(1) <= ... <= x_(n)

    i.e. the mean absolute difference over twice the mean. All-zero -> 0.
    """
    x = jnp.moveaxis(jnp.abs(jnp.asarray(x)), axis, -1)
    n = x.shape[-1]
    xs = jnp.sort(x, axis=-1)
    rank_weights = 2 * jnp.arange(1, n + 1, dtype=xs.dtype) - n - 1  # [n]
    total = xs.sum(axis=-1)
    return (xs @ rank_weights) / (n * jnp.where(total > 0, total, 1.0))


def neuron_logit_map(params) -> Array:
    """W_logit = W_out @ W_U of a one-layer model: [d_mlp, d_vocab_out]."""
    return params["blocks_0"]["mlp"]["W_out"] @ params["unembed"]["W_U"]


def fourier_gini(W_E: Array, W_logit: Array, p: int) -> tuple[Array, Array]:
    """Gini of the Fourier-component norms of the number embeddings
    W_E[:p] (over d_model) and of W_logit [d_mlp, v] along its output axis
    (over neurons) -> (gini_embedding, gini_logit), scalars."""
    return (gini(fourier.component_norms(W_E[:p], axis=0)),
            gini(fourier.component_norms(W_logit, axis=1)))


def _key_coefficients(neuron_acts: Array, W_logit: Array, directions: Array) -> Array:
    """(D @ A) @ W_logit: the logit contribution carried by each direction.  # [K, v]

    (sum_D <A, D> D) @ W_logit = D.T @ this, so no [N, d_mlp] array meets W_logit."""
    return (directions @ neuron_acts) @ W_logit


def restricted_logits(neuron_acts: Array, logits: Array, W_logit: Array,
                      directions: Array, rows: Array | None = None) -> Array:
    """Logits from the key-frequency part of the neuron activations only.

    Args:
      neuron_acts: [N, m] MLP activations at the final position for every
        input of the grid (N = p * p, row a * p + b).
      logits: [N, v] the model's logits there (only their mean is used).
      W_logit: [m, v] = W_out @ W_U.
      directions: [K, N] orthonormal grid directions to keep (e.g.
        `fourier.sum_frequency_directions(p, key_freqs).reshape(-1, p * p)`).
      rows: int [R], the inputs to return (e.g. the test split); None = all.

    Returns:
      [R, v] (or [N, v]): (mean(A) + sum_D <A, D> D) @ W_logit, shifted so
      that its mean over all N inputs is the model's mean logits (the
      notebook's bias correction).
    """
    coeffs = _key_coefficients(neuron_acts, W_logit, directions)  # [K, v]
    d_rows = directions if rows is None else directions[:, rows]
    # mean over all inputs of D.T @ coeffs is mean(D) @ coeffs; mean(A) @ W_logit cancels in the shift
    return d_rows.T @ coeffs + logits.mean(axis=0) - directions.mean(axis=1) @ coeffs


def excluded_logits(neuron_acts: Array, logits: Array, W_logit: Array,
                    directions: Array, rows: Array | None = None) -> Array:
    """Logits with the key-frequency part of the neuron activations removed.

    Same arguments as `restricted_logits`. Exact for a model whose logits are
    linear in the MLP activations (one layer, no LayerNorm): the model's
    logits minus the removed part's contribution, i.e. the activations
    A - sum_D <A, D> D pushed through W_out, the residual stream, W_U and
    the biases.  # [R, v] (or [N, v])
    """
    coeffs = _key_coefficients(neuron_acts, W_logit, directions)
    if rows is None:
        return logits - directions.T @ coeffs
    return logits[rows] - directions[:, rows].T @ coeffs

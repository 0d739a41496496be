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

Model-level:
* `grid_forward`: the final-position forward pass of a one-layer model on
  every `[a, b, =]` input, factored through per-token tables (see there);
* `grokking_progress`: every measure above, plus train/test loss and the
  logits' cosine coefficients per frequency, for all checkpoints at once;
* `map_checkpoints`: run any per-checkpoint function over a stack, vmapped in
  chunks so memory stays bounded.

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

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm
from toymech.analysis import fourier
from toymech.model import ACT_FNS
from toymech.tasks import grokking

Array = jax.Array

_SPLITS = ("train", "test", "all")


def map_checkpoints(fn: Callable, stacked_params, batch_size: int | None = 1):
    """fn applied to every checkpoint of a stack: vmapped over chunks of
    `batch_size` checkpoints, chunks in sequence (`jax.lax.map`); None
    vmaps all at once. Returns fn's output with a leading checkpoint axis.

    On a CPU one checkpoint at a time (the default) is fastest: a
    checkpoint's activations stay in cache (grokking_progress at p = 113:
    0.26 s per checkpoint one at a time, 0.55 s in chunks of 8, on a busy
    2-core machine). On an accelerator, larger chunks fill the device.

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


class GridForward(NamedTuple):
    """Final-position outputs of a one-layer model on every [a, b, =]
    (row a * p + b): logits [p*p, v]; pre, post: [p*p, d_mlp] MLP
    pre-/post-activations (hook_pre, hook_post)."""
    logits: Array
    pre: Array
    post: Array


def _check_grid_model(cfg: tm.ModelConfig, p: int, where: str) -> None:
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


def grid_forward(cfg: tm.ModelConfig, params, p: int) -> GridForward:
    """The final-position forward pass on all p*p inputs `[a, b, =]`, fast.

    Equal (to float32 rounding) to `tm.apply(cfg, params, tokens,
    capture=(hook_pre, hook_post))` at position 2 for tokens =
    `grokking.all_inputs(task)` (the '=' token is p), but factored: the query
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


def _split_rows(dataset: grokking.Dataset, split: str, where: str) -> np.ndarray:
    if split not in _SPLITS:
        raise ValueError(f"{where}: split must be one of {_SPLITS}, got {split!r}")
    return {"train": dataset.train, "test": dataset.test,
            "all": np.arange(dataset.task.n_examples)}[split]


def grokking_progress(cfg: tm.ModelConfig, stacked_params, dataset: grokking.Dataset,
                      key_freqs: Sequence[int], *, restricted_split: str = "test",
                      excluded_split: str = "train", batch_size: int | None = 1) -> ProgressMeasures:
    """Nanda et al.'s progress measures for every checkpoint, in one jitted call.

    Args:
      cfg: the (one-layer, no-LayerNorm) model config.
      stacked_params: params with a leading checkpoint axis on every leaf.
      dataset: the task's full grid (`grokking.make_dataset`): rows a * p + b,
        labels, train/test rows.
      key_freqs: the key frequencies (e.g. from `fourier.key_frequencies` on
        the final checkpoint's embedding).
      restricted_split, excluded_split: rows the restricted / excluded loss
        are averaged over ('train' | 'test' | 'all'; defaults as the notebook).
      batch_size: checkpoints evaluated together (`map_checkpoints`).

    Returns:
      ProgressMeasures, each with a leading checkpoint axis. Losses are
      `grokking.per_example_loss` (precise float32) averaged over the rows.
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
        return grokking.per_example_loss(logits, labels[rows[which]]).mean()

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

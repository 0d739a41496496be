"""Views of activations: over input grids, and attention split by a mask.

* `to_grid` / `from_grid`: a per-example axis over all pairs (a, b), row
  a * n_b + b (the order of `toymech.tasks.grokking.all_inputs`), as an
  [n_a, n_b] grid and back — e.g. MLP activations at `=` [p*p, d_mlp] ->
  [p, p, d_mlp] heatmaps, or attention from `=` to a per head.
* `scatter_grid`: values known only at some pairs (a test split, the failures
  of an ablation) placed on a grid, the rest filled with NaN.
* `split_stats`: mean, std and count of an array over examples, separately
  where a boolean mask is True and where it is False.
* `attention_stats`: the attention from one query position to every key
  position, per head, split by a mask over examples (e.g. carry vs no carry).

Pure, jittable (sizes static).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def to_grid(x: Array, n_a: int, n_b: int | None = None, axis: int = 0) -> Array:
    """Split `axis` (length n_a * n_b, row a * n_b + b) into [n_a, n_b].

    E.g. `to_grid(acts[:, -1, :], p)`: [p*p, pos, m] activations at the last
    position -> [p, p, m]; `to_grid(pattern[:, :, -1, 0], p)` -> [p, p, head].
    n_b defaults to n_a.
    """
    x = jnp.asarray(x)
    n_b = n_a if n_b is None else n_b
    axis = axis % x.ndim
    if x.shape[axis] != n_a * n_b:
        raise ValueError(f"to_grid: axis {axis} of shape {x.shape} has length {x.shape[axis]}, "
                         f"not n_a * n_b = {n_a} * {n_b}")
    return x.reshape(x.shape[:axis] + (n_a, n_b) + x.shape[axis + 1:])


def from_grid(x: Array, axis: int = 0) -> Array:
    """Inverse of `to_grid`: merge axes `axis` and `axis + 1` (a, b) into one
    axis of length n_a * n_b, row a * n_b + b."""
    x = jnp.asarray(x)
    axis = axis % x.ndim
    if axis + 1 >= x.ndim:
        raise ValueError(f"from_grid: needs axes {axis} and {axis + 1}, got shape {x.shape}")
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def scatter_grid(a: Array, b: Array, values: Array, n_a: int, n_b: int | None = None,
                 fill: float = float("nan")) -> Array:
    """Place values [n, ...] at grid cells (a[i], b[i]) of an [n_a, n_b, ...]
    array filled with `fill` (NaN: "not in this subset"). a, b: int [n]."""
    values = jnp.asarray(values)
    a, b = jnp.asarray(a), jnp.asarray(b)
    n_b = n_a if n_b is None else n_b
    if a.shape != b.shape or a.shape != values.shape[:1]:
        raise ValueError(f"scatter_grid: a {a.shape}, b {b.shape} and values {values.shape} "
                         "must agree on the example axis")
    if not isinstance(a, jax.core.Tracer) and not isinstance(b, jax.core.Tracer):
        bad = (a < 0) | (a >= n_a) | (b < 0) | (b >= n_b)
        if bool(bad.any()):
            i = int(jnp.argmax(bad))
            raise ValueError(f"scatter_grid: example {i} has (a, b) = ({int(a[i])}, {int(b[i])}) outside "
                             f"the {n_a} x {n_b} grid")
    dtype = jnp.result_type(values, jnp.float32) if math.isnan(fill) else values.dtype
    grid = jnp.full((n_a, n_b) + values.shape[1:], fill, dtype)
    return grid.at[a, b].set(values.astype(dtype))


class SplitStats(NamedTuple):
    """Statistics over examples, index 0 where the mask is True, 1 where False.

    mean, std: [2, ...] (NaN for an empty group; std also for a group of one
    when ddof=1); count: int [2].
    """
    mean: Array
    std: Array
    count: Array


def split_stats(x: Array, mask: Array, ddof: int = 1) -> SplitStats:
    """Mean and standard deviation of x [n, ...] over its first axis, for the
    examples with mask True and those with mask False (mask: bool [n]).

    ddof=1 gives the unbiased std (torch's `.std()`, used by the notebooks).
    """
    x = jnp.asarray(x)
    mask = jnp.asarray(mask, bool)
    if mask.shape != x.shape[:1]:
        raise ValueError(f"split_stats: mask {mask.shape} must be [n] for x of shape {x.shape}")
    groups = jnp.stack([mask, ~mask]).astype(x.dtype)  # [2, n]
    count = groups.sum(axis=1)  # [2]
    shape = (2,) + (1,) * (x.ndim - 1)
    mean = jnp.tensordot(groups, x, axes=(1, 0)) / count.reshape(shape)
    dev = jnp.square(x[None] - mean[:, None]) * groups.reshape(groups.shape + (1,) * (x.ndim - 1))
    var = dev.sum(axis=1) / (count - ddof).reshape(shape)
    valid = (count - ddof > 0).reshape(shape)
    return SplitStats(jnp.where(count.reshape(shape) > 0, mean, jnp.nan),
                      jnp.where(valid, jnp.sqrt(jnp.maximum(var, 0.0)), jnp.nan),
                      count.astype(jnp.int32))


def attention_stats(pattern: Array, query_pos: int, mask: Array | None = None,
                    ddof: int = 1) -> SplitStats:
    """Attention from one query position to every key, per head, split by a mask.

    Args:
      pattern: [batch, head, q, k] (`blocks.L.attn.hook_pattern`).
      query_pos: the query position (e.g. the position predicting a digit).
      mask: bool [batch], e.g. "this example needs a carry here"; None puts
        every example in group 0.
      ddof: for the std (1: unbiased, as the notebooks).

    Returns:
      SplitStats with mean, std [2, head, k] and count [2].
    """
    pattern = jnp.asarray(pattern)
    if pattern.ndim != 4:
        raise ValueError(f"attention_stats: pattern must be [batch, head, q, k], got {pattern.shape}")
    if not -pattern.shape[2] <= query_pos < pattern.shape[2]:
        raise ValueError(f"attention_stats: query_pos {query_pos} outside the {pattern.shape[2]} "
                         "query positions")
    from_query = pattern[:, :, query_pos, :]  # [batch, head, k]
    if mask is None:
        mask = jnp.ones(pattern.shape[:1], bool)
    return split_stats(from_query, mask, ddof)

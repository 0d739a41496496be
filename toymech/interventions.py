"""Interventions: edits to activations, written as data.

An `Intervention` maps site names (see `toymech.sites`) to a tuple of `Edit`s
that the forward pass applies, in order, to the activation at that site. An
edit is a pytree: its arrays (replacement values, directions, masks) are
leaves and its kind is static, so

* an intervention is an ordinary argument of a jitted function, and
* interventions of the same structure stacked along a leading axis
  (`stack`) run as one `jax.vmap`ped call (`toymech.apply_batched`): a sweep
  over every head is one compiled program, not a Python loop.

Each edit may be restricted by masks:
  pos      bool [pos] or [batch, pos], or int index/indices: which positions
           (for attention scores/pattern: which query positions);
  head     bool [n_heads] or int index/indices: which heads (per-head sites and
           attention scores/pattern only);
  feature  bool [last dim] or int index/indices: which entries of the last axis
           (for attention scores/pattern: which key positions).
Outside the masked region the activation is left as it was. A mask that
selects nothing (e.g. all False) leaves the site untouched, which is how a
batched sweep over layers switches the other layers' edits off.

Weight-level ablation (zeroing a parameter, as study 2 does) is
`toymech.weights.zero_weights`, a params -> params function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from toymech import projections
from toymech.sites import AXES, site_layout

KINDS = ("zero", "mean", "patch", "project_out", "add", "scale", "fn")


@struct.dataclass
class Edit:
    """One edit of one site's activation. Build it with the functions below."""

    kind: str = struct.field(pytree_node=False)
    value: Any = None  # patch value / mean / vector / directions [k, d] / scale factor
    pos: Any = None
    head: Any = None
    feature: Any = None
    fn: Callable | None = struct.field(pytree_node=False, default=None)


@struct.dataclass
class Intervention:
    """Edits to apply during a forward pass: {site name: (Edit, ...)}."""

    edits: dict[str, tuple[Edit, ...]]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.edits)


def _edit(kind, site, value=None, pos=None, head=None, feature=None, fn=None) -> Intervention:
    as_array = lambda a: None if a is None else jnp.asarray(a)
    e = Edit(kind, as_array(value), as_array(pos), as_array(head), as_array(feature), fn)
    return Intervention({site: (e,)})


def zero(site: str, *, pos=None, head=None, feature=None) -> Intervention:
    """Zero ablation: set the (masked part of the) activation to 0."""
    return _edit("zero", site, pos=pos, head=head, feature=feature)


def mean(site: str, value=None, *, pos=None, head=None, feature=None) -> Intervention:
    """Mean ablation: replace with `value` (e.g. a dataset mean, broadcast to the
    site's shape), or, when value is None, with the mean over the batch axis of
    this run's own activation at the site."""
    return _edit("mean", site, value, pos=pos, head=head, feature=feature)


def patch(site: str, value, *, pos=None, head=None, feature=None) -> Intervention:
    """Activation patching: replace with `value` (e.g. the same site's activation
    from another run), broadcastable to the site's shape."""
    return _edit("patch", site, value, pos=pos, head=head, feature=feature)


def project_out(site: str, directions, *, pos=None, head=None, feature=None) -> Intervention:
    """Remove the component along `directions` ([d] or [k, d], any basis of the
    subspace; need not be orthonormal) from the last axis of the activation."""
    return _edit("project_out", site, directions, pos=pos, head=head, feature=feature)


def add(site: str, vector, *, pos=None, head=None, feature=None) -> Intervention:
    """Add `vector` (broadcastable to the site's shape), e.g. a steering vector."""
    return _edit("add", site, vector, pos=pos, head=head, feature=feature)


def scale(site: str, factor, *, pos=None, head=None, feature=None) -> Intervention:
    """Multiply by `factor` (a scalar or broadcastable array)."""
    return _edit("scale", site, factor, pos=pos, head=head, feature=feature)


def apply_fn(site: str, fn: Callable, *, pos=None, head=None, feature=None) -> Intervention:
    """Replace the activation x with fn(x) for an arbitrary jax function `fn`.

    The function is static (part of the intervention's structure), so stacked
    interventions can only vmap over its masks, not over different functions.
    """
    return _edit("fn", site, pos=pos, head=head, feature=feature, fn=fn)


def combine(*interventions: Intervention | None) -> Intervention:
    """One intervention doing all of `interventions`; edits at the same site are
    applied in the order given."""
    edits: dict[str, tuple[Edit, ...]] = {}
    for intervention in interventions:
        if intervention is None:
            continue
        for site, site_edits in intervention.edits.items():
            edits[site] = edits.get(site, ()) + tuple(site_edits)
    return Intervention(edits)


def stack(interventions: Sequence[Intervention]) -> Intervention:
    """Stacks same-structure interventions along a new leading axis, for
    `toymech.apply_batched`. All must edit the same sites with the same kinds
    and give the same masks/values (as None or as arrays of equal shape)."""
    if not interventions:
        raise ValueError("stack() needs at least one intervention")
    first = jax.tree.structure(interventions[0])
    for i, intervention in enumerate(interventions[1:], start=1):
        if jax.tree.structure(intervention) != first:
            raise ValueError(
                f"stack(): intervention {i} has a different structure from intervention 0 "
                f"(sites {intervention.sites} vs {interventions[0].sites}, or different kinds, or "
                "a mask/value given in one and not the other):\n"
                f"  0: {first}\n  {i}: {jax.tree.structure(intervention)}"
            )
    try:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *interventions)
    except ValueError as err:
        raise ValueError(f"stack(): arrays of different shapes at the same place: {err}") from None


def batch_size(intervention: Intervention) -> int:
    """Length of the leading axis of a stacked intervention."""
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(intervention) if np.ndim(leaf) > 0}
    if len(sizes) != 1:
        raise ValueError(
            "a batched intervention needs every array to share one leading axis "
            f"(found leading sizes {sorted(sizes) or 'none'}); build it with interventions.stack"
        )
    return sizes.pop()


# --- applying edits inside the forward pass ---------------------------------


def apply_edits(site: str, x: jax.Array, edits: Sequence[Edit]) -> jax.Array:
    """Applies `edits` in order to activation `x` of `site`."""
    for e in edits:
        new = _edited_value(site, x, e)
        mask = _mask(site, x.shape, e)
        x = new if mask is None else jnp.where(mask, new, x)
    return x


def _edited_value(site, x, e: Edit):
    if e.kind == "zero":
        return jnp.zeros_like(x)
    if e.kind == "mean" and e.value is None:
        return jnp.broadcast_to(x.mean(axis=0, keepdims=True), x.shape)
    if e.kind in ("mean", "patch"):
        return jnp.broadcast_to(_broadcastable(site, e.kind, e.value, x.shape), x.shape).astype(x.dtype)
    if e.kind == "add":
        return x + _broadcastable(site, e.kind, e.value, x.shape)
    if e.kind == "scale":
        return x * _broadcastable(site, e.kind, e.value, x.shape)
    if e.kind == "project_out":
        return _project_out(site, x, e.value)
    if e.kind == "fn":
        return e.fn(x)
    raise ValueError(f"unknown edit kind {e.kind!r} at site {site}; kinds are {KINDS}")


def _broadcastable(site, kind, value, shape):
    try:
        if np.broadcast_shapes(value.shape, shape) == tuple(shape):
            return value
    except ValueError:
        pass
    raise ValueError(
        f"{kind} at site {site}: value of shape {tuple(value.shape)} does not broadcast to the "
        f"site's activation shape {tuple(shape)}"
    )


def _project_out(site, x, directions):
    directions = jnp.atleast_2d(directions)  # [k, d]
    if directions.ndim != 2 or directions.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"project_out at site {site}: directions must have shape [d] or [k, d] with "
            f"d = {x.shape[-1]} (the site's last axis), got {tuple(directions.shape)}"
        )
    return projections.project_out(x, directions.astype(x.dtype))  # handles linearly dependent directions


def _mask(site: str, shape, e: Edit):
    """Boolean mask broadcastable to `shape`, or None for 'everywhere'."""
    axes = AXES[site_layout(site)]
    mask = None
    for kind in ("pos", "head", "feature"):
        m = getattr(e, kind)
        if m is None:
            continue
        if kind not in axes:
            raise ValueError(f"site {site} has no {kind} axis; a {kind} mask cannot be applied there")
        m = _axis_mask(site, kind, m, shape, axes[kind])
        mask = m if mask is None else mask & m
    return mask


def _axis_mask(site, kind, m, shape, axis):
    n = shape[axis]
    rank = len(shape)
    if jnp.issubdtype(m.dtype, jnp.integer):  # indices -> bool [n]
        m = (jnp.arange(n)[:, None] == jnp.reshape(m, (1, -1))).any(axis=1)
    elif m.dtype != jnp.bool_:
        raise ValueError(f"{kind} mask at site {site} must be bool or int indices, got {m.dtype}")
    if m.ndim == 1 and m.shape[0] == n:
        return m.reshape([n if i == axis else 1 for i in range(rank)])
    if kind == "pos" and m.ndim == 2 and m.shape == (shape[0], n):  # [batch, pos]
        return m.reshape([shape[0] if i == 0 else n if i == axis else 1 for i in range(rank)])
    expected = f"[{n}]" + (f" or [batch={shape[0]}, {n}]" if kind == "pos" else "")
    raise ValueError(
        f"{kind} mask at site {site} has shape {tuple(m.shape)}; expected {expected} "
        f"for an activation of shape {tuple(shape)}"
    )

"""Interventions: edits to activations, written as data.

An `Intervention` maps site names (see `toymech.sites`) to a tuple of `Edit`s
that the forward pass applies, in order, to the activation at that site. An
edit is a pytree: its arrays (replacement values, directions, masks) are
leaves and its kind is static, so

* an intervention is an ordinary argument of a jitted function, and
* interventions stacked along a leading axis (`stack`) run as one
  `jax.vmap`ped call (`toymech.apply_batched`): a sweep over every head is
  one compiled program, not a Python loop. The runs of a stack may edit
  different sites with different kinds ("every head of every layer, plus
  the residual stream at each position" is one stack): `stack` gives every
  run every edit of the others, switched off (`Edit.active`) where the run
  does not make it.

Each edit may be restricted by masks:
  pos      bool [pos] or [batch, pos], or int index/indices: which positions
           (for attention scores/pattern: which query positions);
  head     bool [n_heads] or int index/indices: which heads (per-head sites and
           attention scores/pattern only);
  feature  bool [last dim] or int index/indices: which entries of the last axis
           (for attention scores/pattern: which key positions).
Outside the masked region the activation is left as it was.

Integer indices mean what they mean in numpy and TransformerLens: `pos=-1`
is the last position, `head=-2` the last but one. `toymech.apply` and
`apply_batched` check concrete indices against the activation's shape and
raise a ValueError naming the site, the axis and its size for one out of
range. Indices traced inside a user's own `jit` cannot be checked: there a
negative index still counts from the end, but one out of range selects
nothing (check such indices before tracing, e.g. by calling `apply` once).

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
from toymech.sites import AXES, axis_word, site_layout

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
    active: Any = None  # None, or bool []: False makes the edit a no-op (filled in by `stack`)


@struct.dataclass
class Intervention:
    """Edits to apply during a forward pass: {site name: (Edit, ...)}.

    n_stacked: the number of runs of a stacked intervention (see `stack`;
    static), None for a single run. `intervention[i]` is run i of a stack.
    """

    edits: dict[str, tuple[Edit, ...]]
    n_stacked: int | None = struct.field(pytree_node=False, default=None)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.edits)

    def __getitem__(self, i) -> Intervention:
        if self.n_stacked is None:
            raise TypeError("this intervention is a single run (not stacked); there is nothing to index")
        return Intervention(jax.tree.map(lambda x: x[i], self.edits))


def _edit(kind, site, value=None, pos=None, head=None, feature=None, fn=None) -> Intervention:
    as_array = lambda a: None if a is None else jnp.asarray(a)
    masks = {name: as_array(m) for name, m in (("pos", pos), ("head", head), ("feature", feature))}
    for name, m in masks.items():
        if m is not None:
            _check_mask(site, name, m)
    return Intervention({site: (Edit(kind, as_array(value), fn=fn, **masks),)})


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
    applied in the order given. Stacked interventions combine only with
    stacks of the same number of runs."""
    given = [i for i in interventions if i is not None]
    for i in given:
        if not isinstance(i, Intervention):
            raise TypeError(f"combine() takes toymech Interventions (or None), got {type(i).__name__}")
    n_stacked = {i.n_stacked for i in given}
    if len(n_stacked) > 1:
        raise ValueError(
            "combine(): cannot mix stacks of different sizes or a stack with a single run "
            f"(runs per intervention: {[i.n_stacked or 'single' for i in given]}); combine the single "
            "runs first and stack afterwards"
        )
    edits: dict[str, tuple[Edit, ...]] = {}
    for intervention in given:
        for site, site_edits in intervention.edits.items():
            edits[site] = edits.get(site, ()) + tuple(site_edits)
    return Intervention(edits, n_stacked.pop() if n_stacked else None)


def _signature(e: Edit) -> tuple:
    """What must agree for two edits to share one slot of a stack: kind,
    function, and which arrays are given with what shapes and dtypes."""
    arrays = tuple(None if a is None else (np.shape(a), jnp.result_type(a))
                   for a in (e.value, e.pos, e.head, e.feature, e.active))
    return e.kind, e.fn, arrays


def stack(interventions: Sequence[Intervention]) -> Intervention:
    """Stacks interventions along a new leading axis, one run each, for
    `toymech.apply_batched` and the sweeps.

    The runs may edit different sites, with different kinds, masks and
    value shapes. Edits alike (same site, kind, function, and arrays of the
    same shapes) share one slot of the stack; every run gets every slot, and
    one a run does not use is switched off (its `active` flag is False), so
    each run computes exactly what it would compute alone. Edits a run makes
    at one site keep their order. Runs that all make the same edits (the
    usual sweep) need no switches: the stack is just their arrays stacked.
    """
    interventions = list(interventions)
    if not interventions:
        raise ValueError("stack() needs at least one intervention")
    for i, intervention in enumerate(interventions):
        if not isinstance(intervention, Intervention):
            raise TypeError(f"stack(): item {i} is a {type(intervention).__name__}, not a toymech Intervention")
        if intervention.n_stacked is not None:
            raise ValueError(f"stack(): item {i} is already a stack of {intervention.n_stacked} runs; "
                             "stack single runs (a stack's run j is stacked[j])")
    slots: dict[str, list[tuple]] = {}  # site -> the signature of each slot
    templates: dict[tuple[str, int], Edit] = {}
    chosen: list[dict[tuple[str, int], Edit]] = []  # per run: slot -> its edit
    for intervention in interventions:
        mine = {}
        for site, edits in intervention.edits.items():
            signatures, start = slots.setdefault(site, []), 0
            for e in edits:  # the first free slot alike after the previous edit's keeps the order
                sig = _signature(e)
                j = next((j for j in range(start, len(signatures)) if signatures[j] == sig), None)
                if j is None:
                    signatures.append(sig)
                    j = len(signatures) - 1
                    templates[site, j] = e
                mine[site, j], start = e, j + 1
        chosen.append(mine)
    shared = {slot for slot in templates if all(slot in mine for mine in chosen)}

    def run(mine):
        def edit(slot):
            if slot in shared:
                return mine[slot]
            e = mine.get(slot, templates[slot])
            return e.replace(active=jnp.asarray(slot in mine))
        return {site: tuple(edit((site, j)) for j in range(len(sigs))) for site, sigs in slots.items()}

    edits = jax.tree.map(lambda *xs: jnp.stack(xs), *[run(mine) for mine in chosen])
    return Intervention(edits, len(interventions))


def batch_size(intervention: Intervention) -> int:
    """Length of the leading axis of a stacked intervention."""
    if intervention.n_stacked is not None:
        return intervention.n_stacked
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
        if e.active is not None:
            mask = e.active if mask is None else mask & e.active
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
        _check_mask(site, kind, m)
        m = _axis_mask(site, kind, m, shape, axes[kind])
        mask = m if mask is None else mask & m
    return mask


def _check_mask(site, kind, m):
    if kind not in AXES[site_layout(site)]:
        raise ValueError(f"site {site} has no {kind} axis; a {kind} mask cannot be applied there")
    if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(f"{kind} mask at site {site} must be bool or int indices, got dtype {m.dtype}")


def _axis_mask(site, kind, m, shape, axis):
    n = shape[axis]
    rank = len(shape)
    if jnp.issubdtype(m.dtype, jnp.integer):  # indices -> bool [n]; negative ones count from the end
        m = jnp.reshape(m, (1, -1))
        m = (jnp.arange(n)[:, None] == jnp.where(m < 0, m + n, m)).any(axis=1)
    if m.ndim == 1 and m.shape[0] == n:
        return m.reshape([n if i == axis else 1 for i in range(rank)])
    if kind == "pos" and m.ndim == 2 and m.shape == (shape[0], n):  # [batch, pos]
        return m.reshape([shape[0] if i == 0 else n if i == axis else 1 for i in range(rank)])
    expected = f"[{n}]" + (f" or [batch={shape[0]}, {n}]" if kind == "pos" else "")
    raise ValueError(
        f"{kind} mask at site {site} has shape {tuple(m.shape)}; expected {expected} "
        f"for an activation of shape {tuple(shape)}"
    )


def check_indices(intervention: Intervention, site_shape: Callable[[str], tuple[int, ...]]) -> None:
    """Host-side check of an intervention's integer indices against the
    shapes of the activations they index (`site_shape(site)`, e.g. from
    `toymech.sites.site_shape`): raises ValueError naming the site, the axis
    and its size for an index outside [-size, size). Indices that are
    tracers (inside a user's jit) are not checked: there, a negative index
    still counts from the end, and one out of range selects nothing."""
    for site, edits in intervention.edits.items():
        layout = site_layout(site)
        shape = site_shape(site)
        for e in edits:
            for kind in ("pos", "head", "feature"):
                m = getattr(e, kind)
                if m is None or isinstance(m, jax.core.Tracer) or not jnp.issubdtype(m.dtype, jnp.integer):
                    continue
                n = shape[AXES[layout][kind]]
                m = np.asarray(m)
                bad = (m < -n) | (m >= n)
                if bad.any():
                    raise ValueError(
                        f"{e.kind} at site {site}: {kind} index {m[bad].flat[0]} is out of range for the "
                        f"{axis_word(layout, kind)} axis of size {n} (valid indices: {-n}..{n - 1})"
                    )

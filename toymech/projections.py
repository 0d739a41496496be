"""Projections onto / out of the span of a set of directions.

The math behind `interventions.project_out` and `analysis.linalg.project_out`
(which re-exports these): it sits at the bottom of the package and imports
nothing from toymech, so the interventions need not import the analysis layer.
The directions need not be orthonormal or even independent: `orthonormal_basis`
is rank-revealing.

Shapes: x [..., d], directions [k, d] (or [d]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def orthonormal_basis(directions: Array,
                      rtol: float | None = None) -> tuple[Array, Array]:
    """Orthonormal basis of the span of directions [k, d] (or [d]).

    Returns (basis [r, d], valid [r] bool), r = min(k, d): rows of `basis`
    with `valid` True
    span the directions; the others are zero (directions that are linearly
    dependent on the rest, or zero vectors). `rtol` (relative to the largest
    singular value) defaults to eps * max(k, d).
    """
    directions = jnp.atleast_2d(jnp.asarray(directions))
    k, d = directions.shape[-2:]
    _, s, vh = jnp.linalg.svd(directions, full_matrices=False)  # vh [.., r, d]
    tol = (jnp.finfo(s.dtype).eps * max(k, d) if rtol is None else rtol)
    valid = s > tol * s[..., :1]
    basis = jnp.where(valid[..., None], vh, 0.0)
    return basis, valid


def project_onto(x: Array, directions: Array) -> Array:
    """Component of x [..., d] in the span of directions [k, d] (or [d])."""
    basis, _ = orthonormal_basis(directions)
    return jnp.einsum("...d,kd,ke->...e", x, basis, basis)


def project_out(x: Array, directions: Array) -> Array:
    """x [..., d] with its component in the span of directions [k, d] removed
    (e.g. the probe's "sum direction" removed from pooled hidden states)."""
    return x - project_onto(x, directions)

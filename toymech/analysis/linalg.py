"""Linear-algebra views of weights and activations: SVD, PCA, projections,
cosine similarities.

* `svd` is a thin SVD with a deterministic sign (the largest-magnitude entry
    of every right singular vector is positive), so components do not flip
    between runs or checkpoints.
* `pca` matches `sklearn.decomposition.PCA` (same sign convention, variance
    with n - 1, explained-variance ratios relative to the total variance) and
    also returns the scores; `pca_transform` scores new data.
* `project_onto` / `project_out` keep or remove the span of a set of
    directions (they need not be orthonormal); `orthonormal_basis` is the
    rank-revealing basis they use. They live in `toymech.projections` (the
    interventions use them too, below the analysis layer) and are re-exported
    here.
* `cosine_similarity` compares vectors with a set of reference vectors, e.g.
    final residuals with the token embeddings.

All functions take [..., n, d] data (leading axes batch), are pure and
jittable, and keep the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from toymech.projections import orthonormal_basis, project_onto, project_out  # re-exported

Array = jax.Array

__all__ = ["SVD", "PCA", "svd", "pca", "pca_transform", "orthonormal_basis", "project_onto",
           "project_out", "cosine_similarity"]


class SVD(NamedTuple):
    """Thin SVD x = u @ diag(s) @ vh, k = min(n, d) (or fewer if truncated).

    u: [..., n, k]; s: [..., k] descending; vh: [..., k, d].
    """
    u: Array
    s: Array
    vh: Array


class PCA(NamedTuple):
    """Principal components of [..., n, d] data.

    mean: [..., d] the per-feature mean removed before the SVD.
    components: [..., k, d] unit principal directions (rows), by variance.
    scores: [..., n, k] the data's coordinates on them ((x - mean) @ comps.T).
    singular_values: [..., k].
    explained_variance: [..., k] variance along each component (ddof = 1).
    explained_variance_ratio: [..., k] share of the total variance (all
        components, also when k is truncated).
    """
    mean: Array
    components: Array
    scores: Array
    singular_values: Array
    explained_variance: Array
    explained_variance_ratio: Array


def svd(x: Array, n_components: int | None = None) -> SVD:
    """Thin SVD of x [..., n, d] with deterministic signs.

    Each (u column, vh row) pair is flipped so that the largest-|.| entry of
    the vh row is positive (sklearn's `svd_flip(u_based_decision=False)`).
    `n_components` keeps the leading k singular triplets.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"svd: x must be [..., n, d], got shape {x.shape}")
    u, s, vh = jnp.linalg.svd(x, full_matrices=False)
    biggest = jnp.take_along_axis(
        vh, jnp.argmax(jnp.abs(vh), axis=-1)[..., None], axis=-1)  # [..., k, 1]
    sign = jnp.where(biggest < 0, -1.0, 1.0).astype(x.dtype)
    u = u * jnp.swapaxes(sign, -1, -2)
    vh = vh * sign
    if n_components is not None:
        k = s.shape[-1]
        if not 0 < n_components <= k:
            raise ValueError(f"svd: n_components must be in 1..{k} for shape"
                             f" {x.shape}, got {n_components}")
        u, s, vh = u[..., :n_components], s[..., :n_components], vh[
            ..., :n_components, :]
    return SVD(u, s, vh)


def pca(x: Array, n_components: int | None = None) -> PCA:
    """PCA of x [..., n, d] (rows are samples), as sklearn's `PCA`.

    E.g. `pca(W_E[:p])` for the embedding of the p number tokens: scores
    [p, k] are each token's PC coordinates (PC1 linear in the token, PC2
    parabolic in study 3a); `pca(W_L.T)` for the neuron-logit map's columns.
    """
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[-2] < 2:
        raise ValueError(f"pca: x must be [..., n, d] with n >= 2, got shape"
                         f" {x.shape}")
    mean = x.mean(axis=-2)
    full = svd(x - mean[..., None, :])
    var = jnp.square(full.s) / (x.shape[-2] - 1)  # [..., k]
    total = var.sum(axis=-1, keepdims=True)
    ratio = var / jnp.where(total > 0, total, 1.0)
    k = full.s.shape[-1] if n_components is None else n_components
    if not 0 < k <= full.s.shape[-1]:
        raise ValueError(f"pca: n_components must be in 1..{full.s.shape[-1]} for"
                         f" shape {x.shape}, got {n_components}")
    return PCA(mean=mean,
               components=full.vh[..., :k, :],
               scores=full.u[..., :k] * full.s[..., None, :k],
               singular_values=full.s[..., :k],
               explained_variance=var[..., :k],
               explained_variance_ratio=ratio[..., :k])


def pca_transform(result: PCA, x: Array) -> Array:
    """Coordinates of new data x [..., n, d] on fitted components -> [..., n, k]."""
    return jnp.einsum("...nd,...kd->...nk", x - result.mean[..., None, :],
                      result.components)


def cosine_similarity(x: Array, y: Array, eps: float = 1e-8) -> Array:
    """Cosine similarity of every vector in x [..., d] with every row of y
    [m, d] -> [..., m] (y [d] -> [...]). A zero vector has similarity 0.

    E.g. `cosine_similarity(resid_final[:, output_pos], W_E[:4])`.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"cosine_similarity: x {x.shape} and y {y.shape} differ"
                         " in the vector (last) axis")
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    yn = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), eps)
    if y.ndim == 1:
        return jnp.einsum("...d,d->...", xn, yn)
    return jnp.einsum("...d,md->...m", xn, yn)

"""Linear probes and least-squares fits, batched over sites and targets.

Every fit here is closed form (Cholesky or eigendecomposition of the small
Gram matrix of the centred design, see `_ridge_solve`), so a probe at every
(layer, position), or a polynomial fit of all 512 neurons of an MLP, is one
jitted call with no Python loop:

* `fit_ridge` / `fit_ols` follow scikit-learn's `Ridge` / `LinearRegression`
    (intercept not penalised, `alpha` applied to centred data, minimum-norm
    solution when the least-squares problem is rank deficient); with
    `standardize=True` they equal `StandardScaler` followed by the estimator.
* `r2_score`, `mean_squared_error` follow `sklearn.metrics` (`multioutput`
    'raw_values' | 'uniform_average' | 'variance_weighted').
* `pearson_corr` correlates many columns with many targets at once.
* `polynomial_features` reproduces `sklearn.preprocessing.PolynomialFeatures`
    (same column order, same names); `symmetric_features` builds the study-3a
    features that treat the two operands alike; `polynomial_fit` fits every
    target on degree-k features of the inputs in one solve.
* `fit_line` is the batched least-squares line y = slope * x + intercept.
* `probe` is the convenience for activations: pick the sample axis, split
    train/test with a JAX key, fit at every remaining site, report R² and MSE.

Shapes: the design matrix is [..., n, d] (n samples, d features) and targets
are [n] (one target) or [..., n, t] (t targets); leading axes are batch axes
(sites) and broadcast between x and y. All functions are pure and jitted
(bool / int / str options are static) and usable inside jit / vmap. They
compute in the input dtype (float32 unless JAX x64 is enabled).

Speed (2-core CPU, shared): all 512 degree-2 neuron fits of study 3a in
~2 ms steady state vs ~3 s for scikit-learn's per-neuron loop; probes at
48 sites x 2,000 samples x d_model 64 in ~0.1 s vs ~0.2-0.5 s for a
scikit-learn Ridge loop (that work is dominated by the Gram matrices, which
both sides must compute).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_MULTIOUTPUT = ("raw_values", "uniform_average", "variance_weighted")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["coef", "intercept"],
                   meta_fields=["single_target"])
@dataclasses.dataclass(frozen=True)
class LinearFit:
    """A fitted affine map `y ≈ x @ coef + intercept` (a pytree).

    coef: [..., d, t] — or [..., d] when fitted to a 1-D target — in the units
        of the original (unstandardised) features.
    intercept: [..., t] — or [...] for a 1-D target.
    single_target: static flag, True when fitted to a 1-D target.
    """
    coef: Array
    intercept: Array
    single_target: bool = False


class LineFit(NamedTuple):
    """Least-squares line y ≈ slope * x + intercept with its R²; each [...]."""
    slope: Array
    intercept: Array
    r2: Array


class ProbeResult(NamedTuple):
    """Output of `probe`.

    fit: the `LinearFit` at every site (coef [..., d(, t)], intercept [...(, t)]).
    r2, mse: per site and target ([...(, t)]) on the data the probe was
        evaluated on — the held-out split when a key was given, else all data.
    train_r2, train_mse: the same on the training split.
    """
    fit: LinearFit
    r2: Array
    mse: Array
    train_r2: Array
    train_mse: Array


def _as_2d_targets(y: Array) -> tuple[Array, bool]:
    """[n] -> ([n, 1], True); [..., n, t] -> (y, False)."""
    y = jnp.asarray(y)
    if y.ndim == 1:
        return y[:, None], True
    return y, False


def _check_design(x: Array, y: Array, where: str) -> None:
    if x.ndim < 2:
        raise ValueError(f"{where}: x must be [..., n, d], got shape {x.shape}")
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(
            f"{where}: x has {x.shape[-2]} samples (shape {x.shape}) but y has"
            f" {y.shape[-2]} (shape {y.shape})")


def fit_ridge(x: Array, y: Array, alpha: float | Array = 1.0, *,
              fit_intercept: bool = True,
              standardize: bool = False) -> LinearFit:
    """Ridge regression in closed form, batched over leading axes.

    Minimises ||y - x w - b||² + alpha ||w||² (b unpenalised), exactly like
    `sklearn.linear_model.Ridge(alpha, fit_intercept)`; alpha = 0 gives
    `LinearRegression` (minimum-norm least squares when x is rank deficient).

    Args:
        x: [..., n, d] features.
        y: [n] or [..., n, t] targets (leading axes broadcast against x's).
        alpha: L2 penalty (scalar, >= 0).
        fit_intercept: centre x and y and fit an intercept.
        standardize: scale each feature to unit (population) standard deviation
            first, as `StandardScaler` does (a constant feature keeps scale 1);
            returned coefficients are converted back to original feature units.

    Returns:
        LinearFit(coef [..., d, t] or [..., d], intercept [..., t] or [...]).
    """
    if standardize and not fit_intercept:
        raise ValueError("fit_ridge: standardize=True centres the features, so it"
                         " needs fit_intercept=True")
    return _fit_ridge(x, y, alpha, fit_intercept, standardize, _check_alpha(alpha, "fit_ridge"))


def _check_alpha(alpha, where: str) -> bool:
    """Raises for a negative alpha; returns whether alpha is known to be > 0
    (then the regularised Gram matrix is positive definite: Cholesky)."""
    if isinstance(alpha, jax.core.Tracer):
        return False
    a = np.asarray(alpha)
    if np.any(a < 0):
        raise ValueError(f"{where}: alpha must be >= 0, got {alpha}")
    return bool(np.all(a > 0))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _fit_ridge(x, y, alpha, fit_intercept: bool, standardize: bool, positive: bool) -> LinearFit:
    y2, squeeze = _as_2d_targets(y)
    x = jnp.asarray(x, dtype=jnp.result_type(x, y2, jnp.float32))
    y2 = y2.astype(x.dtype)
    _check_design(x, y2, "fit_ridge")
    n = x.shape[-2]
    if fit_intercept:
        x_mean = x.mean(axis=-2, keepdims=True)  # [..., 1, d]
        y_mean = y2.mean(axis=-2, keepdims=True)  # [..., 1, t]
    else:
        x_mean = jnp.zeros_like(x[..., :1, :])
        y_mean = jnp.zeros_like(y2[..., :1, :])
    xc, yc = x - x_mean, y2 - y_mean
    if standardize:
        # StandardScaler: population std; a (numerically) constant feature keeps
        # scale 1.
        var = jnp.mean(jnp.square(xc), axis=-2, keepdims=True)  # [..., 1, d]
        eps = jnp.finfo(x.dtype).eps
        constant = var <= n * eps * var + jnp.square(n * x_mean * eps)
        scale = jnp.where(constant, 1.0, jnp.sqrt(var))
        xc = xc / scale
    coef = _ridge_solve(xc, yc, alpha, positive)  # [..., d, t]
    if standardize:
        coef = coef / jnp.swapaxes(scale, -1, -2)
    intercept = (y_mean - x_mean @ coef)[..., 0, :]  # [..., t]
    if squeeze:
        return LinearFit(coef[..., 0], intercept[..., 0], single_target=True)
    return LinearFit(coef, intercept)


def _ridge_solve(xc: Array, yc: Array, alpha, positive: bool) -> Array:
    """argmin_w ||yc - xc w||² + alpha ||w||² (minimum norm if alpha = 0 and xc
    is rank deficient): xc [..., n, d], yc [..., n, t] -> w [..., d, t].

    Solved through the small Gram matrix: xcᵀxc [d, d] when d <= n, else the
    kernel xc xcᵀ [n, n] (w = xcᵀ c). Only that small matrix meets LAPACK; the
    products with xc are XLA matmuls, so a batch of tall [n, d] problems costs
    a few passes over the data even where LAPACK is slow on large matrices (a
    thin SVD of each xc is ~100x slower on a busy 2-core CPU).

    In the primal case the Gram matrix is first scaled to unit diagonal
    (Jacobi), so features of very different scales (a, a², a³, ...) keep
    their accuracy in float32. Then:
    * alpha known to be > 0 (`positive`): Cholesky of the regularised matrix,
      as sklearn's Ridge does;
    * otherwise (least squares): its eigendecomposition, eigenvalues below
      max(n, d) * eps * largest counting as zero when alpha = 0, one step of
      iterative refinement with the residual computed through xc (recovering
      the accuracy the Gram matrix's squared condition number costs), and the
      solution's component in the null space of xc removed, which makes it
      the minimum-norm one.
    """
    n, d = xc.shape[-2:]
    xt = jnp.swapaxes(xc, -1, -2)  # [..., d, n]
    eps = jnp.finfo(xc.dtype).eps
    if d > n:  # dual: w = xcᵀ c lies in the row space, so it is the minimum-norm solution
        kernel = xc @ xt  # [..., n, n]
        if positive:
            chol = jnp.linalg.cholesky(kernel + alpha * jnp.eye(n, dtype=kernel.dtype))
            return xt @ jax.scipy.linalg.cho_solve((chol, True), yc)
        solve, _ = _psd_pinv(kernel + alpha * jnp.eye(n, dtype=kernel.dtype), alpha, d * eps)
        c = solve(yc)
        return xt @ (c + solve(yc - xc @ (xt @ c) - alpha * c))
    gram = xt @ xc  # [..., d, d]
    diag = jnp.diagonal(gram, axis1=-2, axis2=-1)
    s = jnp.where(diag > 0, jax.lax.rsqrt(jnp.where(diag > 0, diag, 1.0)), 1.0)[..., :, None]  # [..., d, 1]
    scaled = gram * s * jnp.swapaxes(s, -1, -2) + alpha * jnp.eye(d, dtype=gram.dtype) * jnp.square(s)
    rhs = s * (xt @ yc)  # [..., d, t]
    if positive:
        chol = jnp.linalg.cholesky(scaled)
        return s * jax.scipy.linalg.cho_solve((chol, True), rhs)
    solve, dropped = _psd_pinv(scaled, alpha, n * eps)
    z = solve(rhs)
    z = z + solve(s * (xt @ (yc - xc @ (s * z))) - alpha * jnp.square(s) * z)
    w = s * z
    # Remove w's component in null(xc) = s * span(dropped eigenvectors): least-squares -> minimum norm.
    # Identity on the kept directions' (zero) columns makes nullᵀnull positive definite.
    null = s * dropped  # [..., d, d]
    nn = jnp.swapaxes(null, -1, -2) @ null + jnp.eye(d, dtype=null.dtype) * jnp.all(
        dropped == 0, axis=-2)[..., None, :]
    return w - null @ jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(nn), True),
                                                 jnp.swapaxes(null, -1, -2) @ w)


def _psd_pinv(m: Array, alpha, rtol):
    """For a symmetric PSD m [..., k, k] (already including any ridge term):
    (b -> m^+ b, eigenvectors of the directions treated as zero, other
    columns zeroed). Eigenvalues below rtol * largest count as zero unless
    alpha > 0."""
    lam, vec = jnp.linalg.eigh(m)
    lam = jnp.maximum(lam, 0.0)
    keep = (lam > rtol * lam[..., -1:]) | (alpha > 0)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)  # [..., k]

    def solve(b):  # [..., k, t]
        return vec @ (inv[..., :, None] * (jnp.swapaxes(vec, -1, -2) @ b))

    return solve, vec * (~keep)[..., None, :]


def fit_ols(x: Array, y: Array, *, fit_intercept: bool = True) -> LinearFit:
    """Ordinary least squares (`sklearn.linear_model.LinearRegression`).

    Same shapes as `fit_ridge`; the minimum-norm solution when x is rank
    deficient (e.g. more neurons than samples).
    """
    return fit_ridge(x, y, 0.0, fit_intercept=fit_intercept)


@jax.jit
def predict(fit: LinearFit, x: Array) -> Array:
    """Apply a `LinearFit`: x [..., n, d] -> [..., n, t] ([..., n] if the fit
    was to a 1-D target)."""
    if fit.single_target:
        return jnp.einsum("...nd,...d->...n", x, fit.coef) + fit.intercept[..., None]
    return (jnp.einsum("...nd,...dt->...nt", x, fit.coef)
            + fit.intercept[..., None, :])


def _reduce_multioutput(per_target: Array, weights: Array,
                        multioutput: str) -> Array:
    if multioutput == "raw_values":
        return per_target
    if multioutput == "uniform_average":
        return per_target.mean(axis=-1)
    total = weights.sum(axis=-1)
    weighted = (per_target * weights).sum(axis=-1) / jnp.where(total > 0, total, 1)
    return jnp.where(total > 0, weighted, per_target.mean(axis=-1))


def _check_multioutput(multioutput: str, where: str) -> None:
    if multioutput not in _MULTIOUTPUT:
        raise ValueError(f"{where}: multioutput must be one of {_MULTIOUTPUT},"
                         f" got {multioutput!r}")


@functools.partial(jax.jit, static_argnames=("multioutput",))
def r2_score(y_true: Array, y_pred: Array, *,
             multioutput: str = "uniform_average") -> Array:
    """Coefficient of determination, as `sklearn.metrics.r2_score`.

    Args:
        y_true, y_pred: [n] (one target) or [..., n, t] (leading axes batch).
        multioutput: 'raw_values' -> [..., t]; 'uniform_average' -> [...] mean over
            targets; 'variance_weighted' -> [...] weighted by each target's variance.

    A constant target scores 1.0 if predicted exactly and 0.0 otherwise
    (sklearn's `force_finite=True`).
    """
    _check_multioutput(multioutput, "r2_score")
    yt, squeeze = _as_2d_targets(y_true)
    yp, _ = _as_2d_targets(y_pred)
    ss_res = jnp.sum(jnp.square(yt - yp), axis=-2)  # [..., t]
    ss_tot = jnp.sum(jnp.square(yt - yt.mean(axis=-2, keepdims=True)), axis=-2)
    safe = jnp.where(ss_tot > 0, ss_tot, 1.0)
    r2 = jnp.where(ss_tot > 0, 1.0 - ss_res / safe,
                   jnp.where(ss_res > 0, 0.0, 1.0))
    out = _reduce_multioutput(r2, ss_tot, multioutput)
    if squeeze and multioutput == "raw_values":
        return out[..., 0]
    return out


@functools.partial(jax.jit, static_argnames=("multioutput",))
def mean_squared_error(y_true: Array, y_pred: Array, *,
                       multioutput: str = "uniform_average") -> Array:
    """Mean squared error, as `sklearn.metrics.mean_squared_error`.

    Shapes as `r2_score`; 'variance_weighted' is not defined for MSE.
    """
    if multioutput == "variance_weighted":
        raise ValueError("mean_squared_error: multioutput='variance_weighted' is"
                         " not defined (use 'raw_values' or 'uniform_average')")
    _check_multioutput(multioutput, "mean_squared_error")
    yt, squeeze = _as_2d_targets(y_true)
    yp, _ = _as_2d_targets(y_pred)
    mse = jnp.mean(jnp.square(yt - yp), axis=-2)  # [..., t]
    if multioutput == "uniform_average":
        return mse.mean(axis=-1)
    return mse[..., 0] if squeeze else mse


@jax.jit
def pearson_corr(x: Array, y: Array) -> Array:
    """Pearson correlation of every column of x with every column of y.

    Args:
        x: [n] or [..., n, d] (e.g. activations of d neurons on n inputs).
        y: [n] or [..., n, t] (e.g. the target a+b).

    Returns:
        [..., d, t]; a 1-D x or y drops its axis ([..., d] for x [..., n, d] and
        y [n]; a scalar for two 1-D inputs). A column with zero variance gives 0
        (not NaN).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    x2 = x[:, None] if x.ndim == 1 else x
    y2 = y[:, None] if y.ndim == 1 else y
    if x2.shape[-2] != y2.shape[-2]:
        raise ValueError(f"pearson_corr: x has {x2.shape[-2]} samples (shape"
                         f" {x.shape}) but y has {y2.shape[-2]} (shape {y.shape})")
    xc = x2 - x2.mean(axis=-2, keepdims=True)
    yc = y2 - y2.mean(axis=-2, keepdims=True)
    cov = jnp.einsum("...nd,...nt->...dt", xc, yc)
    norm = jnp.sqrt(jnp.sum(xc * xc, axis=-2))[..., :, None] * jnp.sqrt(
        jnp.sum(yc * yc, axis=-2))[..., None, :]
    corr = jnp.where(norm > 0, cov / jnp.where(norm > 0, norm, 1.0), 0.0)
    if y.ndim == 1:
        corr = corr[..., 0]
    if x.ndim == 1:
        corr = corr[..., 0, :] if y.ndim > 1 else corr[..., 0]
    return corr


@jax.jit
def fit_line(x: Array, y: Array) -> LineFit:
    """Least-squares line of y on x, batched: x, y [..., n] -> each field [...].

    Equal to `LinearRegression().fit(x[:, None], y)` per batch element; R² as
    `r2_score` (a constant y scores 1.0 when fitted exactly).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"fit_line: x {x.shape} and y {y.shape} differ in the"
                         " sample (last) axis")
    fit = fit_ols(x[..., None], y[..., None])
    slope = fit.coef[..., 0, 0]
    intercept = fit.intercept[..., 0]
    r2 = r2_score(y[..., None], (slope[..., None] * x + intercept[..., None])[
        ..., None], multioutput="raw_values")[..., 0]
    return LineFit(slope, intercept, r2)


def _monomials(n_features: int, degree: int, include_bias: bool,
               interaction_only: bool) -> list[tuple[int, ...]]:
    combos = itertools.combinations if interaction_only else (
        itertools.combinations_with_replacement)
    start = 0 if include_bias else 1
    return [c for k in range(start, degree + 1)
            for c in combos(range(n_features), k)]


@functools.partial(jax.jit, static_argnames=("degree", "include_bias", "interaction_only"))
def polynomial_features(x: Array, degree: int = 2, *,
                        include_bias: bool = False,
                        interaction_only: bool = False) -> Array:
    """All monomials of the features up to `degree`, in sklearn's order.

    x: [..., n_features] -> [..., n_output] with the columns of
    `sklearn.preprocessing.PolynomialFeatures(degree, include_bias=...,
    interaction_only=...)` (bias, x0, x1, ..., x0^2, x0 x1, ...); names from
    `polynomial_feature_names`. `include_bias` defaults to False because the
    fits here carry their own intercept.
    """
    if degree < 0:
        raise ValueError(f"polynomial_features: degree must be >= 0, got {degree}")
    x = jnp.asarray(x)
    monomials = _monomials(x.shape[-1], degree, include_bias, interaction_only)
    if not monomials:
        raise ValueError(f"polynomial_features: degree={degree} with include_bias=False gives no columns")
    cols = [jnp.prod(x[..., list(c)], axis=-1) if c else jnp.ones_like(x[..., 0]) for c in monomials]
    return jnp.stack(cols, axis=-1)


def polynomial_feature_names(names: Sequence[str], degree: int = 2, *,
                             include_bias: bool = False,
                             interaction_only: bool = False) -> tuple[str, ...]:
    """Names of the `polynomial_features` columns, spelled as sklearn's
    `get_feature_names_out` ("1", "p1a", "p1a^2", "p1a p1b")."""
    out = []
    for c in _monomials(len(names), degree, include_bias, interaction_only):
        if not c:
            out.append("1")
            continue
        parts = []
        for i in sorted(set(c)):
            power = c.count(i)
            parts.append(names[i] if power == 1 else f"{names[i]}^{power}")
        out.append(" ".join(parts))
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("degree",))
def symmetric_features(features_a: Array, features_b: Array,
                       degree: int = 2) -> Array:
    """Degree-k features of the operand sums, symmetric in a and b.

    features_a, features_b: [..., f] (e.g. [PC1(a), PC2(a)] and [PC1(b), PC2(b)])
    -> `polynomial_features(features_a + features_b, degree)`; for two PCs and
    degree 2 these are study 3a's five features s1, s2, s1², s1·s2, s2² with
    s_i = PC_i(a) + PC_i(b) (the notebook lists them as s1, s2, s1², s2², s1·s2;
    same span, same fits).
    """
    return polynomial_features(jnp.asarray(features_a) + jnp.asarray(features_b),
                               degree)


def polynomial_fit(x: Array, y: Array, degree: int = 2, *,
                   alpha: float = 0.0,
                   interaction_only: bool = False) -> tuple[LinearFit, Array]:
    """Fit every target on degree-k polynomial features of x, in one solve.

    The study-3a neuron fits: x = [PC1(a), PC1(b), PC2(a), PC2(b)] per input
    pair ([n, 4]), y = pre-activations of all neurons ([n, 512]).

    Args:
        x: [..., n, f] base features.
        y: [n] or [..., n, t] targets.
        degree: polynomial degree (an intercept is always fitted).
        alpha: ridge penalty (0 = ordinary least squares).

    Returns:
        (fit on `polynomial_features(x, degree)` columns, R² per target [..., t]
        (or [...] for a 1-D y) on the fitted data).
    """
    positive = _check_alpha(alpha, "polynomial_fit")
    return _polynomial_fit(x, y, degree, alpha, interaction_only, positive)


@functools.partial(jax.jit, static_argnums=(2, 4, 5))
def _polynomial_fit(x, y, degree: int, alpha, interaction_only: bool, positive: bool) -> tuple[LinearFit, Array]:
    feats = polynomial_features(x, degree, interaction_only=interaction_only)
    y2, single = _as_2d_targets(y)
    fit = _fit_ridge(feats, y2, alpha, True, False, positive)
    r2 = r2_score(y2, predict(fit, feats), multioutput="raw_values")  # [..., t]
    if single:
        return LinearFit(fit.coef[..., 0], fit.intercept[..., 0], single_target=True), r2[..., 0]
    return fit, r2


def train_test_split(key: Array, n: int,
                     test_size: float = 0.25) -> tuple[Array, Array]:
    """Random split of range(n) by a JAX key.

    Returns (train_idx [n - n_test], test_idx [n_test]) with
    n_test = ceil(test_size * n) as in sklearn's `train_test_split`.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"train_test_split: test_size must be in (0, 1), got"
                         f" {test_size}")
    n_test = math.ceil(test_size * n)
    if n_test >= n:
        raise ValueError(f"train_test_split: test_size={test_size} leaves no"
                         f" training sample out of n={n}")
    perm = jax.random.permutation(key, n)
    return perm[n_test:], perm[:n_test]


def probe(acts: Array, targets: Array, *, sample_axis: int = 0,
          alpha: float = 1.0, key: Array | None = None,
          test_size: float = 0.25, standardize: bool = False) -> ProbeResult:
    """Ridge probes from activations to targets at every site in one call.

    Args:
        acts: activations with one sample axis and the feature axis last, e.g.
            [batch, pos, d_model] (a probe per position) or
            [n_layers, batch, pos, d_model] with sample_axis=1 (a probe per
            (layer, position)).
        targets: [batch] or [batch, t], shared by every site.
        sample_axis: which axis of `acts` indexes samples.
        alpha: ridge penalty (0 = ordinary least squares).
        key: if given, hold out `test_size` of the samples (same split at every
            site) and report `r2`/`mse` on them; else evaluate on the training data.
        standardize: StandardScaler before the ridge (see `fit_ridge`).

    Sites are fitted one after another inside one compiled program
    (`jax.lax.map`), which keeps each site's data in cache.

    Returns:
        ProbeResult with site axes = the axes of `acts` other than the sample and
        feature axes, in order (e.g. fit.coef [n_layers, pos, d_model] and r2
        [n_layers, pos] for a 1-D target).
    """
    acts = jnp.asarray(acts)
    targets = jnp.asarray(targets)
    if acts.ndim < 2:
        raise ValueError(f"probe: acts must have a sample and a feature axis, got"
                         f" shape {acts.shape}")
    sample_axis = sample_axis % acts.ndim
    if sample_axis == acts.ndim - 1:
        raise ValueError("probe: sample_axis cannot be the feature (last) axis")
    n = acts.shape[sample_axis]
    if targets.shape[0] != n:
        raise ValueError(f"probe: acts have {n} samples on axis {sample_axis}"
                         f" (shape {acts.shape}) but targets have"
                         f" {targets.shape[0]} (shape {targets.shape})")
    positive = _check_alpha(alpha, "probe")
    if key is None:
        train_idx = test_idx = jnp.arange(n)
    else:
        train_idx, test_idx = train_test_split(key, n, test_size)
    return _probe(acts, targets, alpha, train_idx, test_idx, sample_axis, standardize, positive)


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _probe(acts, targets, alpha, train_idx, test_idx, sample_axis: int, standardize: bool,
           positive: bool) -> ProbeResult:
    """The probes of `probe`, one site after another (`lax.map`): each site's
    [n, d] block stays in cache through centring, Gram matrix and predictions,
    which on a CPU is about twice as fast as the same work batched over sites."""
    x = jnp.moveaxis(acts, sample_axis, -2)  # [..., n, d]
    sites = x.shape[:-2]
    y2, single = _as_2d_targets(targets)  # [n, t]

    def one_site(xs):  # [n, d]
        fit = _fit_ridge(xs[train_idx], y2[train_idx], alpha, True, standardize, positive)
        pred = predict(fit, xs)  # [n, t]: one pass over all samples

        def scores(idx):
            p, y = pred[idx], y2[idx]
            return (r2_score(y, p, multioutput="raw_values"),
                    mean_squared_error(y, p, multioutput="raw_values"))  # [t] each

        return fit, scores(test_idx) + scores(train_idx)

    fit, out = jax.lax.map(one_site, x.reshape((-1,) + x.shape[-2:]))
    fit, out = jax.tree.map(lambda a: a.reshape(sites + a.shape[1:]), (fit, out))
    if single:
        fit = LinearFit(fit.coef[..., 0], fit.intercept[..., 0], single_target=True)
        out = tuple(s[..., 0] for s in out)
    return ProbeResult(fit, *out)

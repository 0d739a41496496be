"""SVD / PCA against numpy and scikit-learn; projections and cosine similarity
against direct numpy formulas."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from toymech.analysis import linalg

TOL = dict(rtol=1e-5, atol=1e-5)


def _low_rank(n=12, d=7, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.array([5.0, 3.0, 1.5, 0.8, 0.4, 0.2, 0.1])[:d]
    return (rng.normal(size=(n, d)) * scales + rng.normal(size=d)).astype(np.float32)


def test_svd_matches_numpy_up_to_the_documented_sign():
    x = _low_rank()
    s = linalg.svd(x)
    u, sv, vh = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(s.s, sv, **TOL)
    np.testing.assert_allclose(np.asarray(s.u) * np.asarray(s.s) @ np.asarray(s.vh), x, **TOL)
    sign = np.sign(vh[np.arange(len(sv)), np.abs(vh).argmax(1)])  # largest entry of each vh row positive
    np.testing.assert_allclose(s.vh, vh * sign[:, None], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.u, u * sign, rtol=1e-4, atol=1e-4)
    top = linalg.svd(x, n_components=2)
    assert top.u.shape == (12, 2) and top.vh.shape == (2, 7)
    with pytest.raises(ValueError, match="n_components"):
        linalg.svd(x, n_components=8)


def test_svd_is_batched():
    xs = np.stack([_low_rank(seed=i) for i in range(3)])
    s = linalg.svd(xs)
    for i in range(3):
        one = linalg.svd(xs[i])
        np.testing.assert_allclose(s.vh[i], one.vh, **TOL)
        np.testing.assert_allclose(s.s[i], one.s, **TOL)


@pytest.mark.parametrize("n_components", [None, 3])
def test_pca_matches_sklearn(n_components):
    x = _low_rank()
    ours = linalg.pca(x, n_components)
    ref = PCA(n_components=n_components, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.mean, ref.mean_, **TOL)
    np.testing.assert_allclose(ours.components, ref.components_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.explained_variance, ref.explained_variance_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.singular_values, ref.singular_values_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.scores, ref.transform(x.astype(np.float64)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(linalg.pca_transform(ours, x[:4]), ref.transform(x[:4].astype(np.float64)),
                               rtol=1e-4, atol=1e-4)


def test_project_onto_and_out_of_non_orthonormal_directions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3, 6)).astype(np.float32)
    dirs = rng.normal(size=(2, 6)).astype(np.float32)
    dirs_dup = np.concatenate([dirs, dirs[:1] * 3.0 + dirs[1:] * -2.0])  # a dependent third direction
    proj = dirs.T @ np.linalg.solve(dirs @ dirs.T, dirs)  # projector onto their span, [6, 6]
    for d in (dirs, dirs_dup):
        np.testing.assert_allclose(linalg.project_onto(x, d), x @ proj, **TOL)
        np.testing.assert_allclose(linalg.project_out(x, d), x - x @ proj, **TOL)
    out = np.asarray(linalg.project_out(x, dirs[0]))
    np.testing.assert_allclose(out @ dirs[0], 0.0, atol=1e-5)
    basis, valid = linalg.orthonormal_basis(dirs_dup)
    assert np.asarray(valid).tolist() == [True, True, False]
    np.testing.assert_allclose(np.asarray(basis)[:2] @ np.asarray(basis)[:2].T, np.eye(2), atol=1e-5)


def test_cosine_similarity_matches_direct_formula():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 8)).astype(np.float32)
    x[0, 0] = 0.0
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    want = np.einsum("bpd,md->bpm", x, emb) / (
        np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8) * np.linalg.norm(emb, axis=-1))
    got = linalg.cosine_similarity(x, emb)
    np.testing.assert_allclose(got, want, **TOL)
    assert np.all(np.asarray(got[0, 0]) == 0.0)
    np.testing.assert_allclose(linalg.cosine_similarity(x, emb[2]), want[..., 2], **TOL)
    with pytest.raises(ValueError, match="vector"):
        linalg.cosine_similarity(x, emb[:, :4])

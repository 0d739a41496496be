"""Fourier views against closed forms, numpy's FFT and direct loops written the
way the grokking notebook writes them (explicit cos cubes, per-neuron loops)."""

import numpy as np
import pytest

from toymech.analysis import fourier

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [1, 2, 5, 10, 113])
def test_basis_is_orthonormal_for_odd_and_even_p(p):
    basis, names = fourier.fourier_basis(p)
    basis = np.asarray(basis, np.float64)
    np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-5)
    assert len(names) == p and names[0] == "Constant"
    x = np.arange(p)
    for k in range(1, (p - 1) // 2 + 1):
        i_cos, i_sin = fourier.component_index(p, k, "cos"), fourier.component_index(p, k, "sin")
        assert (i_cos, i_sin) == (2 * k - 1, 2 * k) and names[i_cos] == f"cos {k}" and names[i_sin] == f"sin {k}"
        np.testing.assert_allclose(basis[i_cos], np.cos(2 * np.pi * k * x / p) * np.sqrt(2 / p), atol=1e-6)
        np.testing.assert_allclose(basis[i_sin], np.sin(2 * np.pi * k * x / p) * np.sqrt(2 / p), atol=1e-6)
    if p % 2 == 0:
        assert names[-1] == f"cos {p // 2}"
        np.testing.assert_allclose(basis[-1], (-1.0) ** x / np.sqrt(p), atol=1e-6)
        with pytest.raises(ValueError, match="no component"):
            fourier.component_index(p, p // 2, "sin")
    freqs = fourier.basis_frequencies(p)
    assert [freqs[i] for i in range(p)] == [0] + [(i + 1) // 2 for i in range(1, p)]


def test_1d_and_2d_transforms_invert_and_match_the_basis():
    p = 10
    rng = np.random.default_rng(0)
    W_E = rng.normal(size=(p, 6)).astype(np.float32)
    acts = rng.normal(size=(p, p, 4)).astype(np.float32)
    basis = np.asarray(fourier.fourier_basis(p)[0], np.float64)
    np.testing.assert_allclose(fourier.fourier_1d(W_E), basis @ W_E, **TOL)
    np.testing.assert_allclose(fourier.fourier_1d(W_E.T, axis=1), (basis @ W_E).T, **TOL)
    np.testing.assert_allclose(fourier.inverse_fourier_1d(fourier.fourier_1d(W_E)), W_E, **TOL)
    want = np.einsum("ia,jb,abm->ijm", basis, basis, acts)  # the notebook's B @ acts @ B.T per neuron
    np.testing.assert_allclose(fourier.fourier_2d(acts), want, **TOL)
    np.testing.assert_allclose(fourier.inverse_fourier_2d(fourier.fourier_2d(acts)), acts, **TOL)
    np.testing.assert_allclose(fourier.fourier_2d(np.moveaxis(acts, 2, 0), axes=(1, 2)),
                               np.moveaxis(want, 2, 0), **TOL)


def test_norms_and_key_frequencies_of_a_planted_embedding():
    p, d = 11, 16
    rng = np.random.default_rng(1)
    x = np.arange(p)[:, None]
    W_E = (3.0 * np.cos(2 * np.pi * 2 * x / p + rng.normal(size=d))
           + 1.5 * np.cos(2 * np.pi * 5 * x / p + rng.normal(size=d))
           + 0.05 * rng.normal(size=(p, d))).astype(np.float32)
    comp = np.linalg.norm(np.asarray(fourier.fourier_basis(p)[0], np.float64) @ W_E, axis=1)
    np.testing.assert_allclose(fourier.component_norms(W_E), comp, **TOL)
    np.testing.assert_allclose(fourier.component_norms(W_E.T, axis=1), comp, **TOL)
    freq = fourier.frequency_norms(W_E)
    assert freq.shape == (p // 2 + 1,)
    np.testing.assert_allclose(freq[0], comp[0], **TOL)
    for k in range(1, p // 2 + 1):
        np.testing.assert_allclose(freq[k], np.hypot(comp[2 * k - 1], comp[2 * k]), **TOL)
    assert np.flatnonzero(fourier.key_frequencies(freq)).tolist() == [2, 5]
    assert np.flatnonzero(fourier.key_frequencies(freq, fraction=0.9)).tolist() == [2]


def test_frequency_norms_for_even_p_count_the_nyquist_row_once():
    p = 6
    W = np.random.default_rng(2).normal(size=(p, 3)).astype(np.float32)
    comp = np.asarray(fourier.component_norms(W))
    freq = np.asarray(fourier.frequency_norms(W))
    np.testing.assert_allclose(freq[3], comp[5], **TOL)
    np.testing.assert_allclose(np.sum(freq ** 2), np.sum(W.astype(np.float64) ** 2), rtol=1e-5)


def test_neuron_frequency_fractions_match_the_notebooks_loop():
    p, m = 7, 5
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(p, p, m)).astype(np.float32)
    a = np.arange(p)[:, None]
    acts[:, :, 0] = 2 + np.cos(2 * np.pi * 3 * a / p) * np.cos(2 * np.pi * 3 * a.T / p)  # a pure frequency-3 neuron
    basis = np.asarray(fourier.fourier_basis(p)[0], np.float64)
    f = np.einsum("ia,abm,jb->mij", basis, acts, basis)
    f[:, 0, 0] = 0.0
    want = np.zeros((p // 2, m))
    for k in range(1, p // 2 + 1):  # the notebook's loop, with cos/sin rows of frequency k
        for i in (0, 2 * k - 1, 2 * k):
            for j in (0, 2 * k - 1, 2 * k):
                want[k - 1] += f[:, i, j] ** 2
    want /= (f ** 2).sum(axis=(1, 2))[None, :]
    got = fourier.neuron_frequency_fractions(acts)
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got[2, 0], 1.0, atol=1e-5)
    clusters = fourier.neuron_clusters(got)
    assert int(clusters.frequency[0]) == 3 and bool(clusters.clustered[0])
    np.testing.assert_array_equal(clusters.frequency, np.argmax(want, axis=0) + 1)
    np.testing.assert_array_equal(clusters.clustered, want.max(0) >= 0.85)


def _cos_cube(p, n_out, k):
    a, b, c = np.arange(p)[:, None, None], np.arange(p)[None, :, None], np.arange(n_out)[None, None, :]
    cube = np.cos(2 * np.pi * k / p * (a + b - c))
    return cube / np.linalg.norm(cube)


@pytest.mark.parametrize("p,n_out", [(7, 7), (10, 20), (8, 8)])
def test_logit_cos_coefficients_match_explicit_cubes(p, n_out):
    logits = np.random.default_rng(4).normal(size=(p, p, n_out)).astype(np.float32)
    want = [np.sum(logits * _cos_cube(p, n_out, k)) for k in range(1, p // 2 + 1)]
    np.testing.assert_allclose(fourier.logit_cos_coefficients(logits), want, rtol=1e-4, atol=1e-5)


def test_logit_periodicity_recovers_planted_frequencies():
    p = 11
    rng = np.random.default_rng(5)
    logits = (4.0 * _cos_cube(p, p, 2) + 2.5 * _cos_cube(p, p, 4) + 0.01 * rng.normal(size=(p, p, p)))
    logits = logits.astype(np.float32)
    fit = fourier.logit_periodicity(logits, [2, 4])
    want = np.array([np.sum(logits * _cos_cube(p, p, k)) for k in (2, 4)])
    np.testing.assert_allclose(fit.coefficients, want, rtol=1e-4, atol=1e-5)
    approx = want[0] * _cos_cube(p, p, 2) + want[1] * _cos_cube(p, p, 4)
    np.testing.assert_allclose(fit.approximation, approx, atol=1e-5)
    np.testing.assert_allclose(fit.cosine_sims, want / np.linalg.norm(logits), rtol=1e-4)
    np.testing.assert_allclose(fit.residual_fraction,
                               np.linalg.norm(logits - approx) / np.linalg.norm(logits), rtol=1e-3, atol=1e-6)


def test_sum_frequency_directions_are_orthonormal_and_drop_vanishing_ones():
    p = 10
    d = np.asarray(fourier.sum_frequency_directions(p, [2, 5, 3]), np.float64).reshape(6, -1)
    a, b = np.arange(p)[:, None], np.arange(p)[None, :]
    cos2 = np.cos(2 * np.pi * 2 * (a + b) / p).ravel()
    np.testing.assert_allclose(d[0], cos2 / np.linalg.norm(cos2), atol=1e-6)
    np.testing.assert_array_equal(d[3], 0.0)  # sin(5 (a+b) 2 pi / 10) = sin(pi (a+b)) = 0
    keep = [0, 1, 2, 4, 5]
    np.testing.assert_allclose(d[keep] @ d[keep].T, np.eye(5), atol=1e-6)
    dropped = fourier.sum_frequency_directions(p, [2, 5, 3], drop_vanishing=True)
    np.testing.assert_array_equal(np.asarray(dropped).reshape(5, -1), np.asarray(d[keep], np.float32))


def test_rfft_magnitude_phase_match_numpy():
    x = np.random.default_rng(6).normal(size=(4, 12)).astype(np.float32)
    mag, phase = fourier.rfft_magnitude_phase(x)
    ref = np.fft.rfft(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(mag, np.abs(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(phase, np.angle(ref), rtol=1e-4, atol=1e-4)
    mag0, _ = fourier.rfft_magnitude_phase(x.T, axis=0)
    np.testing.assert_allclose(mag0, np.abs(ref).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [19, 20])
def test_rfft_top_k_keeps_constant_plus_k_largest_bins(n):
    x = np.random.default_rng(7).normal(size=(3, n)).astype(np.float32)
    k = 3
    res = fourier.rfft_top_k(x, k)
    for i in range(3):
        c = np.fft.rfft(x[i].astype(np.float64))
        order = np.argsort(-np.abs(c[1:]))[:k] + 1
        keep = np.zeros(len(c), bool)
        keep[0] = True
        keep[order] = True
        rec = np.fft.irfft(np.where(keep, c, 0), n=n)
        np.testing.assert_array_equal(res.kept[i], keep)
        np.testing.assert_allclose(res.reconstruction[i], rec, **TOL)
        np.testing.assert_allclose(res.variance_explained[i], 1 - np.var(x[i] - rec) / np.var(x[i]), rtol=1e-4)
    full = fourier.rfft_top_k(x, n // 2)
    np.testing.assert_allclose(full.reconstruction, x, **TOL)
    with pytest.raises(ValueError, match="k must be"):
        fourier.rfft_top_k(x, n // 2 + 1)

"""Probes and fits against scikit-learn (Ridge, LinearRegression, StandardScaler,
PolynomialFeatures, r2_score, mean_squared_error) and numpy, on small random data;
batched calls against a loop over the unbatched case."""

import jax
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from toymech.analysis import probes

TOL = dict(rtol=1e-5, atol=1e-5)


def _data(n=40, d=5, t=3, seed=0, scales=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if scales is not None:
        x = x * scales + rng.normal(size=d) * 3
    y = x @ rng.normal(size=(d, t)) + 0.3 * rng.normal(size=(n, t)) + 1.5
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 10.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_fit_ridge_matches_sklearn(alpha, fit_intercept):
    x, y = _data()
    fit = probes.fit_ridge(x, y, alpha, fit_intercept=fit_intercept)
    ref = (Ridge(alpha=alpha, fit_intercept=fit_intercept) if alpha else
           LinearRegression(fit_intercept=fit_intercept)).fit(x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(fit.coef, ref.coef_.T, **TOL)
    np.testing.assert_allclose(fit.intercept, np.broadcast_to(ref.intercept_, (3,)), **TOL)
    np.testing.assert_allclose(probes.predict(fit, x), ref.predict(x.astype(np.float64)), **TOL)


def test_one_target_drops_the_target_axis():
    x, y = _data(t=1)
    fit = probes.fit_ols(x, y[:, 0])
    ref = LinearRegression().fit(x.astype(np.float64), y[:, 0].astype(np.float64))
    assert fit.coef.shape == (5,) and fit.intercept.shape == () and fit.single_target
    np.testing.assert_allclose(fit.coef, ref.coef_, **TOL)
    np.testing.assert_allclose(fit.intercept, ref.intercept_, **TOL)
    np.testing.assert_allclose(probes.predict(fit, x), ref.predict(x.astype(np.float64)), **TOL)


def test_more_features_than_samples_gives_sklearns_minimum_norm_solution():
    x, y = _data(n=12, d=30, t=2)
    for alpha, ref in ((0.0, LinearRegression()), (0.7, Ridge(alpha=0.7))):
        fit = probes.fit_ridge(x, y, alpha)
        ref.fit(x.astype(np.float64), y.astype(np.float64))
        np.testing.assert_allclose(fit.coef, ref.coef_.T, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fit.intercept, ref.intercept_, rtol=1e-4, atol=1e-5)


def test_ill_conditioned_and_rank_deficient_designs_match_sklearn():
    a, b = np.divmod(np.arange(100), 10)
    feats = PolynomialFeatures(3, include_bias=False).fit_transform(np.stack([a, b], 1).astype(np.float64))
    y = feats @ np.random.default_rng(10).normal(size=(9, 2)) + np.random.default_rng(11).normal(size=(100, 2))
    fit = probes.fit_ols(feats.astype(np.float32), y.astype(np.float32))  # columns from 1 to 729: cond ~1e3
    ref = LinearRegression().fit(feats, y)
    np.testing.assert_allclose(fit.coef, ref.coef_.T, rtol=1e-4, atol=1e-4 * np.abs(ref.coef_).max())
    x, y = _data(n=30, d=4, t=2)
    dup = np.concatenate([x, 10.0 * x[:, :1]], axis=1)  # rank 4 of 5 columns: sklearn's minimum-norm solution
    fit = probes.fit_ols(dup, y)
    ref = LinearRegression().fit(dup.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(fit.coef, ref.coef_.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,d", [(40, 5), (10, 25)])
def test_ridge_with_a_traced_alpha_matches_sklearn(n, d):
    x, y = _data(n=n, d=d, t=2)
    fit = jax.jit(lambda a: probes.fit_ridge(x, y, a))(0.8)  # alpha unknown at trace time: eigendecomposition path
    ref = Ridge(alpha=0.8).fit(x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(fit.coef, ref.coef_.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.intercept, ref.intercept_, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        probes.fit_ridge(x, y, -1.0)


def test_standardize_is_standard_scaler_then_ridge():
    x, y = _data(scales=np.array([1.0, 30.0, 0.05, 4.0, 200.0]))
    x[:, 3] = 2.5  # a constant feature: StandardScaler keeps its scale at 1
    fit = probes.fit_ridge(x, y, 3.0, standardize=True)
    pipe = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(x.astype(np.float64), y.astype(np.float64))
    want = pipe.predict(x.astype(np.float64))
    # float32 features of very different scales: compare to 1e-6 of the predictions' range
    np.testing.assert_allclose(probes.predict(fit, x), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    scale = pipe[0].scale_
    np.testing.assert_allclose(fit.coef * scale[:, None], pipe[1].coef_.T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="fit_intercept"):
        probes.fit_ridge(x, y, 1.0, standardize=True, fit_intercept=False)


def test_batched_fit_equals_loop_over_sites():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 25, 4)).astype(np.float32)
    y = rng.normal(size=(25, 2)).astype(np.float32)
    fit = probes.fit_ridge(x, y, 0.3)
    assert fit.coef.shape == (2, 3, 4, 2) and fit.intercept.shape == (2, 3, 2)
    for i in range(2):
        for j in range(3):
            one = probes.fit_ridge(x[i, j], y, 0.3)
            np.testing.assert_allclose(fit.coef[i, j], one.coef, **TOL)
            np.testing.assert_allclose(fit.intercept[i, j], one.intercept, **TOL)


@pytest.mark.parametrize("multioutput", ["raw_values", "uniform_average", "variance_weighted"])
def test_r2_and_mse_match_sklearn(multioutput):
    rng = np.random.default_rng(1)
    y = rng.normal(size=(30, 4)).astype(np.float32) * np.array([1.0, 5.0, 0.2, 2.0], np.float32)
    pred = (y + rng.normal(size=y.shape) * 0.5).astype(np.float32)
    np.testing.assert_allclose(probes.r2_score(y, pred, multioutput=multioutput),
                               r2_score(y, pred, multioutput=multioutput), **TOL)
    if multioutput != "variance_weighted":
        np.testing.assert_allclose(probes.mean_squared_error(y, pred, multioutput=multioutput),
                                   mean_squared_error(y, pred, multioutput=multioutput), **TOL)
    np.testing.assert_allclose(probes.r2_score(y[:, 1], pred[:, 1]), r2_score(y[:, 1], pred[:, 1]), **TOL)


def test_r2_of_constant_target_follows_sklearn():
    y = np.ones((10, 2), np.float32)
    pred = np.stack([np.ones(10), np.linspace(0, 2, 10)], 1).astype(np.float32)
    np.testing.assert_array_equal(probes.r2_score(y, pred, multioutput="raw_values"),
                                  r2_score(y, pred, multioutput="raw_values"))  # [1.0, 0.0]
    with pytest.raises(ValueError, match="multioutput"):
        probes.r2_score(y, pred, multioutput="mean")


def test_pearson_corr_matches_numpy_and_zero_variance_gives_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    x[:, 4] = 0.0  # a dead neuron
    y = rng.normal(size=(50, 2)).astype(np.float32)
    corr = probes.pearson_corr(x, y)
    assert corr.shape == (6, 2)
    for i in range(6):
        for j in range(2):
            want = 0.0 if i == 4 else np.corrcoef(x[:, i], y[:, j])[0, 1]
            np.testing.assert_allclose(corr[i, j], want, **TOL)
    np.testing.assert_allclose(probes.pearson_corr(x, y[:, 0]), corr[:, 0], **TOL)
    np.testing.assert_allclose(probes.pearson_corr(x[:, 0], y[:, 1]), corr[0, 1], **TOL)
    np.testing.assert_allclose(probes.pearson_corr(x[:, 0], y), corr[0], **TOL)


def test_fit_line_batched_matches_linear_regression():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 20)).astype(np.float32)
    y = (2.0 * x - 1.0 + rng.normal(size=(3, 20))).astype(np.float32)
    line = probes.fit_line(x, y)
    for i in range(3):
        ref = LinearRegression().fit(x[i, :, None].astype(np.float64), y[i].astype(np.float64))
        np.testing.assert_allclose(line.slope[i], ref.coef_[0], **TOL)
        np.testing.assert_allclose(line.intercept[i], ref.intercept_, **TOL)
        np.testing.assert_allclose(line.r2[i], ref.score(x[i, :, None], y[i]), **TOL)


@pytest.mark.parametrize("degree,include_bias,interaction_only", [(2, True, False), (3, False, False),
                                                                   (2, False, True), (0, True, False)])
def test_polynomial_features_and_names_match_sklearn(degree, include_bias, interaction_only):
    x = np.random.default_rng(5).normal(size=(7, 4)).astype(np.float32)
    ref = PolynomialFeatures(degree, include_bias=include_bias, interaction_only=interaction_only).fit(x)
    np.testing.assert_allclose(probes.polynomial_features(x, degree, include_bias=include_bias,
                                                          interaction_only=interaction_only),
                               ref.transform(x), **TOL)
    names = ["p1a", "p1b", "p2a", "p2b"]
    assert probes.polynomial_feature_names(names, degree, include_bias=include_bias,
                                           interaction_only=interaction_only) == tuple(
        ref.get_feature_names_out(names))


def test_symmetric_features_are_poly2_of_operand_sums():
    rng = np.random.default_rng(6)
    fa, fb = rng.normal(size=(9, 2)).astype(np.float32), rng.normal(size=(9, 2)).astype(np.float32)
    s1, s2 = fa[:, 0] + fb[:, 0], fa[:, 1] + fb[:, 1]
    want = np.stack([s1, s2, s1 ** 2, s1 * s2, s2 ** 2], 1)
    np.testing.assert_allclose(probes.symmetric_features(fa, fb), want, **TOL)


def test_polynomial_fit_of_every_neuron_equals_sklearn_loop():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 4)).astype(np.float32)  # [n, (PC1(a), PC1(b), PC2(a), PC2(b))]
    feats = PolynomialFeatures(2).fit_transform(x.astype(np.float64))
    y = (feats @ rng.normal(size=(15, 8)) + 0.1 * rng.normal(size=(60, 8))).astype(np.float32)  # 8 neurons
    fit, r2 = probes.polynomial_fit(x, y, 2)
    assert fit.coef.shape == (14, 8) and r2.shape == (8,)
    for m in range(8):
        ref = LinearRegression(fit_intercept=False).fit(feats, y[:, m].astype(np.float64))
        np.testing.assert_allclose(fit.coef[:, m], ref.coef_[1:], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fit.intercept[m], ref.coef_[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r2[m], ref.score(feats, y[:, m]), **TOL)
    fit1, r2_1 = probes.polynomial_fit(x, y[:, 2], 2)
    np.testing.assert_allclose(r2_1, r2[2], **TOL)
    np.testing.assert_allclose(fit1.coef, fit.coef[:, 2], rtol=1e-4, atol=1e-4)


def test_train_test_split_partitions_range():
    train, test = probes.train_test_split(jax.random.key(0), 10, 0.3)
    assert len(test) == 3 and len(train) == 7  # ceil(0.3 * 10), as sklearn
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(10))
    other, _ = probes.train_test_split(jax.random.key(1), 10, 0.3)
    assert not np.array_equal(np.sort(train), np.sort(other))
    with pytest.raises(ValueError, match="test_size"):
        probes.train_test_split(jax.random.key(0), 10, 1.0)


@pytest.mark.parametrize("single_target", [True, False])
def test_probe_at_every_layer_and_position_equals_sklearn_loop(single_target):
    rng = np.random.default_rng(8)
    acts = rng.normal(size=(2, 30, 3, 5)).astype(np.float32)  # [layer, batch, pos, d_model]
    targets = (acts[1, :, 2] @ rng.normal(size=5) + rng.normal(size=30) * 0.5).astype(np.float32)
    if not single_target:
        targets = np.stack([targets, -2 * targets + 1], 1)
    key = jax.random.key(3)
    res = probes.probe(acts, targets, sample_axis=1, alpha=2.0, key=key, test_size=0.3)
    site = (2, 3) if single_target else (2, 3, 2)
    assert res.r2.shape == site and res.train_mse.shape == site
    train, test = (np.asarray(i) for i in probes.train_test_split(key, 30, 0.3))
    for layer in range(2):
        for pos in range(3):
            x = acts[layer, :, pos].astype(np.float64)
            ref = Ridge(alpha=2.0).fit(x[train], targets[train])
            raw = dict(multioutput="raw_values")
            np.testing.assert_allclose(res.r2[layer, pos], r2_score(targets[test], ref.predict(x[test]), **raw)
                                       .reshape(site[2:]), **TOL)
            np.testing.assert_allclose(res.train_r2[layer, pos],
                                       r2_score(targets[train], ref.predict(x[train]), **raw).reshape(site[2:]),
                                       **TOL)
            np.testing.assert_allclose(res.mse[layer, pos],
                                       mean_squared_error(targets[test], ref.predict(x[test]), **raw)
                                       .reshape(site[2:]), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(res.fit.coef[layer, pos], ref.coef_.T, **TOL)


def test_probe_without_key_scores_the_training_data_and_checks_shapes():
    rng = np.random.default_rng(9)
    acts = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.normal(size=20).astype(np.float32)
    res = probes.probe(acts, y, alpha=0.0)
    ref = LinearRegression().fit(acts, y)
    np.testing.assert_allclose(res.r2, ref.score(acts, y), **TOL)
    np.testing.assert_allclose(res.r2, res.train_r2, **TOL)
    with pytest.raises(ValueError, match="samples"):
        probes.probe(acts, y[:10])
    with pytest.raises(ValueError, match="feature"):
        probes.probe(acts, y, sample_axis=1)

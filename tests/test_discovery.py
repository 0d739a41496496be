"""Attribution patching against finite differences of the edge-level pass (EAP) and of patched
activations (node level), EAP-IG's completeness, ACDC and top-k EAP-IG on a planted circuit,
faithfulness curves against single runs, the circuit figure, and argument checks."""

import numpy as np
import pytest

import planted_circuit
import random_params
import toymech as tm
from toymech import interventions as iv
from toymech.analysis import discovery, edges

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=24, d_vocab=9, n_ctx=5,
                     normalization_type="LN", act_fn="gelu")


@pytest.fixture(scope="module")
def model():
    params = random_params.random_params(CFG, seed=11)
    rng = np.random.default_rng(12)
    clean = rng.integers(0, CFG.d_vocab, (4, CFG.n_ctx))
    corrupted = rng.integers(0, CFG.d_vocab, (4, CFG.n_ctx))
    metric = edges.loss_metric(clean[:, 1:], np.arange(CFG.n_ctx - 1))
    return params, clean, corrupted, metric


@pytest.fixture(scope="module")
def planted():
    clean, corrupted, first = planted_circuit.inputs()
    return planted_circuit.params(), clean, corrupted, edges.loss_metric(first, 2)


def _run(params, clean, corrupted, metric, w):
    return float(np.asarray(metric(edges.edge_forward(CFG, params, clean, corrupted, w)), np.float64).mean())


def test_eap_is_minus_the_finite_difference_of_the_edge_pass(model):
    params, clean, corrupted, metric = model
    scores = discovery.edge_attribution(CFG, params, clean, corrupted, metric, method="eap")
    g = edges.graph(CFG)
    eps = 1e-2
    for e in [0, 7, 20, g.n_edges // 2, g.n_edges - 1]:
        up, down = np.ones(g.n_edges), np.ones(g.n_edges)
        up[e], down[e] = 1 + eps, 1 - eps
        slope = (_run(params, clean, corrupted, metric, up) - _run(params, clean, corrupted, metric, down)) / (2 * eps)
        np.testing.assert_allclose(scores.values[e], -slope, rtol=2e-2, atol=2e-4, err_msg=g.edges[e])
    assert np.abs(scores.values).max() > 1e-2


@pytest.mark.parametrize("cfg, padded", [
    (CFG, False),
    (tm.ModelConfig(n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=None, d_vocab=7, d_vocab_out=5, n_ctx=5,
                    normalization_type="LNPre"), True),
    (tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=24, d_vocab=9, n_ctx=5,
                    normalization_type=None, attention_dir="bidirectional"), True)])
def test_eap_is_the_gradient_of_the_edge_pass_on_every_edge(cfg, padded):
    """EAP is computed from the gradients at the receivers' inputs of a plain clean run; the
    edge-level pass differentiated with respect to its weights must give the same numbers."""
    import jax
    params = random_params.random_params(cfg, seed=13)
    rng = np.random.default_rng(14)
    clean, corrupted = (rng.integers(0, cfg.d_vocab, (4, cfg.n_ctx)) for _ in range(2))
    mask = None
    if padded:
        mask = np.ones(clean.shape, bool)
        mask[2, -2:] = False
    metric = edges.loss_metric(clean[:, 1:] % cfg.d_vocab_out, np.arange(cfg.n_ctx - 1))
    scores = discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap", key_padding_mask=mask)
    n = edges.graph(cfg).n_edges
    pass_metric = lambda w: metric(edges.edge_forward(cfg, params, clean, corrupted, w, key_padding_mask=mask)).mean()
    np.testing.assert_allclose(scores.values, -jax.grad(pass_metric)(np.ones(n, np.float32)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores.clean, pass_metric(np.ones(n, np.float32)), rtol=1e-5)
    np.testing.assert_allclose(scores.corrupted, pass_metric(np.zeros(n, np.float32)), rtol=1e-4)


def test_eap_ig_sums_to_the_total_effect_and_one_step_is_the_midpoint_gradient(model):
    params, clean, corrupted, metric = model
    ig = discovery.edge_attribution(CFG, params, clean, corrupted, metric, method="eap-ig", steps=32, chunk_size=5)
    np.testing.assert_allclose(ig.values.sum(), ig.corrupted - ig.clean, rtol=2e-2)
    one = discovery.edge_attribution(CFG, params, clean, corrupted, metric, method="eap-ig", steps=1)
    e, eps, n = 9, 1e-2, edges.graph(CFG).n_edges
    up, down = np.full(n, 0.5), np.full(n, 0.5)
    up[e], down[e] = 0.5 + eps, 0.5 - eps
    slope = (_run(params, clean, corrupted, metric, up) - _run(params, clean, corrupted, metric, down)) / (2 * eps)
    np.testing.assert_allclose(one.values[e], -slope, rtol=2e-2, atol=2e-4)


def test_node_attribution_is_the_directional_derivative_of_patching(model):
    params, clean, corrupted, metric = model
    nodes = discovery.node_attribution(CFG, params, clean, corrupted, metric)
    assert nodes.heads.shape == (2, CFG.n_ctx, 2) and nodes.neurons.shape == (2, CFG.n_ctx, 24)
    assert nodes.resid.shape == (2, CFG.n_ctx)
    _, clean_acts = tm.apply(CFG, params, clean, capture="all")
    _, corr_acts = tm.apply(CFG, params, corrupted, capture="all")
    eps = 1e-2

    def slope(site, pos, head=None, feature=None):
        def metric_at(t):
            value = clean_acts[site] + t * (corr_acts[site] - clean_acts[site])
            edit = iv.patch(site, value, pos=pos, head=head, feature=feature)
            return float(np.asarray(metric(tm.apply(CFG, params, clean, intervention=edit)[0]), np.float64).mean())
        return (metric_at(eps) - metric_at(-eps)) / (2 * eps)

    np.testing.assert_allclose(nodes.heads[1, 3, 0], slope("blocks.1.attn.hook_z", 3, head=0), rtol=2e-2, atol=2e-4)
    np.testing.assert_allclose(nodes.neurons[0, 2, 5], slope("blocks.0.mlp.hook_post", 2, feature=5), rtol=2e-2,
                               atol=2e-4)
    np.testing.assert_allclose(nodes.resid[1, 4], slope("blocks.1.hook_resid_pre", 4), rtol=2e-2, atol=2e-4)


def test_acdc_recovers_exactly_the_planted_circuit(planted):
    params, clean, corrupted, metric = planted
    circuit = discovery.acdc(planted_circuit.CFG, params, clean, corrupted, metric, tau=1e-3)
    assert set(circuit.kept) == set(planted_circuit.PLANTED)
    np.testing.assert_allclose(circuit.recovered, 1.0, atol=1e-5)
    assert np.all(circuit.scores > 1.0)  # each planted edge's removal costs more than a nat of loss
    everything = discovery.acdc(planted_circuit.CFG, params, clean, corrupted, metric, tau=0.0)
    assert everything.mask.all()  # tau = 0 removes nothing


def test_acdc_with_kl_prunes_the_planted_model_the_same_way(planted):
    params, clean, corrupted, _ = planted
    kl = edges.kl_metric(tm.apply(planted_circuit.CFG, params, clean)[0], 2)
    circuit = discovery.acdc(planted_circuit.CFG, params, clean, corrupted, kl, tau=1e-3)
    assert set(circuit.kept) == set(planted_circuit.PLANTED)
    np.testing.assert_allclose(circuit.metric, 0.0, atol=1e-5)


def test_top_k_eap_ig_recovers_exactly_the_planted_circuit(planted, tmp_path):
    params, clean, corrupted, metric = planted
    ig = discovery.edge_attribution(planted_circuit.CFG, params, clean, corrupted, metric, method="eap-ig", steps=8)
    circuit = discovery.top_k(planted_circuit.CFG, params, clean, corrupted, metric, ig, k=4)
    assert set(circuit.kept) == set(planted_circuit.PLANTED)
    np.testing.assert_allclose(circuit.recovered, 1.0, atol=1e-5)
    path = circuit.figure(tmp_path / "circuit.png")
    assert (tmp_path / "circuit.png").stat().st_size > 5000 and path.endswith("circuit.png")


def test_faithfulness_curve_equals_single_runs(model):
    params, clean, corrupted, metric = model
    eap = discovery.edge_attribution(CFG, params, clean, corrupted, metric)
    n = edges.graph(CFG).n_edges
    ks = np.array([0, 1, 5, n // 2, n])
    curve = discovery.faithfulness_curve(CFG, params, clean, corrupted, metric, eap, ks=ks, chunk_size=2)
    order = np.argsort(-np.abs(np.asarray(eap.values)), kind="stable")
    for k, got in zip(ks, curve.metric):
        w = np.zeros(n)
        w[order[:k]] = 1.0
        np.testing.assert_allclose(got, _run(params, clean, corrupted, metric, w), rtol=1e-4)
    np.testing.assert_allclose(curve.recovered[[0, -1]], [0.0, 1.0], atol=1e-4)
    full = discovery.faithfulness_curve(CFG, params, clean, corrupted, metric, eap)
    assert full.ks.tolist() == list(range(n + 1))


def test_arguments_out_of_range_are_refused(planted):
    params, clean, corrupted, metric = planted
    cfg = planted_circuit.CFG
    n = edges.graph(cfg).n_edges
    scores = np.arange(n, dtype=float)
    for k, message in [(-1, r"k must be in \[0, "), (n + 1, rf"k must be in \[0, {n}\], got {n + 1}"),
                       (2.5, "k must be an int")]:
        with pytest.raises(ValueError, match=message):
            discovery.top_k(cfg, params, clean, corrupted, metric, scores, k)
    assert discovery.top_k(cfg, params, clean, corrupted, metric, scores, 0).kept == ()
    assert len(discovery.top_k(cfg, params, clean, corrupted, metric, scores, n).kept) == n
    for tau in (-1e-3, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
            discovery.acdc(cfg, params, clean, corrupted, metric, tau)
    for steps in (0, -2, 1.5):
        with pytest.raises(ValueError, match="steps must be"):
            discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap-ig", steps=steps)
    with pytest.raises(ValueError, match=r"method must be one of \('eap', 'eap-ig'\)"):
        discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="ig")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap-ig", chunk_size=0)
    with pytest.raises(ValueError, match=rf"scores must be one per edge, shape \({n},\), got \(3,\)"):
        discovery.faithfulness_curve(cfg, params, clean, corrupted, metric, np.ones(3))
    for ks in ([-1], [n + 1], [], [[1]]):
        with pytest.raises(ValueError, match=rf"ks must be a non-empty 1-D array of ints in \[0, {n}\]"):
            discovery.faithfulness_curve(cfg, params, clean, corrupted, metric, scores, ks=ks)
    with pytest.raises(ValueError, match="one scalar per example"):
        discovery.acdc(cfg, params, clean, corrupted, lambda logits: logits.sum(), 0.1)
    with pytest.raises(ValueError, match=r"clean \(64, 3\), corrupted \(64, 2\)"):
        discovery.node_attribution(cfg, params, clean, corrupted[:, :2], metric)

"""The edge graph and the edge-level forward pass against TransformerLens (split q/k/v inputs,
attention results and hook_mlp_in, one edge patched by hooks), exact edge patching and path
patching against single edge-level passes, and the bad-input errors."""

import numpy as np
import pytest

import toymech as tm
from toymech.analysis import edges

CONFIGS = {
    "ln_mlp": tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=10, n_ctx=6,
                             normalization_type="LN", act_fn="gelu"),
    "lnpre_attn_only": tm.ModelConfig(n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=None, d_vocab=7,
                                      d_vocab_out=5, n_ctx=5, normalization_type="LNPre"),
    "no_norm_mlp_bidirectional": tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=24, d_vocab=9,
                                                n_ctx=5, normalization_type=None, attention_dir="bidirectional"),
}
TOL = dict(rtol=2e-4, atol=2e-5)


def _pair(cfg, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.d_vocab, (batch, cfg.n_ctx)), rng.integers(0, cfg.d_vocab, (batch, cfg.n_ctx)))


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import tl_reference
    return tl_reference


def test_graph_names_and_counts():
    cfg = CONFIGS["ln_mlp"]  # 2 layers, 2 heads, MLPs
    g = edges.graph(cfg)
    assert g.senders == ("embed", "pos_embed", "blocks.0.attn.head.0", "blocks.0.attn.head.1", "blocks.0.mlp",
                         "blocks.1.attn.head.0", "blocks.1.attn.head.1", "blocks.1.mlp")
    assert g.receivers[:3] == ("blocks.0.attn.head.0.q", "blocks.0.attn.head.1.q", "blocks.0.attn.head.0.k")
    assert g.receivers[-1] == "logits" and "blocks.1.mlp" in g.receivers
    # by hand: layer-0 q/k/v (6 receivers) see 2 senders, MLP 0 sees 4, layer-1 q/k/v see 5, MLP 1 sees 7, logits 8
    assert g.n_edges == 6 * 2 + 4 + 6 * 5 + 7 + 8
    assert len(set(g.edges)) == g.n_edges
    assert "blocks.0.attn.head.1 -> blocks.0.mlp" in g.edges  # a head feeds its own layer's MLP
    assert "blocks.0.mlp -> blocks.1.attn.head.0.k" in g.edges
    assert "blocks.1.attn.head.0 -> blocks.0.mlp" not in g.edges
    assert "blocks.0.attn.head.0 -> blocks.0.attn.head.1.q" not in g.edges  # not within a layer


def _tl_split_model(ref, cfg, seed):
    from transformer_lens import HookedTransformer
    model = HookedTransformer(ref.tl_config(cfg, use_attn_result=True, use_split_qkv_input=True,
                                            use_hook_mlp_in=True))
    model.load_state_dict(ref.tl_model(cfg, seed=seed).state_dict())  # random weights, biases and LN weights
    return model.eval()


def _tl_edge_hook(cfg, g, e, clean_cache, corrupted_cache):
    """(hook site, hook) patching edge e in TransformerLens: the receiver's input gets the sender's
    corrupted-minus-clean output added (the sender itself is upstream, so clean in that run)."""
    sender_site, sender_head, site, head = g.edge_sites(e)
    delta = corrupted_cache[sender_site] - clean_cache[sender_site]
    delta = delta if sender_head is None else delta[:, :, sender_head]

    def hook(x, hook):
        if head is None:
            return x + delta
        x[:, :, head] += delta
        return x

    return site, hook


def test_edge_sites_name_the_hooks_of_each_edge():
    g = edges.graph(CONFIGS["ln_mlp"])
    at = lambda name: g.edge_sites(g.edge_indices([name])[0])
    assert at("embed -> blocks.0.attn.head.1.k") == ("hook_embed", None, "blocks.0.hook_k_input", 1)
    assert at("blocks.0.attn.head.1 -> blocks.0.mlp") == ("blocks.0.attn.hook_result", 1, "blocks.0.hook_mlp_in", None)
    assert at("blocks.0.mlp -> blocks.1.attn.head.0.v") == ("blocks.0.hook_mlp_out", None, "blocks.1.hook_v_input", 0)
    assert at("blocks.1.mlp -> logits") == ("blocks.1.hook_mlp_out", None, "blocks.1.hook_resid_post", None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_edge_patched_alone_matches_transformer_lens_hooks(ref, name):
    import torch
    cfg = CONFIGS[name]
    model = _tl_split_model(ref, cfg, seed=3)
    params = ref.params_from_tl(model)
    clean, corrupted = _pair(cfg)
    g = edges.graph(cfg)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(torch.tensor(clean))
        _, corrupted_cache = model.run_with_cache(torch.tensor(corrupted))
    for e in range(g.n_edges):
        site, hook = _tl_edge_hook(cfg, g, e, clean_cache, corrupted_cache)
        with torch.no_grad():
            want = ref.to_numpy(model.run_with_hooks(torch.tensor(clean), fwd_hooks=[(site, hook)]))
        weights = np.ones(g.n_edges)
        weights[e] = 0.0
        got = edges.edge_forward(cfg, params, clean, corrupted, weights)
        np.testing.assert_allclose(got, want, err_msg=g.edges[e], **TOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_weights_one_give_clean_and_zero_corrupted_logits(name):
    import random_params
    cfg = CONFIGS[name]
    params = random_params.random_params(cfg, seed=1)
    clean, corrupted = _pair(cfg, seed=2)
    n = edges.graph(cfg).n_edges
    np.testing.assert_allclose(edges.edge_forward(cfg, params, clean, corrupted, np.ones(n)),
                               tm.apply(cfg, params, clean)[0], **TOL)
    np.testing.assert_allclose(edges.edge_forward(cfg, params, clean, corrupted, np.zeros(n)),
                               tm.apply(cfg, params, corrupted)[0], **TOL)


def test_key_padding_mask_reaches_the_edge_pass():
    import random_params
    cfg = CONFIGS["no_norm_mlp_bidirectional"]
    params = random_params.random_params(cfg, seed=4)
    clean, corrupted = _pair(cfg, seed=5)
    mask = np.ones(clean.shape, bool)
    mask[0, -2:] = False
    n = edges.graph(cfg).n_edges
    np.testing.assert_allclose(edges.edge_forward(cfg, params, clean, corrupted, np.ones(n), key_padding_mask=mask),
                               tm.apply(cfg, params, clean, key_padding_mask=mask)[0], **TOL)


def _metric(cfg, clean):  # next-token loss (labels folded into the output vocabulary)
    return edges.loss_metric(clean[:, 1:] % cfg.d_vocab_out, np.arange(cfg.n_ctx - 1))


def _one_run(cfg, params, clean, corrupted, metric, weights, mask=None):
    return float(metric(edges.edge_forward(cfg, params, clean, corrupted, weights, key_padding_mask=mask)).mean())


@pytest.mark.parametrize("name, chunk_size, padded", [
    ("lnpre_attn_only", None, False), ("lnpre_attn_only", 1, True), ("ln_mlp", 7, False), ("ln_mlp", None, True),
    ("no_norm_mlp_bidirectional", 10_000, True)])
def test_edge_patching_equals_one_edge_pass_per_edge(name, chunk_size, padded):
    """edge_patching recomputes only each edge's receiver and runs the plain model after it; the
    edge-level pass (checked against TransformerLens above) recomputes everything: every edge agrees."""
    import random_params
    cfg = CONFIGS[name]
    params = random_params.random_params(cfg, seed=6)
    clean, corrupted = _pair(cfg, batch=4, seed=7)
    metric = _metric(cfg, clean)
    mask = None
    if padded:
        mask = np.ones(clean.shape, bool)
        mask[1, -2:] = False
    scores = edges.edge_patching(cfg, params, clean, corrupted, metric, chunk_size=chunk_size, key_padding_mask=mask)
    n = edges.graph(cfg).n_edges
    one_run = lambda w: _one_run(cfg, params, clean, corrupted, metric, w, mask)
    base = one_run(np.ones(n))
    want = [one_run(1.0 - np.eye(n)[e]) - base for e in range(n)]
    np.testing.assert_allclose(np.asarray(scores.values), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.clean, base, rtol=1e-5)
    np.testing.assert_allclose(scores.corrupted, one_run(np.zeros(n)), rtol=1e-4)
    assert np.isfinite(scores.values).all() and np.abs(scores.values).max() > 1e-3
    assert scores[scores.edges[3]] == scores.values[3]


def test_path_patching_sets_the_direct_edges_to_corrupted():
    import random_params
    cfg = CONFIGS["ln_mlp"]
    params = random_params.random_params(cfg, seed=8)
    clean, corrupted = _pair(cfg, seed=9)
    metric = _metric(cfg, clean)
    g = edges.graph(cfg)
    senders, receivers = ["blocks.0.attn.head.0", "embed"], ["blocks.1.attn.head.1", "logits"]
    got = edges.path_patching(cfg, params, clean, corrupted, metric, senders, receivers)
    per_sender = edges.path_patching(cfg, params, clean, corrupted, metric, senders, receivers, each_sender=True)
    base = _one_run(cfg, params, clean, corrupted, metric, np.ones(g.n_edges))

    def with_off(names):
        w = np.ones(g.n_edges)
        w[g.edge_indices(names)] = 0.0
        return _one_run(cfg, params, clean, corrupted, metric, w) - base

    direct = lambda s: [f"{s} -> blocks.1.attn.head.1.{r}" for r in "qkv"] + [f"{s} -> logits"]
    np.testing.assert_allclose(got, with_off(direct(senders[0]) + direct(senders[1])), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(per_sender, [with_off(direct(s)) for s in senders], rtol=1e-4, atol=1e-6)


def test_bad_input_is_named():
    import random_params
    cfg = CONFIGS["lnpre_attn_only"]
    params = random_params.random_params(cfg)
    clean, corrupted = _pair(cfg)
    metric = _metric(cfg, clean)
    g = edges.graph(cfg)
    with pytest.raises(ValueError, match=r"unknown edge name\(s\) \['embed -> nowhere'\].*\n.*embed -> blocks.0"):
        g.edge_indices(["embed -> nowhere"])
    with pytest.raises(ValueError, match=r"(?s)unknown sender.*blocks.9.mlp.*Valid senders.*pos_embed"):
        edges.path_patching(cfg, params, clean, corrupted, metric, ["blocks.9.mlp"], ["logits"])
    with pytest.raises(ValueError, match=r"(?s)unknown receiver.*head.7.*Valid receivers.*logits"):
        edges.path_patching(cfg, params, clean, corrupted, metric, ["embed"], ["blocks.0.attn.head.7"])
    with pytest.raises(ValueError, match="no edge runs from"):
        edges.path_patching(cfg, params, clean, corrupted, metric, ["blocks.1.attn.head.0"], ["blocks.0.attn.head.0"])
    with pytest.raises(ValueError, match=r"clean \(3, 5\), corrupted \(3, 4\)"):
        edges.edge_patching(cfg, params, clean, corrupted[:, :4], metric)
    with pytest.raises(ValueError, match=r"clean \(3, 5\), corrupted \(2, 5\)"):
        edges.edge_forward(cfg, params, clean, corrupted[:2], np.ones(g.n_edges))
    with pytest.raises(ValueError, match=r"one scalar per example, shape \(3,\).*returned \(\)"):
        edges.edge_patching(cfg, params, clean, corrupted, lambda logits: logits.mean())
    with pytest.raises(ValueError, match=r"one scalar per example.*returned \(3, 5\)"):
        edges.edge_patching(cfg, params, clean, corrupted, lambda logits: logits[..., 0])
    assert g.n_edges == 9 * 2 + 9 * 5 + 8  # 3 heads x q/k/v per layer; layer 1 also sees layer 0's heads
    with pytest.raises(ValueError, match=r"edge weights must have shape \[n_edges\] = \(71,\), got \(70,\)"):
        edges.edge_forward(cfg, params, clean, corrupted, np.ones(70))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        edges.edge_patching(cfg, params, clean, corrupted, metric, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        edges.edge_patching(cfg, params, clean, corrupted, metric, chunk_size=-3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        edges.edge_patching(cfg, params, clean, np.full_like(corrupted, cfg.d_vocab), metric)

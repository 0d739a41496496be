"""Sweeps against TransformerLens: ablation sweeps against loops of
run_with_hooks, activation patching against transformer_lens.patching;
metrics against numpy / scikit-learn; one compilation per sweep shape."""

import jax
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from toymech.analysis import sweeps

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=16, d_vocab=7, n_ctx=5,
                     normalization_type="LN")
TOL = dict(rtol=1e-4, atol=1e-5)
POS = np.arange(1, 4)  # predict tokens 2..4 from positions 1..3


def _tokens(seed, batch=6):
    return np.random.default_rng(seed).integers(0, CFG.d_vocab, size=(batch, CFG.n_ctx))


@pytest.fixture(scope="module")
def twin():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import tl_reference
    model = tl_reference.tl_model(CFG, seed=3)
    return model, tl_reference.params_from_tl(model)


def _torch_loss(logits, tokens):
    import torch
    logp = torch.log_softmax(logits[:, POS].double(), -1)
    return -logp.gather(-1, torch.tensor(tokens[:, POS + 1])[..., None]).mean().item()


def _tl_loop(model, tokens, site, set_fn, *, head_axis, by_pos):
    """metric after editing `site` at each (layer[, head][, pos]) with a
    TransformerLens hook: set_fn(act, index, layer) edits act in place."""
    import torch
    grid = (CFG.n_layers,) + ((CFG.n_heads,) if head_axis else ()) + ((CFG.n_ctx,) if by_pos else ())
    out = np.zeros(grid)
    for target in np.ndindex(*grid):
        layer, rest = target[0], target[1:]
        head = rest[0] if head_axis else slice(None)
        pos = rest[-1] if by_pos else slice(None)
        index = (slice(None), pos, head) if head_axis else (slice(None), pos)

        def hook(act, hook, index=index, layer=layer):
            set_fn(act, index, layer)
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(tm.get_act_name(site, layer), hook)])
        out[target] = _torch_loss(logits, tokens)
    return out


def _zero(act, index, layer):
    act[index] = 0.0


def _mean(act, index, layer):
    act[index] = act[index].mean(0, keepdim=True)


@pytest.mark.parametrize("kind,set_fn,by_pos", [("zero", _zero, True), ("mean", _mean, False), ("mean", _mean, True)])
def test_head_ablation_sweep_matches_run_with_hooks_loop(twin, kind, set_fn, by_pos):
    import torch
    model, params = twin
    tokens = _tokens(0)
    result = sweeps.ablation_sweep(CFG, params, tokens, sweeps.loss_metric(tokens[:, POS + 1], POS),
                                   kind=kind, by_pos=by_pos)
    expected = _tl_loop(model, tokens, "z", set_fn, head_axis=True, by_pos=by_pos)
    assert result.axes == (("layer", "head", "pos") if by_pos else ("layer", "head"))
    np.testing.assert_allclose(result.values, expected, **TOL)
    with torch.no_grad():
        np.testing.assert_allclose(result.baseline, _torch_loss(model(torch.tensor(tokens)), tokens), **TOL)


def test_head_result_and_z_sweeps_in_one_call_match_the_hooks_on_each(twin):
    """hook_result (TransformerLens's use_attn_result) and hook_z swept together: each its own
    run_with_hooks loop (the sweep adds the edited heads' change to the clean hook_attn_out)."""
    import torch
    model, params = twin
    tokens = _tokens(4)
    result = sweeps.ablation_sweep(CFG, params, tokens, sweeps.loss_metric(tokens[:, POS + 1], POS),
                                   site=("result", "z"), kind="mean", by_pos=True)
    assert result.axes == ("site", "layer", "head", "pos")
    model.cfg.use_attn_result = True
    try:
        with torch.no_grad():
            expected = _tl_loop(model, tokens, "result", _mean, head_axis=True, by_pos=True)
    finally:
        model.cfg.use_attn_result = False
    np.testing.assert_allclose(result.values[0], expected, **TOL)
    np.testing.assert_allclose(result.values[1], _tl_loop(model, tokens, "z", _mean, head_axis=True, by_pos=True),
                               **TOL)


def test_qkv_mean_ablation_sweep_is_one_call_matching_three_loops(twin):
    model, params = twin
    tokens = _tokens(1)
    result = sweeps.ablation_sweep(CFG, params, tokens, sweeps.loss_metric(tokens[:, POS + 1], POS),
                                   site=("q", "k", "v"), kind="mean")
    assert result.axes == ("site", "layer", "head") and result.sites == ("q", "k", "v")
    for i, site in enumerate("qkv"):
        expected = _tl_loop(model, tokens, site, _mean, head_axis=True, by_pos=False)
        np.testing.assert_allclose(result.values[i], expected, err_msg=site, **TOL)


def test_resample_ablation_patches_the_permuted_batch(twin):
    import torch
    model, params = twin
    tokens = _tokens(2, batch=8)
    key = jax.random.key(7)
    perm = np.asarray(jax.random.permutation(key, len(tokens)))
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(tokens[perm]))

    def resample(act, index, layer):
        act[index] = cache[tm.get_act_name("z", layer)][index]

    result = sweeps.ablation_sweep(CFG, params, tokens, sweeps.loss_metric(tokens[:, POS + 1], POS),
                                   kind="resample", key=key, by_pos=True)
    np.testing.assert_allclose(result.values, _tl_loop(model, tokens, "z", resample, head_axis=True, by_pos=True),
                               **TOL)
    assert result.kind == "resample"


def test_per_layer_site_sweep_matches_loop(twin):
    model, params = twin
    tokens = _tokens(3)
    result = sweeps.ablation_sweep(CFG, params, tokens, sweeps.loss_metric(tokens[:, POS + 1], POS),
                                   site="mlp_out", kind="zero", by_pos=True)
    assert result.axes == ("layer", "pos") and result.values.shape == (CFG.n_layers, CFG.n_ctx)
    np.testing.assert_allclose(result.values, _tl_loop(model, tokens, "mlp_out", _zero, head_axis=False, by_pos=True),
                               **TOL)


@pytest.mark.parametrize("tl_name,site,by_pos,transpose", [
    ("get_act_patch_resid_pre", "resid_pre", True, None),
    ("get_act_patch_attn_head_out_all_pos", "z", False, None),
    ("get_act_patch_attn_head_out_by_pos", "z", True, (0, 2, 1)),
    ("get_act_patch_attn_head_pattern_by_pos", "pattern", True, None),
])
def test_activation_patching_matches_transformer_lens_patching(twin, tl_name, site, by_pos, transpose):
    import torch
    from transformer_lens import patching
    model, params = twin
    clean, corrupted = _tokens(4), _tokens(5)
    correct, incorrect = clean[:, -1], corrupted[:, -1]

    def tl_metric(logits):
        last = logits[:, -2]
        rows = torch.arange(len(last))
        return (last[rows, torch.tensor(correct)] - last[rows, torch.tensor(incorrect)]).mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(torch.tensor(clean))
        expected = getattr(patching, tl_name)(model, torch.tensor(corrupted), clean_cache, tl_metric).numpy()
    if transpose:
        expected = expected.transpose(transpose)
    metric = sweeps.logit_diff_metric(correct, incorrect, CFG.n_ctx - 2)
    result = sweeps.patching_sweep(CFG, params, corrupted, clean, metric, site=site, by_pos=by_pos)
    np.testing.assert_allclose(result.values, expected, **TOL)


def test_metrics_match_numpy_and_sklearn():
    from sklearn.metrics import accuracy_score
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(20, 3))
    pos = np.array([0, 2, 4])
    picked = logits[:, pos].astype(np.float64)
    logp = picked - np.log(np.exp(picked).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]  # [b, 3]
    np.testing.assert_allclose(sweeps.loss_metric(labels, pos)(logits), token_loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(sweeps.loss_metric(labels, pos, per_position=True)(logits), token_loss.mean(0),
                               rtol=1e-5)
    preds = picked.argmax(-1)
    np.testing.assert_allclose(sweeps.accuracy_metric(labels, pos)(logits),
                               accuracy_score(labels.ravel(), preds.ravel()), rtol=1e-6)
    np.testing.assert_allclose(sweeps.accuracy_metric(labels, pos, per_position=True)(logits),
                               [accuracy_score(labels[:, i], preds[:, i]) for i in range(3)], rtol=1e-6)
    other = (labels + 1) % 7
    diff = np.take_along_axis(picked, labels[..., None], -1) - np.take_along_axis(picked, other[..., None], -1)
    np.testing.assert_allclose(sweeps.logit_diff_metric(labels, other, pos)(logits), diff.mean(), rtol=1e-5)
    # A label past the vocabulary gives NaN, not a clamped index; a negative one is refused.
    assert np.isnan(sweeps.loss_metric(np.full_like(labels, 7), pos)(logits))
    traced = jax.jit(lambda metric, x: metric(x))  # ids are traced: no host-side check can run
    assert np.isnan(traced(sweeps.logit_diff_metric(labels, np.full_like(labels, 7), pos), logits))
    with pytest.raises(ValueError, match="labels must be token ids >= 0"):
        sweeps.accuracy_metric(-labels - 1, pos)


def test_sweep_equals_separate_runs_compiles_once_and_chunks_alike():
    import chex
    cfg = CFG.replace(n_heads=3, d_head=4)  # a shape no other test compiles
    params = tm.init_params(cfg, jax.random.key(4))
    tokens = _tokens(6)

    def custom(logits):  # a plain function as the metric: loss per predicted position
        return -jax.nn.log_softmax(logits[:, POS], -1)[..., 0].mean(0)

    before = sweeps._run_site_sweep._cache_size()
    result = sweeps.ablation_sweep(cfg, params, tokens, custom, kind="zero", by_pos=True)
    assert result.values.shape == (2, 3, CFG.n_ctx, len(POS))
    for layer, head, pos in [(0, 0, 1), (1, 2, 3), (1, 1, 0)]:
        z = tm.get_act_name("z", layer)
        logits, _ = tm.apply(cfg, params, tokens, intervention=iv.zero(z, head=head, pos=pos))
        np.testing.assert_allclose(result.values[layer, head, pos], custom(logits), rtol=1e-5, atol=1e-6)
    # Other token values and labels: no new compilation.
    sweeps.ablation_sweep(cfg, params, _tokens(7), custom, kind="zero", by_pos=True)
    loss = lambda t: sweeps.loss_metric(t[:, POS + 1], POS)
    sweeps.ablation_sweep(cfg, params, tokens, loss(tokens), kind="zero", by_pos=True)
    sweeps.ablation_sweep(cfg, params, _tokens(8), loss(_tokens(8)), kind="zero", by_pos=True)
    assert sweeps._run_site_sweep._cache_size() == before + 2
    chunked = sweeps.ablation_sweep(cfg, params, tokens, custom, kind="zero", by_pos=True, chunk_size=4)
    np.testing.assert_allclose(chunked.values, result.values, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(chunked.baseline, result.baseline, rtol=1e-6)


def test_intervention_sweep_runs_each_stacked_intervention():
    params = tm.init_params(CFG, jax.random.key(5))
    tokens = _tokens(9)
    metric = sweeps.accuracy_metric(tokens[:, POS + 1], POS, per_position=True)
    singles = [iv.scale("blocks.0.hook_resid_mid", s) for s in (0.0, 0.5, 2.0)]
    got = sweeps.intervention_sweep(CFG, params, tokens, iv.stack(singles), metric, chunk_size=2)
    for i, single in enumerate(singles):
        np.testing.assert_allclose(got[i], metric(tm.apply(CFG, params, tokens, intervention=single)[0]))


def test_bad_sweeps_are_errors_naming_the_problem():
    params = tm.init_params(CFG, jax.random.key(0))
    tokens = _tokens(0)
    metric = sweeps.loss_metric(tokens[:, POS + 1], POS)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sweeps.ablation_sweep(CFG, params, tokens, metric, kind="resample")
    with pytest.raises(ValueError, match="kind must be one of"):
        sweeps.ablation_sweep(CFG, params, tokens, metric, kind="patch")
    with pytest.raises(ValueError, match="mix per-head and per-layer sites"):
        sweeps.ablation_sweep(CFG, params, tokens, metric, site=("z", "resid_pre"))
    with pytest.raises(ValueError, match="unknown swept site"):
        sweeps.ablation_sweep(CFG, params, tokens, metric, site="zz")
    with pytest.raises(ValueError, match="source_tokens must have the tokens' shape"):
        sweeps.patching_sweep(CFG, params, tokens, tokens[:, :3], metric)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sweeps.ablation_sweep(CFG, params, tokens + CFG.d_vocab, metric)
    with pytest.raises(ValueError, match=r"labels must be int \[batch, 3\]"):
        sweeps.loss_metric(tokens[:, :2], POS)
    with pytest.raises(ValueError, match="chunk_size"):
        sweeps.ablation_sweep(CFG, params, tokens, metric, chunk_size=0)

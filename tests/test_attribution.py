"""Attribution against TransformerLens's ActivationCache methods and against
exact identities: decompositions sum to the residual stream, direct logit
attributions sum to the logits, paths sum to each head's result."""

import jax
import numpy as np
import pytest

import toymech as tm
from toymech.analysis import attribution as at

CONFIGS = {
    "ln_mlp": tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=24, d_vocab=9, d_vocab_out=7,
                             n_ctx=6, normalization_type="LN"),
    "lnpre_attn_only": tm.ModelConfig(n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=None, d_vocab=8, n_ctx=6,
                                      normalization_type="LNPre"),
    "no_norm_mlp": tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=16, d_vocab=9, n_ctx=6,
                                  normalization_type=None, attention_dir="bidirectional"),
}
TOL = dict(rtol=2e-4, atol=2e-5)


def _tokens(cfg, seed=0, batch=4):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(batch, cfg.n_ctx))


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request):
    """A random model of each config, its logits and attribution captures."""
    cfg = CONFIGS[request.param]
    params = tm.init_params(cfg, jax.random.key(1))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # biases != 0
    tokens = _tokens(cfg)
    logits, acts = tm.apply(cfg, params, tokens, capture=at.capture_sites(cfg))
    return cfg, params, tokens, logits, acts


@pytest.fixture(scope="module")
def tl_run():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import torch
    import tl_reference
    out = {}
    for name in ("ln_mlp", "lnpre_attn_only"):
        cfg = CONFIGS[name]
        model = tl_reference.tl_model(cfg, seed=4)
        params = tl_reference.params_from_tl(model)
        tokens = _tokens(cfg, seed=1)
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor(tokens))
        _, acts = tm.apply(cfg, params, tokens, capture=at.capture_sites(cfg))
        out[name] = (cfg, params, tokens, cache, acts, tl_reference.to_numpy)
    return out


def test_decompositions_sum_to_the_residual_stream(run):
    cfg, params, _, _, acts = run
    final = acts[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for by_head in (False, True):
        for layer, want in [(0, acts["blocks.0.hook_resid_pre"]), (1, acts["blocks.1.hook_resid_pre"]),
                            (None, final)]:
            stack = at.decompose_resid(cfg, params, acts, layer, by_head=by_head)
            np.testing.assert_allclose(stack.stack.sum(0), want, err_msg=f"{layer} {by_head}", **TOL)
        if not cfg.attn_only:
            stack = at.decompose_resid(cfg, params, acts, 1, mlp_input=True, by_head=by_head)
            np.testing.assert_allclose(stack.stack.sum(0), acts["blocks.1.hook_resid_mid"], **TOL)
    stack = at.decompose_resid(cfg, params, acts, by_head=True)
    heads = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    mlps = [] if cfg.attn_only else ["0_mlp_out", "1_mlp_out"]
    assert sorted(stack.labels) == sorted(["embed", "pos_embed", "b_O"] + heads + mlps)
    np.testing.assert_allclose(stack["L1H0"], acts["blocks.1.attn.hook_result"][:, :, 0])


def test_dla_of_a_complete_decomposition_sums_to_the_logits(run):
    cfg, params, tokens, logits, acts = run
    stack = at.decompose_resid(cfg, params, acts, by_head=True)
    dla = at.direct_logit_attribution(cfg, params, acts, stack)  # [n, b, p, v]
    constant = params["unembed"]["b_U"]
    if cfg.normalization_type == "LN":
        constant = constant + params["ln_final"]["b"] @ params["unembed"]["W_U"]
    np.testing.assert_allclose(dla.sum(0) + constant, logits, **TOL)
    # Token directions pick columns; incorrect tokens give logit differences.
    answer = tokens % cfg.d_vocab_out
    other = (answer + 1) % cfg.d_vocab_out
    per_token = at.direct_logit_attribution(cfg, params, acts, stack, answer, other)  # [n, b, p]
    want = np.take_along_axis(np.asarray(dla), answer[None, ..., None], -1)[..., 0] \
        - np.take_along_axis(np.asarray(dla), other[None, ..., None], -1)[..., 0]
    np.testing.assert_allclose(per_token, want, **TOL)
    np.testing.assert_allclose(per_token.sum(0), at.logit_diff(logits - constant, answer, other), **TOL)


def test_path_stack_plus_bias_path_is_each_heads_result(run):
    cfg, params, _, _, acts = run
    layer = 1
    source = at.decompose_resid(cfg, params, acts, layer, by_head=True)
    paths = at.path_stack(cfg, params, acts, source, layer)
    n_src, H = len(source), cfg.n_heads
    assert paths.stack.shape == (n_src * H,) + source.stack.shape[1:]
    assert paths.labels[H + 1] == f"{source.labels[1]}->L1H1"
    attn = params[f"blocks_{layer}"]["attn"]
    bias_in = attn["b_V"]
    if cfg.normalization_type == "LN":
        bias_in = bias_in + np.einsum("d,hde->he", params[f"blocks_{layer}"]["ln1"]["b"], attn["W_V"])
    bias_path = np.einsum("he,hed->hd", bias_in, attn["W_O"])  # [h, d]
    by_head = np.asarray(paths.stack).reshape(n_src, H, *paths.stack.shape[1:]).sum(0)  # [h, b, p, d]
    np.testing.assert_allclose(np.moveaxis(by_head, 0, 2) + bias_path, acts[f"blocks.{layer}.attn.hook_result"],
                               **TOL)
    # One entry by a direct loop over key positions.
    c, h, b, q = 2, H - 1, 1, cfg.n_ctx - 1
    x = np.asarray(source.stack[c, b], np.float64)  # [k, d]
    if cfg.normalization_type is not None:
        x = (x - x.mean(-1, keepdims=True)) / np.asarray(acts[f"blocks.{layer}.ln1.hook_scale"][b])
    if cfg.normalization_type == "LN":
        x = x * np.asarray(params[f"blocks_{layer}"]["ln1"]["w"])
    pattern = np.asarray(acts[f"blocks.{layer}.attn.hook_pattern"][b, h, q])  # [k]
    want = sum(pattern[k] * x[k] @ np.asarray(attn["W_V"][h]) @ np.asarray(attn["W_O"][h]) for k in range(cfg.n_ctx))
    np.testing.assert_allclose(paths.stack[c * H + h, b, q], want, **TOL)


@pytest.mark.parametrize("name", ["ln_mlp", "lnpre_attn_only"])
def test_stacks_match_transformer_lens_activation_cache(tl_run, name):
    cfg, params, _, cache, acts, to_numpy = tl_run[name]
    cases = [
        (at.decompose_resid(cfg, params, acts), cache.decompose_resid(return_labels=True)),
        (at.decompose_resid(cfg, params, acts, 1), cache.decompose_resid(1, return_labels=True)),
        (at.stack_head_results(cfg, acts), cache.stack_head_results(return_labels=True)),
        (at.stack_head_results(cfg, acts, 1), cache.stack_head_results(1, return_labels=True)),
        (at.accumulated_resid(cfg, acts), cache.accumulated_resid(return_labels=True)),
    ]
    if not cfg.attn_only:
        cases += [
            (at.decompose_resid(cfg, params, acts, 1, mlp_input=True),
             cache.decompose_resid(1, mlp_input=True, return_labels=True)),
            (at.accumulated_resid(cfg, acts, 1, incl_mid=True, mlp_input=True),
             cache.accumulated_resid(1, incl_mid=True, mlp_input=True, return_labels=True)),
        ]
    for ours, (theirs, labels) in cases:
        assert ours.labels == tuple(labels)
        np.testing.assert_allclose(ours.stack, to_numpy(theirs), err_msg=str(labels), **TOL)


@pytest.mark.parametrize("name", ["ln_mlp", "lnpre_attn_only"])
def test_apply_ln_to_stack_and_logit_attrs_match_transformer_lens(tl_run, name):
    import torch
    cfg, params, tokens, cache, acts, to_numpy = tl_run[name]
    stack = at.decompose_resid(cfg, params, acts, by_head=True)
    theirs_stack = torch.tensor(np.asarray(stack.stack))
    layers = [(None, False), (1, False)] + ([] if cfg.attn_only else [(0, True)])
    for layer, mlp_input in layers:
        ours = at.apply_ln_to_stack(cfg, acts, stack, layer, mlp_input=mlp_input)
        theirs = cache.apply_ln_to_stack(theirs_stack, layer, mlp_input=mlp_input)
        assert ours.labels == stack.labels
        np.testing.assert_allclose(ours.stack, to_numpy(theirs), err_msg=f"{layer} {mlp_input}", **TOL)
    if cfg.normalization_type == "LNPre":  # TransformerLens's logit_attrs omits ln_final.w: compare without one
        answer = tokens % cfg.d_vocab_out
        other = (answer + 3) % cfg.d_vocab_out
        theirs = cache.logit_attrs(theirs_stack, torch.tensor(answer), torch.tensor(other))
        ours = at.direct_logit_attribution(cfg, params, acts, stack, answer, other)
        np.testing.assert_allclose(ours, to_numpy(theirs), **TOL)


def test_logit_diff_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5))
    a, b = rng.integers(0, 5, size=(3, 4)), rng.integers(0, 5, size=(3, 1))
    want = np.take_along_axis(logits, a[..., None], -1)[..., 0] - np.take_along_axis(
        logits, np.broadcast_to(b, a.shape)[..., None], -1)[..., 0]
    np.testing.assert_allclose(at.logit_diff(logits, a, b), want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"incorrect holds 1 ids outside \[0, 5\)"):
        at.logit_diff(logits, a, np.array([[0], [5], [1]]))


def test_missing_activations_and_bad_layers_are_named():
    cfg = CONFIGS["lnpre_attn_only"]
    params = tm.init_params(cfg, jax.random.key(0))
    _, acts = tm.apply(cfg, params, _tokens(cfg), capture=("hook_embed", "hook_pos_embed"))
    with pytest.raises(ValueError, match=r"needs the activation 'blocks.0.hook_attn_out'.*capture_sites"):
        at.decompose_resid(cfg, params, acts)
    with pytest.raises(ValueError, match=r"'ln_final.hook_scale'"):
        at.apply_ln_to_stack(cfg, acts, acts["hook_embed"][None])
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        at.decompose_resid(cfg, params, acts, 3)
    with pytest.raises(ValueError, match="mlp_input=True needs a layer with an MLP"):
        at.decompose_resid(cfg, params, acts, 1, mlp_input=True)
    with pytest.raises(ValueError, match=r"tokens holds 1 ids outside \[0, 8\)"):
        at.logit_directions(cfg, params, np.array([0, 8]))

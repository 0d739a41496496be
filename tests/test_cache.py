"""The activation cache against TransformerLens's ActivationCache (order,
keys, analysis methods), as a pytree; the stacked weight views against
HookedTransformer's properties."""

import jax
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from toymech.analysis import attribution as at
from toymech.analysis import stacked

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=24, d_vocab=9, d_vocab_out=7, n_ctx=6,
                     normalization_type="LNPre")  # TransformerLens's logit_attrs omits ln_final.w: no LN weights
TOL = dict(rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def tl():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import torch
    import tl_reference
    model = tl_reference.tl_model(CFG, seed=3)
    params = tl_reference.params_from_tl(model)
    tokens = np.random.default_rng(0).integers(0, CFG.d_vocab, (3, CFG.n_ctx))
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(tokens))
    return model, params, tokens, cache, tl_reference.to_numpy


def test_cache_keeps_forward_order_and_takes_transformer_lens_keys(tl):
    model, params, tokens, tl_cache, to_numpy = tl
    _, cache = tm.apply(CFG, params, tokens, capture="all")
    # TransformerLens's forward order (its cache has the split-input sites only with its split options)
    assert [k for k in cache if k in tl_cache] == [k for k in tl_cache.keys() if k in cache]
    assert list(cache) == list(tm.site_names(CFG))
    for key in [("pattern", 0), ("resid_post", -1), ("scale", 0, "ln1"), ("z", -2), "embed", "tokens",
                "blocks.1.mlp.hook_post", ("normalized",)]:
        np.testing.assert_allclose(cache[key], to_numpy(tl_cache[key]), err_msg=str(key), **TOL)
    _, some = tm.apply(CFG, params, tokens, capture=("hook_embed",))
    with pytest.raises(KeyError, match=r"'blocks.1.attn.hook_pattern' is not in this cache \(from key \('pattern', 1\)\)"):
        some["pattern", 1]
    assert "embed" in some and ("pattern", 1) not in some and dict(some).keys() == {"hook_embed"}


def test_cache_methods_match_transformer_lens(tl):
    import torch
    model, params, tokens, tl_cache, to_numpy = tl
    _, cache = tm.apply(CFG, params, tokens, capture=at.capture_sites(CFG))
    stack = cache.decompose_resid(params, by_head=True)
    cases = [
        (cache.decompose_resid(params, 1).stack, tl_cache.decompose_resid(1)),
        (cache.accumulated_resid(incl_mid=True).stack, tl_cache.accumulated_resid(incl_mid=True)),
        (cache.stack_head_results().stack, tl_cache.stack_head_results()),
        (cache.apply_ln_to_stack(stack, 1).stack, tl_cache.apply_ln_to_stack(torch.tensor(np.asarray(stack.stack)), 1)),
    ]
    for got, want in cases:
        np.testing.assert_allclose(got, to_numpy(want), **TOL)
    answer = tokens % CFG.d_vocab_out
    other = (answer + 3) % CFG.d_vocab_out
    got = cache.logit_attrs(params, stack, answer, other)
    want = tl_cache.logit_attrs(torch.tensor(np.asarray(stack.stack)), torch.tensor(answer), torch.tensor(other))
    np.testing.assert_allclose(got, to_numpy(want), **TOL)


def test_cache_is_a_pytree_through_jit_vmap_and_tree_map():
    params = tm.init_params(CFG, jax.random.key(0))
    tokens = np.random.default_rng(1).integers(0, CFG.d_vocab, (2, CFG.n_ctx))
    sites = ("blocks.1.hook_resid_post", "hook_embed", "blocks.0.attn.hook_pattern")
    _, cache = tm.apply(CFG, params, tokens, capture=sites)
    assert list(cache) == ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    doubled = jax.jit(lambda c: jax.tree.map(lambda a: 2 * a, c))(cache)
    assert isinstance(doubled, type(cache)) and list(doubled) == list(cache)
    np.testing.assert_allclose(doubled["embed"], 2 * np.asarray(cache["embed"]))
    norms = jax.vmap(lambda c: jax.numpy.linalg.norm(c["resid_post", -1]))(cache)  # over the batch axis
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(cache["resid_post", 1]).reshape(2, -1), axis=1),
                               rtol=1e-5)
    _, batched = tm.apply_batched(CFG, params, tokens, iv.stack([iv.zero("hook_embed", pos=p) for p in range(3)]),
                                  capture=lambda name: name.endswith("hook_embed"))
    assert list(batched) == ["hook_embed"] and batched["embed"].shape == (3, 2, CFG.n_ctx, CFG.d_model)
    np.testing.assert_array_equal(batched["embed"][2][:, 2], 0.0)


def test_stacked_weights_match_hooked_transformer(tl):
    model, params, _, _, to_numpy = tl
    w = stacked.weights(CFG, params)
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_O", "W_in", "W_out", "b_in", "W_E", "W_pos", "W_U", "b_U"):
        np.testing.assert_allclose(getattr(w, name), to_numpy(getattr(model, name)), err_msg=name, rtol=1e-6)
    assert w.W_Q.shape == (2, 2, 16, 4) and w.OV.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(w.OV.AB, to_numpy(model.OV.AB), **TOL)
    np.testing.assert_allclose(w.QK.AB, to_numpy(model.QK.AB), **TOL)
    np.testing.assert_allclose(w.QK.S, to_numpy(model.QK.S), **TOL)
    with pytest.raises(AttributeError, match="no stacked weight 'W_X'"):
        w.W_X
    attn_only = CFG.replace(d_mlp=None)
    with pytest.raises(AttributeError, match="attention-only"):
        stacked.weights(attn_only, tm.init_params(attn_only, jax.random.key(0))).W_in


def test_hook_tokens_is_captured_not_edited():
    params = tm.init_params(CFG, jax.random.key(0))
    tokens = np.array([[1, 2, 3]])
    _, cache = tm.apply(CFG, params, tokens, capture=("hook_tokens", "unembed.hook_in"))
    np.testing.assert_array_equal(cache["tokens"], tokens)
    assert cache["unembed.hook_in"].shape == (1, 3, CFG.d_model)
    with pytest.raises(ValueError, match="hook_tokens can be captured but not edited"):
        tm.apply(CFG, params, tokens, intervention=iv.patch("hook_tokens", tokens))

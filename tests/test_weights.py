"""Weight processing: each function preserves what it claims on random models
of several configs, and gives exactly TransformerLens's processed weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from toymech import weights
from random_params import random_params

CONFIGS = {
    "ln_mlp_causal": tm.ModelConfig(
        n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=20, d_vocab=9, d_vocab_out=7, n_ctx=6, act_fn="gelu"),
    "ln_attn_only_bidirectional": tm.ModelConfig(
        n_layers=2, d_model=12, n_heads=2, d_head=5, d_mlp=None, d_vocab=9, n_ctx=6,
        attention_dir="bidirectional"),
    "lnpre_mlp_bidirectional": tm.ModelConfig(
        n_layers=1, d_model=10, n_heads=2, d_head=4, d_mlp=16, d_vocab=8, d_vocab_out=3, n_ctx=5,
        normalization_type="LNPre", attention_dir="bidirectional"),
    "lnpre_attn_only_causal": tm.ModelConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=None, d_vocab=8, n_ctx=5, normalization_type="LNPre"),
    "no_norm_mlp_causal": tm.ModelConfig(
        n_layers=2, d_model=10, n_heads=2, d_head=3, d_mlp=12, d_vocab=8, n_ctx=5, normalization_type=None),
}
LN_CONFIGS = [n for n, c in CONFIGS.items() if c.normalization_type == "LN"]
NORMED_CONFIGS = [n for n, c in CONFIGS.items() if c.normalization_type is not None]
TOL = dict(rtol=1e-4, atol=1e-5)


def _run(cfg, params, seed=0):
    tokens = np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(3, cfg.n_ctx))
    return tm.apply(cfg, params, tokens, capture="all")


def _assert_sites_equal(before, after, skip=()):
    common = set(before) & set(after)
    assert common, "no sites in common"
    for site in sorted(common):
        if not any(s in site for s in skip):
            np.testing.assert_allclose(after[site], before[site], err_msg=site, **TOL)


def _attn(params, layer):
    return params[f"blocks_{layer}"]["attn"]


def _qk_eff(attn):
    """Each head's bilinear form on [x, 1]: (W_Q; b_Q) (W_K; b_K)^T  [h, d+1, d+1]."""
    q = jnp.concatenate([attn["W_Q"], attn["b_Q"][:, None]], axis=1)
    k = jnp.concatenate([attn["W_K"], attn["b_K"][:, None]], axis=1)
    return jnp.einsum("hqe,hke->hqk", q, k)


# --- what each function preserves, on random models --------------------------


@pytest.mark.parametrize("name", LN_CONFIGS)
def test_fold_layer_norm_keeps_logits_and_activations_and_leaves_lnpre(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    new_cfg, new = weights.fold_layer_norm(cfg, params)
    assert new_cfg == cfg.replace(normalization_type="LNPre")
    assert not any(".ln" in k or k.startswith("ln_final") for k in tm.flatten_params(new))
    logits, acts = _run(cfg, params)
    new_logits, new_acts = _run(new_cfg, new)
    np.testing.assert_allclose(new_logits, logits, **TOL)
    _assert_sites_equal(acts, new_acts, skip=("hook_normalized", "unembed.hook_in"))  # the LN output changes
    # the weights that read a normalized input are centered along d_model
    np.testing.assert_allclose(_attn(new, 0)["W_Q"].mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(new["unembed"]["W_U"].mean(axis=0), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", NORMED_CONFIGS)
def test_center_writing_weights_keeps_logits_and_centers_the_residual_stream(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    same_cfg, new = weights.center_writing_weights(cfg, params)
    assert same_cfg == cfg
    logits, acts = _run(cfg, params)
    new_logits, new_acts = _run(cfg, new)
    np.testing.assert_allclose(new_logits, logits, **TOL)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    np.testing.assert_allclose(new_acts[last].mean(-1), 0.0, atol=1e-5)
    assert np.abs(np.asarray(acts[last]).mean(-1)).max() > 1e-2  # it was not centered before
    # readers normalize, so what they read is unchanged (their inputs before the norm are the residual stream)
    _assert_sites_equal(acts, new_acts, skip=("resid", "hook_embed", "hook_pos_embed", "_out", "hook_result",
                                              "hook_attn_in", "_input", "hook_mlp_in"))


def test_center_writing_weights_refuses_a_model_without_layer_norm():
    cfg = CONFIGS["no_norm_mlp_causal"]
    with pytest.raises(ValueError, match="center_writing_weights needs LayerNorm"):
        weights.center_writing_weights(cfg, random_params(cfg))
    with pytest.raises(ValueError, match="fold_layer_norm needs normalization_type 'LN'"):
        weights.fold_layer_norm(cfg, random_params(cfg))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_center_unembed_shifts_logits_by_a_constant_per_position(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    _, new = weights.center_unembed(cfg, params)
    logits, _ = _run(cfg, params)
    new_logits, _ = _run(cfg, new)
    shift = np.asarray(new_logits - logits)  # [b, p, v]
    np.testing.assert_allclose(shift, shift[..., :1] * np.ones_like(shift), atol=1e-5)
    assert np.abs(shift).max() > 1e-3  # the logits did move
    np.testing.assert_allclose(jax.nn.log_softmax(new_logits), jax.nn.log_softmax(logits), **TOL)
    np.testing.assert_allclose(new["unembed"]["W_U"].mean(-1), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fold_value_biases_keeps_logits_and_attention_outputs(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    _, new = weights.fold_value_biases(cfg, params)
    logits, acts = _run(cfg, params)
    new_logits, new_acts = _run(cfg, new)
    np.testing.assert_allclose(new_logits, logits, **TOL)
    assert all(np.all(_attn(new, l)["b_V"] == 0) for l in range(cfg.n_layers))
    _assert_sites_equal(acts, new_acts, skip=("hook_v", "hook_z", "hook_result"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_refactor_factored_attn_matrices_keeps_circuits_and_makes_them_even(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    _, new = weights.refactor_factored_attn_matrices(cfg, params)
    logits, acts = _run(cfg, params)
    new_logits, new_acts = _run(cfg, new)
    np.testing.assert_allclose(new_logits, logits, **TOL)
    _assert_sites_equal(acts, new_acts, skip=("hook_q", "hook_k", "hook_v", "hook_z", "hook_result"))
    eye = np.eye(cfg.d_head)
    for layer in range(cfg.n_layers):
        old, a = _attn(params, layer), _attn(new, layer)
        np.testing.assert_allclose(_qk_eff(a), _qk_eff(old), **TOL)
        W_O = np.asarray(a["W_O"])  # [h, e, d]: orthonormal rows
        np.testing.assert_allclose(np.einsum("hed,hfd->hef", W_O, W_O), np.broadcast_to(eye, (cfg.n_heads, *eye.shape)),
                                   atol=1e-5)
        # the query and key factors (biases included) have equal column norms, sqrt of the singular values
        q_norm = jnp.linalg.norm(jnp.concatenate([a["W_Q"], a["b_Q"][:, None]], 1), axis=1)
        k_norm = jnp.linalg.norm(jnp.concatenate([a["W_K"], a["b_K"][:, None]], 1), axis=1)
        np.testing.assert_allclose(q_norm, k_norm, **TOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_process_weights_keeps_log_probs(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    new_cfg, new = weights.process_weights(cfg, params, refactor_factored_attn_matrices=True)
    assert new_cfg.normalization_type == ("LNPre" if cfg.normalization_type else None)
    logits, _ = _run(cfg, params)
    new_logits, _ = _run(new_cfg, new)
    np.testing.assert_allclose(jax.nn.log_softmax(new_logits), jax.nn.log_softmax(logits), **TOL)


def test_process_weights_runs_under_jit_and_leaves_its_input_alone():
    cfg = CONFIGS["ln_mlp_causal"]
    params = random_params(cfg)
    before = {k: np.array(v) for k, v in tm.flatten_params(params).items()}
    new_cfg, eager = weights.process_weights(cfg, params)
    jitted = jax.jit(lambda p: weights.process_weights(cfg, p)[1])(params)
    for k, v in tm.flatten_params(eager).items():
        np.testing.assert_allclose(tm.flatten_params(jitted)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    for k, v in tm.flatten_params(params).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


# --- the same weights as TransformerLens -------------------------------------


@pytest.fixture(scope="module")
def tl():
    """TransformerLens's side: models, configs and state dicts for a toymech (cfg, params)."""
    pytest.importorskip("transformer_lens")
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.weight_processing import ProcessWeights

    from toymech import interop

    class TL:
        process = ProcessWeights

        @staticmethod
        def config(cfg):
            return HookedTransformerConfig(**interop.transformer_lens_config(cfg))

        @staticmethod
        def model(cfg):
            return HookedTransformer(TL.config(cfg))

        @staticmethod
        def state_dict(cfg, params):
            return {k: torch.from_numpy(np.array(v)) for k, v in interop.to_transformer_lens(cfg, params).items()}

    return TL


def _as_numpy(state_dict, drop=()):
    """A torch state dict as numpy arrays, without the mask buffers and `drop`."""
    return {k: v.numpy() for k, v in state_dict.items() if not k.endswith((".mask", ".IGNORE")) and k not in drop}


def _assert_params_equal(params, theirs, skip=()):
    ours = tm.flatten_params(params)
    assert set(ours) == set(theirs)
    for k, v in ours.items():
        if k not in skip:
            np.testing.assert_allclose(v, theirs[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("refactor", [False, True])
def test_process_weights_equals_transformer_lens_processed_state_dict(tl, name, refactor):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    model = tl.model(cfg)
    model.load_and_process_state_dict(tl.state_dict(cfg, params), refactor_factored_attn_matrices=refactor)
    new_cfg, new = weights.process_weights(cfg, params, refactor_factored_attn_matrices=refactor)
    assert new_cfg.normalization_type == model.cfg.normalization_type
    theirs = _as_numpy(model.state_dict())
    # SVD factors are unique only up to signs: after refactoring compare the circuits they factor
    factors = ("W_Q", "b_Q", "W_K", "b_K", "W_V", "W_O") if refactor else ()
    _assert_params_equal(new, theirs, skip={f"blocks.{l}.attn.{k}" for l in range(cfg.n_layers) for k in factors})
    if refactor:
        for layer in range(cfg.n_layers):
            a = {k: jnp.asarray(theirs[f"blocks.{layer}.attn.{k}"]) for k in factors}
            ours = _attn(new, layer)
            np.testing.assert_allclose(_qk_eff(ours), _qk_eff(a), **TOL)
            np.testing.assert_allclose(jnp.einsum("hde,hef->hdf", ours["W_V"], ours["W_O"]),
                                       jnp.einsum("hde,hef->hdf", a["W_V"], a["W_O"]), **TOL)


@pytest.mark.parametrize("name", LN_CONFIGS)
def test_each_step_equals_transformer_lens(tl, name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    sd, tl_cfg = tl.state_dict(cfg, params), tl.config(cfg)
    ln = [k for k in sd if ".ln" in k or k.startswith("ln_final")]  # TL leaves folded LNs as ones/zeros
    _assert_params_equal(weights.fold_layer_norm(cfg, params)[1], _as_numpy(tl.process.fold_layer_norm(sd, tl_cfg), ln))
    _assert_params_equal(weights.center_writing_weights(cfg, params)[1],
                         _as_numpy(tl.process.center_writing_weights(dict(sd), tl_cfg)))
    _assert_params_equal(weights.center_unembed(cfg, params)[1], _as_numpy(tl.process.center_unembed(sd, tl_cfg)))
    _assert_params_equal(weights.fold_value_biases(cfg, params)[1], _as_numpy(tl.process.fold_value_biases(sd, tl_cfg)))


def test_zero_weights_is_pure_and_matches_zeroing_the_output():
    cfg = CONFIGS["ln_mlp_causal"]
    params = tm.init_params(cfg, jax.random.key(3))
    tokens = np.random.default_rng(2).integers(0, cfg.d_vocab, (2, cfg.n_ctx))
    ablated = weights.zero_weights(params, "blocks.0.mlp.W_out", "blocks.0.mlp.b_out")
    assert np.any(tm.flatten_params(params)["blocks.0.mlp.W_out"] != 0)  # original untouched
    want, _ = tm.apply(cfg, params, tokens, intervention=iv.zero("blocks.0.hook_mlp_out"))
    got, _ = tm.apply(cfg, ablated, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    one_head = weights.zero_weights(params, "blocks.1.attn.W_O", head=1)
    want, _ = tm.apply(cfg, params, tokens, intervention=iv.zero("blocks.1.attn.hook_z", head=1))
    np.testing.assert_allclose(tm.apply(cfg, one_head, tokens)[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no parameter named 'blocks.0.mlp.W_o'"):
        weights.zero_weights(params, "blocks.0.mlp.W_o")
    with pytest.raises(ValueError, match="has no head axis"):
        weights.zero_weights(params, "blocks.0.mlp.W_out", head=0)

"""The model's fast paths against its plain forward pass and TransformerLens:
`output_positions` (compute only the logits a loss reads) and the first block's
Q/K/V projected through the embedding tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from random_params import random_params

CONFIGS = {
    "ln_causal_mlp": tm.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=7, n_ctx=6),
    "lnpre_bidirectional": tm.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, d_vocab=7,
                                          d_vocab_out=3, n_ctx=6, normalization_type="LNPre",
                                          attention_dir="bidirectional", act_fn="gelu"),
    "no_norm_one_layer": tm.ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=5,
                                        d_vocab_out=4, n_ctx=6, normalization_type=None),
    "attn_only": tm.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=None, d_vocab=7, n_ctx=6),
}
TOL = dict(rtol=2e-5, atol=2e-6)


def _tokens(cfg, batch=5, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, cfg.n_ctx))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("positions", [(-1,), (0,), (1, 2, 3), (4, 1), -2])
def test_fixed_output_positions_equal_the_full_logits_there(name, positions):
    cfg = CONFIGS[name]
    params, tokens = random_params(cfg, 1), _tokens(cfg)
    full, _ = tm.apply(cfg, params, tokens)
    some, _ = tm.apply(cfg, params, tokens, output_positions=positions)
    index = np.atleast_1d(positions) % tokens.shape[1]
    np.testing.assert_allclose(some, full[:, index], **TOL)


@pytest.mark.parametrize("name", ["ln_causal_mlp", "lnpre_bidirectional"])
def test_per_row_positions_with_padding_equal_the_full_logits_there(name):
    cfg = CONFIGS[name]
    params, tokens = random_params(cfg, 2), _tokens(cfg)
    lengths = np.array([6, 3, 1, 5, 2])
    mask = np.arange(6)[None] < lengths[:, None]  # [b, p]
    rows = np.stack([lengths - 1, np.zeros(5, int)], axis=1)  # [b, 2]: last real token, first token
    full, _ = tm.apply(cfg, params, tokens, key_padding_mask=mask)
    some, _ = tm.apply(cfg, params, tokens, key_padding_mask=mask, output_positions=rows)
    np.testing.assert_allclose(some, np.take_along_axis(np.asarray(full), rows[..., None], axis=1), **TOL)


def test_gradients_through_output_positions_equal_the_full_forward():
    cfg = CONFIGS["ln_causal_mlp"]
    params, tokens = random_params(cfg, 3), _tokens(cfg)
    targets = jnp.asarray(tokens[:, 1:4])

    def loss(p, positions):
        logits = tm.apply_unchecked(cfg, p, tokens, output_positions=positions)[0]  # [b, k, v]
        logits = logits if positions else logits[:, 2:5]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()

    fast = jax.grad(loss)(params, (2, 3, 4))
    slow = jax.grad(loss)(params, None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), fast, slow)


def test_unrestricted_sites_are_still_captured_whole():
    cfg = CONFIGS["ln_causal_mlp"]
    params, tokens = random_params(cfg, 4), _tokens(cfg)
    whole = ("blocks.1.hook_resid_pre", "blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_k",
             "blocks.1.attn.hook_v", "blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern")
    _, full = tm.apply(cfg, params, tokens, capture=whole)
    _, fast = tm.apply(cfg, params, tokens, capture=whole, output_positions=(-1,))
    for site in whole:
        np.testing.assert_allclose(fast[site], full[site], err_msg=site, **TOL)


def test_restricted_sites_are_refused_by_name():
    cfg = CONFIGS["ln_causal_mlp"]
    assert tm.position_restricted_sites(cfg)[0] == "blocks.1.attn.hook_q"
    assert "ln_final.hook_scale" in tm.position_restricted_sites(cfg)
    assert "blocks.1.attn.hook_k" not in tm.position_restricted_sites(cfg)
    params, tokens = random_params(cfg), _tokens(cfg)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.hook_post.*output positions only"):
        tm.apply(cfg, params, tokens, capture=("blocks.1.mlp.hook_post",), output_positions=(-1,))
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.hook_pattern"):
        tm.apply(cfg, params, tokens, intervention=iv.zero("blocks.1.attn.hook_pattern"), output_positions=-1)


@pytest.mark.parametrize("positions, message", [
    ((6,), r"output position 6 is out of range for a sequence of 6 positions \(valid: -6\.\.5\)"),
    ((-7,), r"output position -7 is out of range"),
    ((), r"output_positions is empty"),
    ((True,), r"must be ints, got True"),
    ((1.0,), r"must be ints, got 1\.0"),
    (np.zeros((4, 1), int), r"int \[batch=5, k\], got shape \(4, 1\)"),
    (np.full((5, 1), 6), r"output_positions\[0, 0\] = 6 is outside the sequence's positions \[0, 6\)"),
    (np.full((5, 2), -1), r"output_positions\[0, 0\] = -1 is outside"),
    (np.zeros((5, 1)), r"must be integers, got dtype float"),
])
def test_bad_output_positions_are_named(positions, message):
    cfg = CONFIGS["ln_causal_mlp"]
    with pytest.raises(ValueError, match=message):
        tm.apply(cfg, random_params(cfg), _tokens(cfg), output_positions=positions)


def test_boundary_positions_are_accepted():
    cfg = CONFIGS["attn_only"]
    params, tokens = random_params(cfg, 5), _tokens(cfg)
    full, _ = tm.apply(cfg, params, tokens)
    ends, _ = tm.apply(cfg, params, tokens, output_positions=(-6, 5, 0, -1))
    np.testing.assert_allclose(ends, full[:, [0, 5, 0, 5]], **TOL)


def test_batched_interventions_with_output_positions():
    cfg = CONFIGS["attn_only"]
    params, tokens = random_params(cfg, 6), _tokens(cfg)
    each = iv.stack([iv.zero("blocks.0.attn.hook_z", head=h) for h in range(2)])
    full, _ = tm.apply_batched(cfg, params, tokens, each)
    last, _ = tm.apply_batched(cfg, params, tokens, each, output_positions=(-1,))
    np.testing.assert_allclose(last, full[:, :, -1:], **TOL)


def test_embedding_tables_path_equals_the_dense_projection():
    """A big batch on a no-LayerNorm model projects W_E/W_pos rows; an identity edit
    of hook_embed forces the per-token path. Both, and their gradients, agree."""
    cfg = CONFIGS["no_norm_one_layer"]
    params, tokens = random_params(cfg, 7), _tokens(cfg, batch=64)
    same = iv.scale("hook_embed", 1.0)
    np.testing.assert_allclose(tm.apply(cfg, params, tokens)[0],
                               tm.apply(cfg, params, tokens, intervention=same)[0], **TOL)
    loss = lambda p, edit: tm.apply_unchecked(cfg, p, tokens, intervention=edit, output_positions=-1)[0].std()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.grad(loss)(params, None), jax.grad(loss)(params, same))


def test_embedding_tables_path_matches_transformer_lens():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import torch
    import tl_reference as ref
    cfg = tm.ModelConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=23, d_vocab_out=22, n_ctx=3,
                         normalization_type=None)
    model = ref.tl_model(cfg, seed=3)
    tokens = _tokens(cfg, batch=200)
    with torch.no_grad():
        expected = ref.to_numpy(model(torch.tensor(tokens)))
    logits, acts = tm.apply(cfg, ref.params_from_tl(model), tokens, capture=("blocks.0.attn.hook_q",))
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-5)
    last, _ = tm.apply(cfg, ref.params_from_tl(model), tokens, output_positions=-1)
    np.testing.assert_allclose(last, expected[:, -1:], rtol=2e-4, atol=2e-5)


def test_output_positions_for_falls_back_when_a_restricted_site_is_used():
    cfg = CONFIGS["ln_causal_mlp"]
    assert tm.output_positions_for(cfg, (3, 4)) == (3, 4)
    assert tm.output_positions_for(cfg, (3, 4), capture=("blocks.1.attn.hook_k",)) == (3, 4)
    assert tm.output_positions_for(cfg, (3, 4), capture="all") is None
    assert tm.output_positions_for(cfg, (3, 4), intervention=iv.zero("ln_final.hook_normalized")) is None
    with pytest.raises(ValueError, match="unknown capture"):
        tm.output_positions_for(cfg, (3,), capture=("blocks.9.hook_resid_post",))

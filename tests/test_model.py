"""The model against TransformerLens: logits, every activation site, hooks vs
interventions, padding; plus the model's input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv

STUDY_CONFIGS = {
    # study 1: bidirectional encoder with a 1-output regression head, GELU, LN
    "regression_encoder": tm.ModelConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=16, d_vocab_out=1, n_ctx=16,
        act_fn="gelu", normalization_type="LN", attention_dir="bidirectional"),
    # study 2: reverse-and-increment, d_model 4
    "reverse": tm.ModelConfig(
        n_layers=2, d_model=4, n_heads=1, d_head=2, d_mlp=16, d_vocab=5, n_ctx=17, act_fn="relu"),
    # study 3: grokking, 1 layer, no LayerNorm
    "grokking": tm.ModelConfig(
        n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=114, d_vocab_out=113, n_ctx=3,
        act_fn="relu", normalization_type=None),
    # study 4: 2-layer attention-only sum model
    "sum": tm.ModelConfig(
        n_layers=2, d_model=48, n_heads=3, d_head=24, d_mlp=None, d_vocab=12, n_ctx=14),
}
EXTRA_CONFIGS = {
    "lnpre_gelu_new": tm.ModelConfig(
        n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=10, d_vocab_out=7, n_ctx=8,
        act_fn="gelu_new", normalization_type="LNPre"),
    "bidirectional_silu_no_norm": tm.ModelConfig(
        n_layers=1, d_model=16, n_heads=4, d_head=4, d_mlp=24, d_vocab=9, n_ctx=6, act_fn="silu",
        normalization_type=None, attention_dir="bidirectional"),
    "attn_only_lnpre_bidirectional": tm.ModelConfig(
        n_layers=3, d_model=12, n_heads=3, d_head=4, d_mlp=None, d_vocab=7, d_vocab_out=3, n_ctx=5,
        normalization_type="LNPre", attention_dir="bidirectional"),
}
ALL_CONFIGS = {**STUDY_CONFIGS, **EXTRA_CONFIGS}
TOL = dict(rtol=2e-4, atol=2e-5)


def _tokens(cfg, batch=3, pos=None, seed=0):
    pos = cfg.n_ctx if pos is None else pos
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(batch, pos))


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("transformer_lens", reason="TransformerLens parity tests need the test extra")
    import tl_reference
    return tl_reference


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_logits_and_every_site_match_transformer_lens(ref, name):
    import torch
    cfg = ALL_CONFIGS[name]
    model = ref.tl_model(cfg, seed=1)
    params = ref.params_from_tl(model)
    tokens = _tokens(cfg)
    with torch.no_grad():
        tl_logits, cache = model.run_with_cache(torch.tensor(tokens))
    logits, acts = tm.apply(cfg, params, tokens, capture="all")
    np.testing.assert_allclose(logits, ref.to_numpy(tl_logits), **TOL)
    assert set(acts) == set(tm.site_names(cfg))
    split = ref.split_option_sites(cfg)  # TransformerLens has them only with its split-input options
    missing = set(acts) - set(cache.keys()) - split
    assert not missing, f"toymech sites TransformerLens does not have: {missing}"
    with torch.no_grad():
        _, qkv = _tl_split(ref, cfg, model, use_split_qkv_input=True).run_with_cache(torch.tensor(tokens))
        _, attn_in = _tl_split(ref, cfg, model, use_attn_in=True).run_with_cache(torch.tensor(tokens))
    for site, act in acts.items():
        want = (attn_in if site.endswith("hook_attn_in") else qkv) if site in split else cache
        assert act.shape == tm.sites.site_shape(cfg, site, *tokens.shape), site
        np.testing.assert_allclose(act, ref.to_numpy(want[site]), err_msg=site, **TOL)
    if cfg.attention_dir == "causal":  # masked scores hold TransformerLens's IGNORE value
        masked = ~np.tril(np.ones((cfg.n_ctx, cfg.n_ctx), bool))
        ignore = float(model.blocks[0].attn.IGNORE)
        assert np.all(np.asarray(acts[tm.get_act_name("attn_scores", 0)])[..., masked] == ignore)


def _tl_split(ref, cfg, model, **flags):
    """A TransformerLens copy of `model` with split-input options (use_attn_in / use_split_qkv_input)."""
    from transformer_lens import HookedTransformer
    split = HookedTransformer(ref.tl_config(cfg, use_attn_result=True, use_hook_mlp_in=not cfg.attn_only, **flags))
    split.load_state_dict(model.state_dict())
    return split.eval()


@pytest.mark.parametrize("name", ["regression_encoder", "lnpre_gelu_new", "grokking"])  # LN, LNPre, no norm
def test_split_input_edits_match_run_with_hooks(ref, name):
    import torch
    cfg = ALL_CONFIGS[name]
    model = ref.tl_model(cfg, seed=2)
    params = ref.params_from_tl(model)
    tokens = _tokens(cfg, seed=3)
    rng = np.random.default_rng(4)
    value = rng.normal(size=(3, cfg.n_ctx, cfg.n_heads, cfg.d_model)).astype(np.float32)
    vector = rng.normal(size=cfg.d_model).astype(np.float32)
    layer, head = cfg.n_layers - 1, cfg.n_heads - 1

    def patch_head(x, hook):
        x[:, :, head] = torch.tensor(value[:, :, head])
        return x

    def add_everywhere(x, hook):
        return x + torch.tensor(vector)

    b = f"blocks.{layer}"
    cases = [("use_split_qkv_input", f"{b}.hook_q_input", patch_head, iv.patch(f"{b}.hook_q_input", value, head=-1)),
             ("use_split_qkv_input", f"{b}.hook_v_input", add_everywhere, iv.add(f"{b}.hook_v_input", vector)),
             ("use_split_qkv_input", "blocks.0.hook_k_input", patch_head,
              iv.patch("blocks.0.hook_k_input", value, head=head)),
             ("use_attn_in", f"{b}.hook_attn_in", patch_head, iv.patch(f"{b}.hook_attn_in", value, head=head)),
             ("use_split_qkv_input", f"{b}.hook_mlp_in", add_everywhere, iv.add(f"{b}.hook_mlp_in", vector))]
    with torch.no_grad():
        for flag, site, hook_fn, intervention in cases:
            want = _tl_split(ref, cfg, model, **{flag: True}).run_with_hooks(
                torch.tensor(tokens), fwd_hooks=[(site, hook_fn)])
            got, _ = tm.apply(cfg, params, tokens, intervention=intervention)
            np.testing.assert_allclose(got, ref.to_numpy(want), err_msg=site, **TOL)
    if cfg.normalization_type:  # ln1 runs per head on edited split inputs: its own sites are refused there
        with pytest.raises(ValueError, match=r"ln1.hook_scale.*cannot be captured or edited in the same call"):
            tm.apply(cfg, params, tokens, intervention=iv.patch(f"{b}.hook_q_input", value),
                     capture=(f"{b}.ln1.hook_scale",))


@pytest.mark.parametrize("name", list(STUDY_CONFIGS))
def test_head_ablations_and_patching_match_run_with_hooks(ref, name):
    import torch
    cfg = STUDY_CONFIGS[name]
    model = ref.tl_model(cfg, seed=2)
    params = ref.params_from_tl(model)
    tokens, other = _tokens(cfg, seed=3), _tokens(cfg, seed=4)
    layer, head = cfg.n_layers - 1, cfg.n_heads - 1
    z_site, resid_site = tm.get_act_name("z", layer), tm.get_act_name("resid_pre", layer)

    def zero_head(z, hook):
        z[:, :, head] = 0.0
        return z

    def mean_head(z, hook):
        z[:, :, head] = z[:, :, head].mean(0, keepdim=True)
        return z

    _, other_cache = model.run_with_cache(torch.tensor(other))
    patch_pos = 1

    def patch_resid(resid, hook):
        resid[:, patch_pos] = other_cache[resid_site][:, patch_pos]
        return resid

    cases = [
        (zero_head, iv.zero(z_site, head=head)),
        (mean_head, iv.mean(z_site, head=head)),
        (patch_resid, iv.patch(resid_site, np.asarray(ref.to_numpy(other_cache[resid_site])), pos=patch_pos)),
    ]
    with torch.no_grad():
        for hook_fn, intervention in cases:
            site = intervention.sites[0]
            expected = model.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(site, hook_fn)])
            got, _ = tm.apply(cfg, params, tokens, intervention=intervention)
            np.testing.assert_allclose(got, ref.to_numpy(expected), err_msg=hook_fn.__name__, **TOL)


def test_negative_indices_match_run_with_hooks(ref):
    import torch
    cfg = STUDY_CONFIGS["sum"]
    model = ref.tl_model(cfg, seed=6)
    params = ref.params_from_tl(model)
    tokens = _tokens(cfg, seed=7)
    z, resid, pattern = tm.get_act_name("z", 1), tm.get_act_name("resid_pre", 1), tm.get_act_name("pattern", 0)
    vector = np.linspace(-1, 1, cfg.d_model).astype(np.float32)

    def zero_last_head(x, hook):
        x[:, :, -1] = 0.0
        return x

    def add_at_last_pos(x, hook):
        x[:, -1] += torch.tensor(vector)
        return x

    def zero_last_query_key(x, hook):
        x[:, -2, -1, [0, -2]] = 0.0
        return x

    cases = [(z, zero_last_head, iv.zero(z, head=-1)), (resid, add_at_last_pos, iv.add(resid, vector, pos=-1)),
             (pattern, zero_last_query_key, iv.zero(pattern, head=-2, pos=-1, feature=np.array([0, -2])))]
    with torch.no_grad():
        for site, hook_fn, intervention in cases:
            expected = model.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(site, hook_fn)])
            got, _ = tm.apply(cfg, params, tokens, intervention=intervention)
            np.testing.assert_allclose(got, ref.to_numpy(expected), err_msg=hook_fn.__name__, **TOL)


def test_key_padding_mask_matches_transformer_lens_attention_mask(ref):
    import torch
    cfg = STUDY_CONFIGS["reverse"]
    model = ref.tl_model(cfg, seed=5)
    params = ref.params_from_tl(model)
    tokens = _tokens(cfg, batch=4, pos=10)
    lengths = np.array([10, 7, 4, 1])
    mask = np.arange(10)[None, :] < lengths[:, None]  # right padding
    with torch.no_grad():
        expected = ref.to_numpy(model(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))))
    got, _ = tm.apply(cfg, params, tokens, key_padding_mask=mask)
    np.testing.assert_allclose(np.asarray(got)[mask], expected[mask], **TOL)


def test_padding_gets_zero_attention_and_does_not_change_real_positions():
    cfg = STUDY_CONFIGS["regression_encoder"]
    params = tm.init_params(cfg, jax.random.key(0))
    real = _tokens(cfg, batch=1, pos=5, seed=1)
    padded = np.concatenate([real, np.zeros((1, 4), int)], axis=1)
    mask = np.arange(9)[None] < 5
    pattern = tm.get_act_name("pattern", 1)
    want_logits, _ = tm.apply(cfg, params, real)
    got_logits, acts = tm.apply(cfg, params, padded, key_padding_mask=mask, capture=(pattern,))
    np.testing.assert_allclose(got_logits[:, :5], want_logits, **TOL)
    assert np.all(np.asarray(acts[pattern])[..., 5:] == 0.0)


@pytest.mark.parametrize("name", ["sum", "lnpre_gelu_new", "bidirectional_silu_no_norm", "regression_encoder"])
def test_head_result_is_one_head_of_the_layer(name):
    """model.head_result on a head's own inputs: on the block's input it is that head's
    hook_result (checked against TransformerLens in the parity test), for every head, with a
    traced head index and with padding; with one input changed it equals the split-input path."""
    import random_params
    from toymech.model import head_result
    cfg = ALL_CONFIGS[name]
    params = random_params.random_params(cfg, seed=2)
    tokens = _tokens(cfg, batch=4, seed=3)
    mask = np.ones(tokens.shape, bool)
    mask[2, -2:] = False
    layer = cfg.n_layers - 1
    b = f"blocks.{layer}"
    _, acts = tm.apply(cfg, params, tokens, key_padding_mask=mask, capture=(f"{b}.hook_resid_pre", f"{b}.attn.hook_result"))
    resid = acts[f"{b}.hook_resid_pre"]
    traced = jax.jit(lambda h, x: head_result(cfg, params, layer, h, x, x, x, mask))
    for h in range(cfg.n_heads):
        np.testing.assert_allclose(head_result(cfg, params, layer, h, resid, resid, resid, mask),
                                   acts[f"{b}.attn.hook_result"][:, :, h], **TOL)
        np.testing.assert_allclose(traced(h, resid), acts[f"{b}.attn.hook_result"][:, :, h], **TOL)
    other = resid + np.random.default_rng(4).normal(size=resid.shape).astype(np.float32)  # a new key input
    h = cfg.n_heads - 1
    k_input = jnp.broadcast_to(resid[:, :, None], resid.shape[:2] + (cfg.n_heads, cfg.d_model)).at[:, :, h].set(other)
    _, split = tm.apply(cfg, params, tokens, key_padding_mask=mask, capture=(f"{b}.attn.hook_result",),
                        intervention=iv.patch(f"{b}.hook_k_input", k_input))
    np.testing.assert_allclose(head_result(cfg, params, layer, h, resid, other, resid, mask),
                               split[f"{b}.attn.hook_result"][:, :, h], **TOL)


def test_vmapped_head_ablations_equal_separate_runs_and_compile_once():
    cfg = dataclasses.replace(STUDY_CONFIGS["sum"], n_heads=4, d_head=12)  # a config no other test compiles
    params = tm.init_params(cfg, jax.random.key(1))
    tokens = _tokens(cfg, batch=5)
    singles = [iv.mean(tm.get_act_name("z", layer), head=np.arange(cfg.n_heads) == h, pos=np.arange(14) >= 9)
               for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    batched = iv.stack(singles)
    before = tm.model._forward_batched._cache_size()
    logits, _ = tm.apply_batched(cfg, params, tokens, batched)
    assert logits.shape == (len(singles), 5, 14, cfg.d_vocab_out)
    for i, single in enumerate(singles):
        want, _ = tm.apply(cfg, params, tokens, intervention=single)
        np.testing.assert_allclose(logits[i], want, rtol=1e-5, atol=1e-6)
    # Same structure, other values: no new compilation.
    shuffled = iv.stack(singles[::-1])
    tm.apply_batched(cfg, params, tokens, shuffled)
    assert tm.model._forward_batched._cache_size() == before + 1


def test_vmapped_user_function_traces_once():
    import chex
    cfg = STUDY_CONFIGS["reverse"]
    params = tm.init_params(cfg, jax.random.key(2))
    tokens = jnp.asarray(_tokens(cfg))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def ablate_each_position(masks):  # masks bool [n, pos]
        run = lambda m: tm.apply_unchecked(cfg, params, tokens,
                                           intervention=iv.zero("blocks.0.hook_mlp_out", pos=m))[0]
        return jax.vmap(run)(masks)

    masks = jnp.eye(cfg.n_ctx, dtype=bool)
    out = ablate_each_position(masks)
    ablate_each_position(~masks)
    assert out.shape == (cfg.n_ctx, 3, cfg.n_ctx, cfg.d_vocab_out)


def test_capture_returns_only_what_was_asked():
    cfg = STUDY_CONFIGS["reverse"]
    params = tm.init_params(cfg, jax.random.key(0))
    _, acts = tm.apply(cfg, params, _tokens(cfg), capture=("hook_embed", tm.get_act_name("post", 1)))
    assert set(acts) == {"hook_embed", "blocks.1.mlp.hook_post"}
    assert acts["blocks.1.mlp.hook_post"].shape == (3, 17, 16)


def test_init_params_shapes_and_scale():
    cfg = STUDY_CONFIGS["grokking"]
    flat = tm.flatten_params(tm.init_params(cfg, jax.random.key(0)))
    assert flat["blocks.0.attn.W_Q"].shape == (4, 128, 32)
    assert flat["blocks.0.attn.W_O"].shape == (4, 32, 128)
    assert flat["unembed.W_U"].shape == (128, 113)
    assert not any(k.startswith(("ln", "blocks.0.ln")) for k in flat)  # no LayerNorm
    np.testing.assert_allclose(np.std(flat["blocks.0.mlp.W_in"]), 0.8 / np.sqrt(128), rtol=0.02)
    assert np.all(flat["blocks.0.mlp.b_in"] == 0)
    assert tm.unflatten_params(flat).keys() == tm.init_params(cfg, jax.random.key(0)).keys()


# --- errors ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    cfg = STUDY_CONFIGS["reverse"]
    return cfg, tm.init_params(cfg, jax.random.key(0))


def test_out_of_vocab_token_is_an_error_naming_where(small):
    cfg, params = small
    tokens = np.zeros((2, 4), int)
    tokens[1, 3] = 5
    with pytest.raises(ValueError, match=r"token 5 at \[batch 1, pos 3\] is outside the vocabulary \[0, 5\)"):
        tm.apply(cfg, params, tokens)
    tokens[1, 3] = -1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tm.apply(cfg, params, tokens)


def test_too_long_and_malformed_tokens_are_errors(small):
    cfg, params = small
    with pytest.raises(ValueError, match="exceeds the model's n_ctx=17"):
        tm.apply(cfg, params, np.zeros((1, 18), int))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        tm.apply(cfg, params, np.zeros(4, int))
    with pytest.raises(ValueError, match="must be integers"):
        tm.apply(cfg, params, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        tm.apply(cfg, params, np.zeros((1, 4), int), key_padding_mask=np.ones((1, 3), bool))


def test_unknown_sites_list_the_valid_ones(small):
    cfg, params = small
    with pytest.raises(ValueError, match=r"(?s)unknown capture name\(s\) \['blocks.2.hook_resid_pre'\].*blocks.1.mlp.hook_post"):
        tm.apply(cfg, params, np.zeros((1, 4), int), capture=("blocks.2.hook_resid_pre",))
    with pytest.raises(ValueError, match=r"(?s)unknown intervention site.*hook_resid_post"):
        tm.apply(cfg, params, np.zeros((1, 4), int), intervention=iv.zero("blocks.0.attn.hook_zz"))


def test_intervention_shape_mismatch_names_site_and_shape(small):
    cfg, params = small
    with pytest.raises(ValueError, match=r"patch at site blocks.0.hook_resid_pre: value of shape \(3, 4\) "
                                         r"does not broadcast to the site's activation shape \(1, 4, 4\)"):
        tm.apply(cfg, params, np.zeros((1, 4), int), intervention=iv.patch("blocks.0.hook_resid_pre", np.zeros((3, 4))))
    with pytest.raises(ValueError, match=r"head mask at site blocks.0.attn.hook_z has shape \(3,\); expected \[1\]"):
        tm.apply(cfg, params, np.zeros((1, 4), int), intervention=iv.zero("blocks.0.attn.hook_z", head=np.ones(3, bool)))
    with pytest.raises(ValueError, match="site blocks.0.hook_resid_pre has no head axis"):
        tm.apply(cfg, params, np.zeros((1, 4), int), intervention=iv.zero("blocks.0.hook_resid_pre", head=0))


@pytest.mark.parametrize("field,value", [
    ("d_model", 0), ("n_heads", -1), ("d_mlp", 0), ("act_fn", "tanh"), ("normalization_type", "RMS"),
    ("attention_dir", "sideways"), ("positional_embedding_type", "rotary"), ("eps", 0.0), ("n_ctx", 2.5),
])
def test_impossible_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        dataclasses.replace(STUDY_CONFIGS["reverse"], **{field: value})


def test_get_act_name_matches_transformer_lens():
    cases = [("pattern", 0, None), ("resid_post", 1, None), ("pre", 0, None), ("scale", 0, "ln1"),
             ("normalized", None, None), ("k6", None, None), ("scale4ln1", None, None), ("embed", None, None),
             ("attn_out", 3, None), ("z", 2, "a"), ("hook_pos_embed", None, None), ("blocks.0.hook_resid_pre", None, None),
             ("post", 1, None), ("result", 0, None), ("attn_scores", 1, None), ("mlp_out", 0, None)]
    assert tm.get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert tm.get_act_name("scale", 0, "ln1") == "blocks.0.ln1.hook_scale"
    assert tm.get_act_name("normalized") == "ln_final.hook_normalized"
    utils = pytest.importorskip("transformer_lens.utils")
    for case in cases:
        assert tm.get_act_name(*case) == utils.get_act_name(*case), case


def test_python_token_lists_are_converted_or_refused_in_one_line(small):
    cfg, params = small
    want, _ = tm.apply(cfg, params, np.array([[1, 2, 3]]))
    np.testing.assert_array_equal(tm.apply(cfg, params, [[1, 2, 3]])[0], want)
    long_ragged = [list(range(5)) * 3, [1]]
    for tokens, message in [(long_ragged, "rows have different lengths"), ([[1.5, 2.0]], "not all integer"),
                            ([1, 2, 3], r"for one sequence, pass tokens\[None\] or \[tokens\]")]:
        with pytest.raises(ValueError, match=message) as err:
            tm.apply(cfg, params, tokens)
        assert "\n" not in str(err.value) and "0, 1, 2, 3, 4, 0" not in str(err.value)


def test_params_that_do_not_fit_the_config_point_to_the_right_config(small):
    cfg, params = small
    processed_cfg, processed = tm.weights.process_weights(cfg, params)
    with pytest.raises(ValueError, match=r"missing \['blocks.0.ln1.b', .*process_weights go with the config it returned"):
        tm.apply(cfg, processed, np.zeros((1, 4), int))
    with pytest.raises(ValueError, match=r"unexpected \['blocks.0.ln1.b'.*have LayerNorm weights"):
        tm.apply_unchecked(processed_cfg, params, np.zeros((1, 4), int))
    wide = dataclasses.replace(cfg, d_mlp=8)
    with pytest.raises(ValueError, match=r"wrong shapes: blocks.0.mlp.W_in \(4, 16\) \(config needs \(4, 8\)\)"):
        tm.apply_batched(wide, params, np.zeros((1, 4), int), iv.stack([iv.zero("hook_embed")]))


def test_capture_takes_a_names_filter(small):
    cfg, params = small
    _, acts = tm.apply(cfg, params, np.zeros((1, 4), int), capture=lambda name: name.endswith("hook_pattern"))
    assert list(acts) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    with pytest.raises(TypeError, match="capture must be a site name, a sequence of site names, 'all' or a function"):
        tm.apply(cfg, params, np.zeros((1, 4), int), capture=3)

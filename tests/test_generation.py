"""generate (KV cache under lax.scan) against loops that rerun `apply` without a cache,
against TransformerLens's generate, and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from toymech.generation import generate, generate_batched

from random_params import random_params

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=11, n_ctx=10)
CONFIGS = {
    "LN": CFG,
    "LNPre": CFG.replace(normalization_type="LNPre"),
    "no norm, attn-only": CFG.replace(normalization_type=None, d_mlp=None),
    "d_vocab_out < d_vocab": CFG.replace(d_vocab_out=7, n_layers=1),
}


def _prompt(cfg, batch=3, n=4, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab_out, (batch, n)).astype(np.int32)


def _pick(logits, key, temperature, top_k):
    """The next token from last-position logits [b, v], written out with numpy masking."""
    logits = np.asarray(logits, np.float32)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / np.float32(temperature)
    if top_k is not None:
        kth = np.sort(logits, -1)[:, -top_k][:, None]
        logits = np.where(logits >= kth, logits, -np.inf)
    return np.asarray(jax.random.categorical(key, jnp.asarray(logits), axis=-1))


def _growing_loop(cfg, params, prompt, n_new, key=None, temperature=0, top_k=None):
    """No cache: rerun `apply` on the growing sequence, one new token each time."""
    keys = jax.random.split(key, n_new) if temperature > 0 else [None] * n_new
    seq = np.asarray(prompt)
    for i in range(n_new):
        logits, _ = tm.apply(cfg, params, seq)
        seq = np.concatenate([seq, _pick(logits[:, -1], keys[i], temperature, top_k)[:, None]], 1)
    return seq


def _full_length_loop(cfg, params, prompt, n_new, intervention, key=None, temperature=0, top_k=None):
    """No cache, with an intervention written for the output sequence: rerun `apply` on the
    sequence so far padded with zeros to the output length, reading the logits at its last
    real position (a causal model's padding cannot reach back)."""
    keys = jax.random.split(key, n_new) if temperature > 0 else [None] * n_new
    batch, n = prompt.shape
    seq = np.zeros((batch, n + n_new), np.int32)
    seq[:, :n] = prompt
    for i in range(n_new):
        logits, _ = tm.apply(cfg, params, seq, intervention=intervention)
        seq[:, n + i] = _pick(logits[:, n + i - 1], keys[i], temperature, top_k)
    return seq


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_rerunning_apply(name):
    cfg = CONFIGS[name]
    params = random_params(cfg, 1)
    prompt = _prompt(cfg, n=4)
    np.testing.assert_array_equal(generate(cfg, params, prompt, 5), _growing_loop(cfg, params, prompt, 5))
    for n_prompt, n_new in [(1, 9), (9, 1), (10, 0), (5, 0)]:  # up to n_ctx = 10
        prompt = _prompt(cfg, n=n_prompt)
        out = generate(cfg, params, prompt, n_new)
        assert out.shape == (3, n_prompt + n_new) and out.dtype == jnp.int32
        np.testing.assert_array_equal(out, _full_length_loop(cfg, params, prompt, n_new, None))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 3), (2.5, 1), (1.3, CFG.d_vocab)])
def test_sampling_equals_rerunning_apply_with_the_same_key(temperature, top_k):
    """(The growing-sequence loop is checked against the zero-padded one in the greedy test.)"""
    params = random_params(CFG, 2)
    prompt = _prompt(CFG, batch=5, n=2)
    key = jax.random.key(7)
    out = generate(CFG, params, prompt, 8, key=key, temperature=temperature, top_k=top_k)
    np.testing.assert_array_equal(out, _full_length_loop(CFG, params, prompt, 8, None, key, temperature, top_k))
    assert not np.array_equal(out, generate(CFG, params, prompt, 8, key=jax.random.key(8), temperature=temperature,
                                            top_k=top_k)) or top_k == 1  # the key matters


def test_sampled_frequencies_follow_the_tempered_softmax():
    params = random_params(CFG, 3)
    prompt = np.tile(_prompt(CFG, batch=1, n=2), (20000, 1))
    logits, _ = tm.apply(CFG, params, prompt[:1])
    for temperature, top_k in [(1.0, None), (0.5, None), (2.0, 4)]:
        new = np.asarray(generate(CFG, params, prompt, 1, key=jax.random.key(0), temperature=temperature,
                                  top_k=top_k))[:, -1]
        z = np.asarray(logits[0, -1], np.float64) / temperature
        if top_k is not None:
            z[np.argsort(z)[:-top_k]] = -np.inf
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        freq = np.bincount(new, minlength=CFG.d_vocab) / len(new)
        np.testing.assert_allclose(freq, p, atol=0.015)
        assert set(np.unique(new)) <= set(np.flatnonzero(p > 0))


def test_top_k_1_and_low_temperature_are_greedy():
    params = random_params(CFG, 4)
    prompt = _prompt(CFG)
    greedy = generate(CFG, params, prompt, 6)
    np.testing.assert_array_equal(generate(CFG, params, prompt, 6, key=jax.random.key(1), temperature=1.0, top_k=1),
                                  greedy)
    np.testing.assert_array_equal(generate(CFG, params, prompt, 6, key=jax.random.key(1), temperature=1e-6), greedy)
    np.testing.assert_array_equal(generate(CFG, params, prompt, 6, key=jax.random.key(1), top_k=2), greedy)


def _interventions(cfg, n_prompt, n_new):
    """Edits at prompt and generated positions, each a single run."""
    n_total = n_prompt + n_new
    rng = np.random.default_rng(5)
    steer = rng.normal(0, 3, cfg.d_model).astype(np.float32)
    mask = np.zeros(n_total, bool)
    mask[[1, n_prompt + 1, n_total - 2]] = True
    patch_value = rng.normal(0, 1, (1, n_total, cfg.d_model)).astype(np.float32)
    return {
        "zero a head everywhere": iv.zero("blocks.0.attn.hook_z", head=1),
        "steer the first generated token": iv.add("blocks.0.hook_resid_post", steer, pos=n_prompt),
        "steer the last generated token": iv.add("blocks.1.hook_resid_pre", steer, pos=-2),
        "patch a bool position mask": iv.patch("blocks.1.hook_resid_mid", patch_value, pos=mask),
        "mean-ablate the MLP over the batch": iv.mean("blocks.0.mlp.hook_post", pos=[0, n_prompt + 2]),
        "zero the pattern at generated queries": iv.zero("blocks.1.attn.hook_pattern", pos=[-1, -3], head=0),
        "scale keys and values": iv.combine(iv.scale("blocks.0.attn.hook_k", 3.0, pos=n_prompt + 1),
                                            iv.zero("blocks.1.attn.hook_v", pos=[2, n_prompt])),
    }


@pytest.mark.parametrize("name", list(_interventions(CFG, 4, 6)))
def test_interventions_apply_during_generation(name):
    params = random_params(CFG, 6)
    prompt = _prompt(CFG, batch=6, n=4)
    intervention = _interventions(CFG, 4, 6)[name]
    out = np.asarray(generate(CFG, params, prompt, 6, intervention=intervention))
    np.testing.assert_array_equal(out, _full_length_loop(CFG, params, prompt, 6, intervention))
    key = jax.random.key(3)
    sampled = generate(CFG, params, prompt, 6, intervention=intervention, key=key, temperature=1.0, top_k=4)
    np.testing.assert_array_equal(sampled, _full_length_loop(CFG, params, prompt, 6, intervention, key, 1.0, 4))


def test_interventions_change_what_is_generated():
    """Not vacuous: most of the edits above change the greedy continuation."""
    params = random_params(CFG, 6)
    prompt = _prompt(CFG, batch=6, n=4)
    plain = np.asarray(generate(CFG, params, prompt, 6))
    changed = [name for name, i in _interventions(CFG, 4, 6).items()
               if not np.array_equal(generate(CFG, params, prompt, 6, intervention=i), plain)]
    assert len(changed) >= 5, changed
    # An edit of only the last generated position cannot change anything: its logits are never read.
    last_only = iv.add("blocks.1.hook_resid_post", np.full(CFG.d_model, 100.0, np.float32), pos=-1)
    np.testing.assert_array_equal(generate(CFG, params, prompt, 6, intervention=last_only), plain)


def test_batched_over_interventions_and_vmapped_over_prompts():
    params = random_params(CFG, 7)
    prompt = _prompt(CFG, batch=4, n=3)
    runs = [iv.zero("blocks.0.attn.hook_z", head=h, pos=p) for h in range(2) for p in (-1, 3, 5)]
    runs.append(iv.add("blocks.1.hook_resid_pre", np.ones(CFG.d_model, np.float32), pos=4))
    key = jax.random.key(11)
    stacked = generate_batched(CFG, params, prompt, 5, iv.stack(runs), key=key, temperature=0.8)
    assert stacked.shape == (len(runs), 4, 8)
    for i, run in enumerate(runs):
        np.testing.assert_array_equal(stacked[i], generate(CFG, params, prompt, 5, intervention=run, key=key,
                                                           temperature=0.8))
    by_prompt = jax.jit(jax.vmap(lambda p: generate(CFG, params, p[None], 5)[0]))(prompt)
    np.testing.assert_array_equal(by_prompt, generate(CFG, params, prompt, 5))
    by_run = jax.vmap(lambda one: generate(CFG, params, prompt, 5, intervention=one))(iv.stack(runs))
    np.testing.assert_array_equal(by_run, generate_batched(CFG, params, prompt, 5, iv.stack(runs)))


def test_matches_transformer_lens_generate():
    pytest.importorskip("transformer_lens")
    import torch

    from tl_reference import params_from_tl, tl_model

    for cfg in (CFG, CONFIGS["no norm, attn-only"]):
        model = tl_model(cfg, seed=3)
        prompt = _prompt(cfg, batch=4, n=3)
        # TransformerLens 3.x's use_past_kv_cache=True path fails on token input after its first
        # step (it re-embeds the whole sequence at the cache's position offset: a shape error),
        # so the reference is its no-cache path.
        ref = model.generate(torch.tensor(prompt), max_new_tokens=7, stop_at_eos=False, do_sample=False,
                             use_past_kv_cache=False, verbose=False)
        np.testing.assert_array_equal(generate(cfg, params_from_tl(model), prompt, 7), ref.numpy())


def test_compiles_once_per_shape():
    params = random_params(CFG, 8)
    from toymech import generation as gen

    generate(CFG, params, _prompt(CFG, seed=1), 4)
    size = gen._generate_jit._cache_size()
    for seed in range(2, 5):
        generate(CFG, params, _prompt(CFG, seed=seed), 4, intervention=None)
    assert gen._generate_jit._cache_size() == size


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=7), r"prompt of 4 tokens \+ max_new_tokens=7 = 11 positions exceeds the model's n_ctx=10"),
    (dict(max_new_tokens=-1), "max_new_tokens must be a non-negative int, got -1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be a non-negative int"),
    (dict(max_new_tokens=True), "max_new_tokens must be a non-negative int, got True"),
    (dict(temperature=-0.1, key=jax.random.key(0)), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan"), key=jax.random.key(0)), "temperature must be a finite number"),
    (dict(temperature=1.0), r"sampling \(temperature=1.0\) needs a key"),
    (dict(temperature=1.0, key=3), "key must be a JAX random key"),
    (dict(top_k=0), r"top_k must be None or an int in 1..d_vocab_out=11, got 0"),
    (dict(top_k=-2), "top_k must be None or an int in 1..d_vocab_out=11, got -2"),
    (dict(top_k=12), "top_k must be None or an int in 1..d_vocab_out=11, got 12"),
    (dict(top_k=True), "top_k must be None or an int"),
])
def test_bad_arguments(kwargs, match):
    params = random_params(CFG, 0)
    kwargs = {"max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(CFG, params, _prompt(CFG), **kwargs)


def test_bad_prompts_models_and_interventions():
    params = random_params(CFG, 0)
    bad = _prompt(CFG)
    bad[1, 2] = CFG.d_vocab
    with pytest.raises(ValueError, match=r"token 11 at \[batch 1, pos 2\] is outside the vocabulary \[0, 11\)"):
        generate(CFG, params, bad, 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(CFG, params, -_prompt(CFG) - 1, 2)
    with pytest.raises(ValueError, match="prompt_tokens is empty"):
        generate(CFG, params, np.zeros((2, 0), np.int32), 2)
    with pytest.raises(ValueError, match=r"tokens must be an int array \[batch, pos\]"):
        generate(CFG, params, np.arange(3), 2)
    encoder = CFG.replace(attention_dir="bidirectional")
    with pytest.raises(ValueError, match="generate needs a causal model; this config has attention_dir='bidirectional'"):
        generate(encoder, random_params(encoder), _prompt(CFG), 2)
    wide = CFG.replace(d_vocab_out=13)
    with pytest.raises(ValueError, match="d_vocab_out=13 exceeds d_vocab=11"):
        generate(wide, random_params(wide), _prompt(CFG), 2)
    with pytest.raises(ValueError, match="params do not fit"):
        generate(CFG.replace(normalization_type=None), params, _prompt(CFG), 2)
    # Intervention positions refer to the output sequence: 4 + 3 = 7 positions.
    generate(CFG, params, _prompt(CFG), 3, intervention=iv.zero("blocks.0.hook_resid_post", pos=6))
    with pytest.raises(ValueError, match="pos index 7 is out of range for the position axis of size 7"):
        generate(CFG, params, _prompt(CFG), 3, intervention=iv.zero("blocks.0.hook_resid_post", pos=7))
    with pytest.raises(ValueError, match="pos index -8 is out of range"):
        generate(CFG, params, _prompt(CFG), 3, intervention=iv.zero("blocks.0.hook_resid_post", pos=-8))
    stacked = iv.stack([iv.zero("blocks.0.attn.hook_z", head=h) for h in range(2)])
    with pytest.raises(ValueError, match="a stack of 2 runs: generate with all of them with .*generate_batched"):
        generate(CFG, params, _prompt(CFG), 2, intervention=stacked)
    with pytest.raises(ValueError, match="needs a stacked intervention"):
        generate_batched(CFG, params, _prompt(CFG), 2, None)
    with pytest.raises(ValueError, match="build it with interventions.stack"):
        generate_batched(CFG, params, _prompt(CFG), 2, iv.zero("blocks.0.attn.hook_z", head=1))
    with pytest.raises(ValueError, match="tokens must be integers"):
        generate(CFG, params, _prompt(CFG).astype(np.float32), 2)
    np.testing.assert_array_equal(generate(CFG, params, [[1, 2]], 2), generate(CFG, params, np.array([[1, 2]]), 2))

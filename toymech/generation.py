"""Autoregressive generation with a KV cache: greedy or sampled, with or without an intervention.

`generate(cfg, params, prompt_tokens, max_new_tokens)` continues each prompt
(int [batch, prompt_len]) by `max_new_tokens` tokens and returns the whole
sequences, int32 [batch, prompt_len + max_new_tokens], as TransformerLens's
`HookedTransformer.generate(tokens, max_new_tokens, stop_at_eos=False)` does.

How it runs. The prompt goes through the model in one call that fills a KV
cache (`toymech.model.KVCache`: per layer, keys and values in buffers of the
whole output's length); then `lax.scan` feeds one new token per step, each
attending over the cached keys and values. The whole generation is one
compiled program (per config, shapes, max_new_tokens, temperature and
top_k), jittable and vmappable: over prompts by the batch axis (or `vmap`),
over a stack of interventions with `generate_batched` (as `apply_batched`).
The tokens are exactly those of a loop without a cache that reruns the model
on the growing sequence and picks each next token the same way (the tests
check this, greedy and sampled, with interventions).

Choosing the next token from the logits at the last position:
  temperature 0   argmax (greedy; `key` unused, top_k has no effect);
  temperature > 0 logits / temperature, with top_k all but the k largest set to
                  -inf (ties with the k-th kept, as TransformerLens), then
                  `jax.random.categorical` with key `jax.random.split(key,
                  max_new_tokens)[i]` for the i-th new token of every row.

Interventions during generation. The intervention is written for the output
sequence [batch, prompt_len + max_new_tokens]: position indices and masks
refer to its positions (`pos=prompt_len` is the first generated token, `pos=-1`
the last, whose logits are never read, so an edit there alone changes nothing), and patch/add values of per-position shape have its length.
Each chunk the model runs (the prompt, then one token per step) gets the
edits of its own positions, so the edited model's generation is what the
loop without a cache gives with the same intervention on the full-length
sequence (later positions do not affect earlier ones in a causal model). An
edit must act position by position for this to hold: a `fn` edit that mixes
positions, or a pattern edit that attends to later keys, sees zeros for the
positions not generated yet.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from toymech import interventions as iv
from toymech.config import ModelConfig
from toymech.model import KVCache, Transformer, Sites, check_inputs, check_params
from toymech.sites import AXES, site_layout


class _ChunkSites(Sites):
    """The model's per-call `Sites` for one chunk of a generation: applies an
    intervention written for the whole output sequence (n_total positions) to
    the chunk at positions start..: each edited activation is placed at its
    positions in a zero array of the full length, edited there and cut back out,
    so masks, negative indices and per-position values mean what they mean on
    the whole sequence. Nothing is captured."""

    def __init__(self, intervention, start, n_total: int):
        super().__init__(intervention, ())
        self.start, self.n_total = start, n_total

    def __call__(self, name, x):
        if name not in self.edits:
            return x
        axis = AXES[site_layout(name)]["pos"]  # the (query) position axis
        shape = x.shape[:axis] + (self.n_total,) + x.shape[axis + 1:]
        full = jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, x.dtype), x, self.start, axis)
        full = iv.apply_edits(name, full, self.edits[name])
        return jax.lax.dynamic_slice_in_dim(full, self.start, x.shape[axis], axis)


def _run_chunk(cfg, params, tokens, start, buffers, intervention, n_total):
    """Logits [b, n, v_out] of the chunk tokens [b, n] at positions start.., and the updated buffers."""
    kv = KVCache(buffers, start)
    sites = _ChunkSites(intervention, start, n_total)
    logits = Transformer(cfg).apply({"params": params}, tokens, sites, None, None, kv)
    return logits, kv.updated


def _next_token(logits, key, temperature: float, top_k: int | None):  # logits [b, v] -> int32 [b]
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [b, 1]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _generate(cfg, params, prompt, key, intervention, max_new_tokens, temperature, top_k):
    batch, n_prompt = prompt.shape
    n_total = n_prompt + max_new_tokens
    if max_new_tokens == 0:
        return prompt.astype(jnp.int32)
    zeros = jnp.zeros((batch, n_total, cfg.n_heads, cfg.d_head), jnp.dtype(cfg.dtype))
    buffers = {f"blocks.{l}.attn": (zeros, zeros) for l in range(cfg.n_layers)}
    keys = jax.random.split(key, max_new_tokens) if temperature > 0 else [None] * max_new_tokens
    logits, buffers = _run_chunk(cfg, params, prompt, 0, buffers, intervention, n_total)  # [b, P, v]
    first = _next_token(logits[:, -1], keys[0], temperature, top_k)  # [b]

    def step(carry, key_i):
        buffers, token, pos = carry
        logits, buffers = _run_chunk(cfg, params, token[:, None], pos, buffers, intervention, n_total)
        new = _next_token(logits[:, 0], key_i, temperature, top_k)
        return (buffers, new, pos + 1), new

    rest = keys[1:] if temperature > 0 else None
    _, new = jax.lax.scan(step, (buffers, first, jnp.int32(n_prompt)), rest, length=max_new_tokens - 1)
    return jnp.concatenate([prompt.astype(jnp.int32), first[:, None], new.T], axis=1)  # [b, P + M]


_STATIC = ("cfg", "max_new_tokens", "temperature", "top_k")
_generate_jit = jax.jit(_generate, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_batched(cfg, params, prompt, key, intervention, max_new_tokens, temperature, top_k):
    run = lambda one: _generate(cfg, params, prompt, key, one, max_new_tokens, temperature, top_k)
    return jax.vmap(run)(intervention)


def _checked(cfg, params, prompt_tokens, max_new_tokens, key, temperature, top_k, intervention, batched):
    """Validates generate's arguments; returns (prompt, temperature as a float)."""
    if cfg.attention_dir != "causal":
        raise ValueError(f"generate needs a causal model; this config has attention_dir={cfg.attention_dir!r} "
                         "(a bidirectional model's earlier logits change with every new token)")
    if cfg.d_vocab_out > cfg.d_vocab:
        raise ValueError(f"generate feeds predicted tokens back as input, but d_vocab_out={cfg.d_vocab_out} exceeds "
                         f"d_vocab={cfg.d_vocab}: the model can predict tokens it cannot read")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= cfg.d_vocab_out):
        raise ValueError(f"top_k must be None or an int in 1..d_vocab_out={cfg.d_vocab_out}, got {top_k!r}")
    if temperature > 0 and key is None:
        raise ValueError(f"sampling (temperature={temperature}) needs a key: generate(..., key=jax.random.key(0))")
    if key is not None and not (isinstance(key, jax.Array) and (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.shape == (2,) and key.dtype == jnp.uint32))):
        raise ValueError(f"key must be a JAX random key (jax.random.key(seed)), got {type(key).__name__} "
                         f"{getattr(key, 'dtype', '')}".rstrip())
    if (not batched and isinstance(intervention, iv.Intervention) and intervention.n_stacked is not None
            and not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(intervention))):
        raise ValueError(f"this intervention is a stack of {intervention.n_stacked} runs: generate with all of "
                         "them with toymech.generation.generate_batched, or one with intervention=stacked[i]")
    prompt = check_inputs(cfg, prompt_tokens, None, None, check_values=True)  # shape, dtype, values
    shape = np.shape(prompt)
    if shape[1] == 0:
        raise ValueError("prompt_tokens is empty: give at least one token per row to continue")
    if shape[1] + max_new_tokens > cfg.n_ctx:
        raise ValueError(f"a prompt of {shape[1]} tokens + max_new_tokens={max_new_tokens} = "
                         f"{shape[1] + max_new_tokens} positions exceeds the model's n_ctx={cfg.n_ctx}")
    # The intervention is checked against the output sequence, which it is written for.
    check_inputs(cfg, jnp.zeros((shape[0], shape[1] + max_new_tokens), jnp.int32), intervention, None,
                 check_values=False, batched=batched)
    check_params(cfg, params)
    return jnp.asarray(prompt), float(temperature)


def generate(cfg: ModelConfig, params: dict, prompt_tokens, max_new_tokens: int, *, key=None,
             temperature: float = 0, top_k: int | None = None, intervention=None) -> jax.Array:
    """Continues each prompt by `max_new_tokens` tokens (see the module docstring).

    Args:
      cfg, params: a causal model whose outputs are input tokens (d_vocab_out <= d_vocab).
      prompt_tokens: int [batch, prompt_len], values in [0, d_vocab), prompt_len >= 1;
        prompt_len + max_new_tokens <= n_ctx.
      max_new_tokens: how many tokens to add (0 returns the prompts).
      key: a `jax.random.key`, needed when sampling (temperature > 0).
      temperature: 0 for greedy decoding, > 0 to sample from softmax(logits / temperature).
      top_k: sample among the k most likely tokens only (1..d_vocab_out), or None for all.
      intervention: edits applied while generating, written for the output sequence
        [batch, prompt_len + max_new_tokens]; a single run (for a stack, `generate_batched`).
    Returns the prompts and their continuations, int32 [batch, prompt_len + max_new_tokens].

    Jitted (compiled once per config, shapes, max_new_tokens, temperature and top_k);
    inside your own jit or vmap, pass max_new_tokens, temperature and top_k as Python
    numbers. Raises ValueError for bad arguments, naming them.
    """
    prompt, temperature = _checked(cfg, params, prompt_tokens, max_new_tokens, key, temperature, top_k,
                                   intervention, batched=False)
    return _generate_jit(cfg, params, prompt, key, intervention, int(max_new_tokens), temperature, top_k)


def generate_batched(cfg: ModelConfig, params: dict, prompt_tokens, max_new_tokens: int, intervention, *,
                     key=None, temperature: float = 0, top_k: int | None = None) -> jax.Array:
    """`generate` once per intervention of a stack (`toymech.interventions.stack`), in one
    vmapped call, every run with the same prompts and key: int32 [n, batch, prompt_len +
    max_new_tokens]."""
    prompt, temperature = _checked(cfg, params, prompt_tokens, max_new_tokens, key, temperature, top_k,
                                   intervention, batched=True)
    return _generate_batched(cfg, params, prompt, key, intervention, int(max_new_tokens), temperature, top_k)

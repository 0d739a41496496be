"""The toymech transformer: a HookedTransformer-compatible Flax model.

Read top to bottom: `LayerNorm`, `Attention`, `MLP`, `Block`, `Transformer`,
then the functional entry points `init_params`, `apply`, `apply_batched`.

Parameters carry TransformerLens's names and shapes (`embed.W_E`,
`blocks.0.attn.W_Q [n_heads, d_model, d_head]`, ...); `flatten_params` gives
exactly the keys of a HookedTransformer state dict. Instead of hooks, every
forward pass takes two explicit arguments:

* `intervention`: edits to apply at named sites (`toymech.interventions`);
* `capture`: the site names whose activations to return.

Both are handled by `_Sites`, a per-call object threaded through the modules:
each site is one `sites(name, x)` call that applies the edits for `name` and
records `x` if asked for. Sites that are neither captured nor edited cost
nothing (under jit they are plain intermediate values), and the one expensive
site, `attn.hook_result` ([batch, pos, head, d_model]), is only formed when it
is captured or edited.

Einsum letters: b batch, p position (q query, k key position), d d_model,
h head, e d_head, m d_mlp, v vocabulary.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toymech import interventions as iv
from toymech.config import ModelConfig
from toymech.sites import check_sites, site_names

ACT_FNS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}


class _Sites:
    """Applies the intervention and records the captures of one forward pass."""

    def __init__(self, intervention: iv.Intervention | None, capture: tuple[str, ...]):
        self.edits = intervention.edits if intervention is not None else {}
        self.capture = frozenset(capture)
        self.captured: dict[str, jax.Array] = {}

    def wanted(self, name: str) -> bool:
        return name in self.capture or name in self.edits

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        if name in self.edits:
            x = iv.apply_edits(name, x, self.edits[name])
        if name in self.capture:
            self.captured[name] = x
        return x


def _weight(module: nn.Module, name: str, shape) -> jax.Array:
    init = nn.initializers.normal(stddev=module.cfg.init_range)
    return module.param(name, init, shape, jnp.dtype(module.cfg.dtype))


def _bias(module: nn.Module, name: str, shape, value: float = 0.0) -> jax.Array:
    init = nn.initializers.constant(value)
    return module.param(name, init, shape, jnp.dtype(module.cfg.dtype))


class LayerNorm(nn.Module):
    """LayerNorm ('LN': with weight w and bias b) or LNPre (no parameters).

    As in TransformerLens, hook_normalized is (x - mean) / scale, before w and b.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, sites: _Sites, prefix: str):  # x [b, p, d]
        x = x - x.mean(-1, keepdims=True)
        scale = sites(f"{prefix}.hook_scale", jnp.sqrt((x**2).mean(-1, keepdims=True) + self.cfg.eps))
        x = sites(f"{prefix}.hook_normalized", x / scale)  # [b, p, d]
        if self.cfg.normalization_type == "LN":
            x = x * _bias(self, "w", (self.cfg.d_model,), 1.0) + _bias(self, "b", (self.cfg.d_model,))
        return x


class Attention(nn.Module):
    """Multi-head attention with causal and/or key-padding masking."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, sites: _Sites, prefix: str, key_mask):  # x [b, p, d], key_mask [b, p] | None
        c = self.cfg
        qkv_shape, bias_shape = (c.n_heads, c.d_model, c.d_head), (c.n_heads, c.d_head)
        W_Q, W_K, W_V = (_weight(self, n, qkv_shape) for n in ("W_Q", "W_K", "W_V"))
        W_O = _weight(self, "W_O", (c.n_heads, c.d_head, c.d_model))
        b_Q, b_K, b_V = (_bias(self, n, bias_shape) for n in ("b_Q", "b_K", "b_V"))
        b_O = _bias(self, "b_O", (c.d_model,))

        q = sites(f"{prefix}.hook_q", jnp.einsum("bpd,hde->bphe", x, W_Q) + b_Q)  # [b, p, h, e]
        k = sites(f"{prefix}.hook_k", jnp.einsum("bpd,hde->bphe", x, W_K) + b_K)
        v = sites(f"{prefix}.hook_v", jnp.einsum("bpd,hde->bphe", x, W_V) + b_V)
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(c.d_head).astype(q.dtype)
        n_pos = x.shape[1]
        allowed = jnp.ones((1, 1, n_pos, n_pos), bool)  # [b, h, q, k]
        if c.attention_dir == "causal":
            allowed = allowed & jnp.tril(jnp.ones((n_pos, n_pos), bool))
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        scores = sites(f"{prefix}.hook_attn_scores", jnp.where(allowed, scores, -jnp.inf))
        pattern = jax.nn.softmax(scores, axis=-1)
        pattern = jnp.where(jnp.isnan(pattern), 0.0, pattern)  # rows with no allowed key -> 0
        pattern = sites(f"{prefix}.hook_pattern", pattern)  # [b, h, q, k]
        z = sites(f"{prefix}.hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v))  # [b, q, h, e]
        if sites.wanted(f"{prefix}.hook_result"):
            result = sites(f"{prefix}.hook_result", jnp.einsum("bqhe,hed->bqhd", z, W_O))
            return result.sum(axis=2) + b_O  # [b, q, d]
        return jnp.einsum("bqhe,hed->bqd", z, W_O) + b_O


class MLP(nn.Module):
    """Two-layer MLP: W_in, activation, W_out."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, sites: _Sites, prefix: str):  # x [b, p, d]
        c = self.cfg
        W_in, b_in = _weight(self, "W_in", (c.d_model, c.d_mlp)), _bias(self, "b_in", (c.d_mlp,))
        W_out, b_out = _weight(self, "W_out", (c.d_mlp, c.d_model)), _bias(self, "b_out", (c.d_model,))
        pre = sites(f"{prefix}.hook_pre", jnp.einsum("bpd,dm->bpm", x, W_in) + b_in)  # [b, p, m]
        post = sites(f"{prefix}.hook_post", ACT_FNS[c.act_fn](pre))
        return jnp.einsum("bpm,md->bpd", post, W_out) + b_out


class Block(nn.Module):
    """Pre-norm transformer block: resid += attn(ln1(resid)); resid += mlp(ln2(resid))."""

    cfg: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, resid, sites: _Sites, key_mask):  # resid [b, p, d]
        c, b = self.cfg, f"blocks.{self.layer}"
        norm = (lambda name: LayerNorm(c, name=name)) if c.normalization_type else None
        resid = sites(f"{b}.hook_resid_pre", resid)
        x = norm("ln1")(resid, sites, f"{b}.ln1") if norm else resid
        attn_out = sites(f"{b}.hook_attn_out", Attention(c, name="attn")(x, sites, f"{b}.attn", key_mask))
        if c.attn_only:
            return sites(f"{b}.hook_resid_post", resid + attn_out)
        resid = sites(f"{b}.hook_resid_mid", resid + attn_out)
        x = norm("ln2")(resid, sites, f"{b}.ln2") if norm else resid
        mlp_out = sites(f"{b}.hook_mlp_out", MLP(c, name="mlp")(x, sites, f"{b}.mlp"))
        return sites(f"{b}.hook_resid_post", resid + mlp_out)


class Embed(nn.Module):
    """Token embedding W_E [d_vocab, d_model]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens):  # tokens int [b, p]
        return _weight(self, "W_E", (self.cfg.d_vocab, self.cfg.d_model))[tokens]  # [b, p, d]


class PosEmbed(nn.Module):
    """Learned positional embedding W_pos [n_ctx, d_model]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, n_pos: int):
        return _weight(self, "W_pos", (self.cfg.n_ctx, self.cfg.d_model))[:n_pos]  # [p, d]


class Unembed(nn.Module):
    """Unembedding W_U [d_model, d_vocab_out] and bias b_U."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):  # x [b, p, d]
        c = self.cfg
        W_U, b_U = _weight(self, "W_U", (c.d_model, c.d_vocab_out)), _bias(self, "b_U", (c.d_vocab_out,))
        return jnp.einsum("bpd,dv->bpv", x, W_U) + b_U


class Transformer(nn.Module):
    """Token + learned positional embedding, blocks, final norm, unembedding."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, sites: _Sites, key_mask=None):  # tokens int [b, p]
        c = self.cfg
        embed = sites("hook_embed", Embed(c, name="embed")(tokens))  # [b, p, d]
        pos = PosEmbed(c, name="pos_embed")(tokens.shape[1])
        pos_embed = sites("hook_pos_embed", jnp.broadcast_to(pos, embed.shape))  # [b, p, d]
        resid = embed + pos_embed
        for layer in range(c.n_layers):
            resid = Block(c, layer, name=f"blocks_{layer}")(resid, sites, key_mask)
        if c.normalization_type:
            resid = LayerNorm(c, name="ln_final")(resid, sites, "ln_final")
        return Unembed(c, name="unembed")(resid)  # [b, p, v]


# --- functional entry points -------------------------------------------------


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters with TransformerLens's default init (normal weights with
    std cfg.init_range, zero biases, unit LayerNorm weights)."""
    return _init_jit(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg: ModelConfig, key: jax.Array) -> dict:
    tokens = jnp.zeros((1, cfg.n_ctx), jnp.int32)
    return Transformer(cfg).init(key, tokens, _Sites(None, ()))["params"]


def flatten_params(params: dict) -> dict[str, jax.Array]:
    """{'blocks.0.attn.W_Q': array, ...}: the keys of a HookedTransformer state dict."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [p.key for p in path]
        if keys[0].startswith("blocks_"):
            keys[0] = "blocks." + keys[0][len("blocks_"):]
        flat[".".join(keys)] = leaf
    return flat


def unflatten_params(flat: dict) -> dict:
    """Inverse of `flatten_params`."""
    params: dict = {}
    for name, leaf in flat.items():
        keys = name.split(".")
        if keys[0] == "blocks":
            keys = [f"blocks_{keys[1]}"] + keys[2:]
        node = params
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return params


def _forward(cfg, params, tokens, intervention, capture, key_padding_mask):
    sites = _Sites(intervention, capture)
    logits = Transformer(cfg).apply({"params": params}, tokens, sites, key_padding_mask)
    return logits, sites.captured


_forward_jit = jax.jit(_forward, static_argnums=(0, 4))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _forward_batched(cfg, params, tokens, intervention, capture, key_padding_mask):
    run = lambda one: _forward(cfg, params, tokens, one, capture, key_padding_mask)
    return jax.vmap(run)(intervention)


def _resolve_capture(cfg: ModelConfig, capture) -> tuple[str, ...]:
    if capture is None:
        return ()
    if isinstance(capture, str):
        capture = site_names(cfg) if capture == "all" else (capture,)
    capture = tuple(capture)
    check_sites(cfg, capture, "capture")
    return capture


def check_inputs(cfg: ModelConfig, tokens, intervention, key_padding_mask, check_values: bool):
    """Validates a forward pass's inputs at the boundary: shapes and site names
    always, token values when concrete and `check_values`. Raises ValueError."""
    if intervention is not None:
        if not isinstance(intervention, iv.Intervention):
            raise TypeError(f"intervention must be a toymech Intervention, got {type(intervention).__name__}")
        check_sites(cfg, intervention.sites, "intervention site")
    shape = np.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be an int array [batch, pos], got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {jnp.result_type(tokens)}")
    if shape[1] > cfg.n_ctx:
        raise ValueError(f"sequence length {shape[1]} exceeds the model's n_ctx={cfg.n_ctx}")
    if key_padding_mask is not None and np.shape(key_padding_mask) != shape:
        raise ValueError(
            f"key_padding_mask must have the tokens' shape {shape}, got {np.shape(key_padding_mask)}"
        )
    if check_values and not isinstance(tokens, jax.core.Tracer):
        t = np.asarray(tokens)
        bad = (t < 0) | (t >= cfg.d_vocab)
        if bad.any():
            b, p = np.argwhere(bad)[0]
            raise ValueError(
                f"token {t[b, p]} at [batch {b}, pos {p}] is outside the vocabulary [0, {cfg.d_vocab}) "
                f"({int(bad.sum())} out-of-range tokens in all)"
            )


def apply(cfg: ModelConfig, params: dict, tokens, *, intervention=None, capture=(), key_padding_mask=None):
    """Runs the model: returns (logits [batch, pos, d_vocab_out], {site: activation}).

    Args:
      cfg, params: the model.
      tokens: int [batch, pos], values in [0, d_vocab), pos <= n_ctx (checked).
      intervention: a `toymech.interventions.Intervention`, or None.
      capture: site names to return (see `toymech.site_names(cfg)`), or "all".
      key_padding_mask: bool [batch, pos], True for real tokens; padded keys
        get zero attention (in causal and bidirectional models).
    The call is jitted (compiled once per config, capture set and input
    shapes) and may itself be used inside jit/vmap/grad; token values are
    only checked when they are concrete (use `apply_unchecked` to skip).
    """
    check_inputs(cfg, tokens, intervention, key_padding_mask, check_values=True)
    return _forward_jit(cfg, params, tokens, intervention, _resolve_capture(cfg, capture), key_padding_mask)


def apply_unchecked(cfg: ModelConfig, params: dict, tokens, *, intervention=None, capture=(), key_padding_mask=None):
    """`apply` without the token-value check, for hot loops over validated data."""
    check_inputs(cfg, tokens, intervention, key_padding_mask, check_values=False)
    return _forward_jit(cfg, params, tokens, intervention, _resolve_capture(cfg, capture), key_padding_mask)


def apply_batched(cfg: ModelConfig, params: dict, tokens, intervention, *, capture=(), key_padding_mask=None):
    """Runs the model once per intervention of a stacked batch, in one jitted,
    vmapped call: returns logits [n, batch, pos, d_vocab_out] and activations
    with the same leading axis n (see `toymech.interventions.stack`)."""
    check_inputs(cfg, tokens, intervention, key_padding_mask, check_values=True)
    iv.batch_size(intervention)
    return _forward_batched(cfg, params, tokens, intervention, _resolve_capture(cfg, capture), key_padding_mask)

"""The toymech transformer: a HookedTransformer-compatible Flax model.

Read top to bottom: `LayerNorm`, `Attention`, `MLP`, `Block`, `Transformer`,
then the functional entry points `init_params`, `apply`, `apply_batched`.

Parameters carry TransformerLens's names and shapes (`embed.W_E`,
`blocks.0.attn.W_Q [n_heads, d_model, d_head]`, ...); `toymech.params.flatten_params`
gives exactly the keys of a HookedTransformer state dict. Instead of hooks, every
forward pass takes two explicit arguments:

* `intervention`: edits to apply at named sites (`toymech.interventions`);
* `capture`: the site names whose activations to return.

Both are handled by `Sites`, a per-call object threaded through the modules:
each site is one `sites(name, x)` call that applies the edits for `name` and
records `x` if asked for. Sites that are neither captured nor edited cost
nothing (under jit they are plain intermediate values), and the one expensive
site, `attn.hook_result` ([batch, pos, head, d_model]), is only formed when it
is captured or edited.

Computing only what is read. `output_positions` restricts the last block's
queries, attention output, MLP, final norm and unembedding to the positions
whose logits a loss reads (keys and values still cover every position), so
logits come back as [batch, k, d_vocab_out] and are exact there. And when the
first block reads the raw embeddings (no LayerNorm, nothing edits them), its
Q/K/V maps are applied to the rows of W_E and W_pos before the token gather
(`_EmbeddingInput`), which is exact and much cheaper than projecting every
token of a large batch.

Decoding with a KV cache (`toymech.generation`). `Transformer` also takes a
`KVCache`: the keys and values of earlier positions, per layer, in buffers of
the whole sequence's length. The tokens of the call are then a chunk starting
at `kv.start`; each attention writes its new keys and values into the buffers
there and attends over all of them (causality masks the slots not yet
written), and the positional embedding is read from `kv.start` on.

Einsum letters: b batch, p position (q query, k key position), d d_model,
h head, e d_head, m d_mlp, v vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from toymech import interventions as iv
from toymech.cache import ActivationCache
from toymech.config import ModelConfig
from toymech.params import flatten_params
from toymech.sites import check_sites, site_names, site_shape, split_input_sites

ACT_FNS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}


class Sites:
    """Applies the intervention and records the captures of one forward pass.

    A subclass may rewrite sites itself (`toymech.analysis.edges` builds each
    receiver's input from its senders this way): override `__call__`, and
    `edited` for the sites whose value it changes.
    """

    def __init__(self, intervention: iv.Intervention | None, capture: tuple[str, ...]):
        self.edits = intervention.edits if intervention is not None else {}
        self.capture = frozenset(capture)
        self.captured: dict[str, jax.Array] = {}

    def wanted(self, name: str) -> bool:
        return name in self.capture or name in self.edits

    def edited(self, name: str) -> bool:
        """Whether `name`'s value may differ from what the model computes there
        (the split-input sites take the per-head path only then)."""
        return name in self.edits

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        if name in self.edits:
            x = iv.apply_edits(name, x, self.edits[name])
        if name in self.capture:
            self.captured[name] = x
        return x


def _at_positions(x: jax.Array, positions) -> jax.Array:
    """x [b, p, ...] at `positions` -> [b, k, ...].

    `positions` is None (all), a tuple of non-negative ints (the same for every
    row; a contiguous run is a slice) or an int array [b, k] (per row).
    """
    if positions is None:
        return x
    if isinstance(positions, tuple):
        lo = positions[0]
        if positions == tuple(range(lo, lo + len(positions))):
            return x[:, lo: lo + len(positions)]
        return x[:, np.asarray(positions)]
    index = positions.reshape(positions.shape + (1,) * (x.ndim - 2))  # [b, k, 1...]
    return jnp.take_along_axis(x, index, axis=1)


def _query_index(positions, n_pos: int):
    """Position of each query: int [1, p], [1, k] or [b, k]."""
    if positions is None:
        return jnp.arange(n_pos)[None]
    if isinstance(positions, tuple):
        return jnp.asarray(positions)[None]
    return positions


def _attention_scores(q, k):  # q [b, q, h, e], k [b, k, h, e] -> [b, h, q, k]
    # Heads-first operands: XLA:CPU runs these small batched matmuls 2-3x faster
    # than with the head axis in the middle (measured on the studies' shapes).
    return jnp.einsum("bhqe,bhke->bhqk", q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3))


def _mix_values(pattern, v):  # pattern [b, h, q, k], v [b, k, h, e] -> [b, q, h, e]
    # Heads-first output too, then transposed: 2.5x faster on the sum model's shapes than
    # writing bqhe from the matmul (1.4 against 3.7 ms for [1000, 3, 14, 14] x [1000, 14, 3, 24]).
    return jnp.einsum("bhqk,bhke->bhqe", pattern, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


class _DenseInput:
    """An attention input held as activations x [b, p, d]."""

    def __init__(self, x: jax.Array):
        self.x = x

    def project(self, W, b, positions=None):  # W [h, d, e], b [h, e] -> [b, k, h, e]
        return jnp.einsum("bpd,hde->bphe", _at_positions(self.x, positions), W) + b


class _HeadInput:
    """An attention input held per head, x [b, p, h, d] (the split-input sites)."""

    def __init__(self, x: jax.Array):
        self.x = x

    def project(self, W, b, positions=None):  # W [h, d, e], b [h, e] -> [b, k, h, e]
        return jnp.einsum("bphd,hde->bphe", _at_positions(self.x, positions), W) + b


class _EmbeddingInput:
    """The first block's input W_E[tokens] + W_pos, projected through the tables:
    (W_E @ W)[tokens] + (W_pos @ W)[pos] equals (W_E[tokens] + W_pos) @ W, at
    (d_vocab + p) rows of work instead of batch * p."""

    def __init__(self, tokens: jax.Array, W_E: jax.Array, W_pos: jax.Array):
        self.tokens, self.W_E, self.W_pos = tokens, W_E, W_pos  # [b, p], [v, d], [p, d]

    def project(self, W, b, positions=None):  # -> [b, k, h, e]
        table = jnp.einsum("vd,hde->vhe", self.W_E, W)  # [v, h, e]
        pos = self.W_pos[np.asarray(positions)] if isinstance(positions, tuple) else (
            self.W_pos if positions is None else self.W_pos[positions])  # [k, d] | [p, d] | [b, k, d]
        return table[_at_positions(self.tokens, positions)] + jnp.einsum("...d,hde->...he", pos, W) + b


class KVCache:
    """Keys and values of earlier positions, for running a chunk of a sequence.

    buffers: {attention prefix ('blocks.0.attn', ...): (k, v)}, each
    [b, n_total, h, e]; start: the position of the chunk's first token (an int
    or a traced int scalar). Each attention call writes its chunk's keys and
    values at start.. and reads the whole buffers; `updated` collects the
    buffers after the call (the next chunk's `buffers`).
    """

    def __init__(self, buffers: dict, start):
        self.buffers, self.start, self.updated = buffers, start, {}

    def extend(self, prefix: str, k, v):  # k, v [b, n, h, e] -> [b, n_total, h, e]
        k, v = (jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), self.start, axis=1)
                for old, new in zip(self.buffers[prefix], (k, v)))
        self.updated[prefix] = (k, v)
        return k, v


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
    def __call__(self, x, sites: Sites, prefix: str):  # x [b, p, d]
        x = x - x.mean(-1, keepdims=True)
        scale = sites(f"{prefix}.hook_scale", jnp.sqrt((x**2).mean(-1, keepdims=True) + self.cfg.eps))
        x = sites(f"{prefix}.hook_normalized", x / scale)  # [b, p, d]
        if self.cfg.normalization_type == "LN":
            x = x * _bias(self, "w", (self.cfg.d_model,), 1.0) + _bias(self, "b", (self.cfg.d_model,))
        return x


class Attention(nn.Module):
    """Multi-head attention with causal and/or key-padding masking.

    Queries (and everything after them) are computed at `positions` only (None:
    all); keys and values at every position. `inp` is one input for all three
    maps, or a (query, key, value) triple of per-head inputs (split inputs).
    With `kv` (a `KVCache`), the input is a chunk starting at kv.start and the
    keys and values of the earlier positions come from the cache.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, inp, sites: Sites, prefix: str, key_mask, positions=None, kv: KVCache | None = None):
        # inp: _DenseInput | _EmbeddingInput over [b, p]; key_mask [b, p] | None (with kv: [b, n_total] | None)
        c = self.cfg
        qkv_shape, bias_shape = (c.n_heads, c.d_model, c.d_head), (c.n_heads, c.d_head)
        W_Q, W_K, W_V = (_weight(self, n, qkv_shape) for n in ("W_Q", "W_K", "W_V"))
        W_O = _weight(self, "W_O", (c.n_heads, c.d_head, c.d_model))
        b_Q, b_K, b_V = (_bias(self, n, bias_shape) for n in ("b_Q", "b_K", "b_V"))
        b_O = _bias(self, "b_O", (c.d_model,))

        q_in, k_in, v_in = inp if isinstance(inp, tuple) else (inp, inp, inp)
        q = sites(f"{prefix}.hook_q", q_in.project(W_Q, b_Q, positions))  # [b, q, h, e]
        k = sites(f"{prefix}.hook_k", k_in.project(W_K, b_K))  # [b, k, h, e]
        v = sites(f"{prefix}.hook_v", v_in.project(W_V, b_V))
        query_index = _query_index(positions, k.shape[1])  # [1 | b, q]
        if kv is not None:  # the chunk's queries sit at kv.start..; keys and values over the whole buffer
            query_index = query_index + kv.start
            k, v = kv.extend(prefix, k, v)  # [b, n_total, h, e]
        scores = _attention_scores(q, k) / np.sqrt(c.d_head).astype(q.dtype)  # [b, h, q, k]
        n_pos = k.shape[1]
        allowed = jnp.ones((1, 1, 1, n_pos), bool)  # [b, h, q, k]
        if c.attention_dir == "causal":
            allowed = allowed & (jnp.arange(n_pos) <= query_index[..., None])[:, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        scores = sites(f"{prefix}.hook_attn_scores", jnp.where(allowed, scores, -jnp.inf))
        pattern = jax.nn.softmax(scores, axis=-1)
        pattern = jnp.where(jnp.isnan(pattern), 0.0, pattern)  # rows with no allowed key -> 0
        pattern = sites(f"{prefix}.hook_pattern", pattern)  # [b, h, q, k]
        z = sites(f"{prefix}.hook_z", _mix_values(pattern, v))  # [b, q, h, e]
        if sites.wanted(f"{prefix}.hook_result"):
            result = sites(f"{prefix}.hook_result", jnp.einsum("bqhe,hed->bqhd", z, W_O))
            return result.sum(axis=2) + b_O  # [b, q, d]
        return jnp.einsum("bqhe,hed->bqd", z, W_O) + b_O


class MLP(nn.Module):
    """Two-layer MLP: W_in, activation, W_out."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, sites: Sites, prefix: str):  # x [b, p, d]
        c = self.cfg
        W_in, b_in = _weight(self, "W_in", (c.d_model, c.d_mlp)), _bias(self, "b_in", (c.d_mlp,))
        W_out, b_out = _weight(self, "W_out", (c.d_mlp, c.d_model)), _bias(self, "b_out", (c.d_model,))
        pre = sites(f"{prefix}.hook_pre", jnp.einsum("bpd,dm->bpm", x, W_in) + b_in)  # [b, p, m]
        post = sites(f"{prefix}.hook_post", ACT_FNS[c.act_fn](pre))
        return jnp.einsum("bpm,md->bpd", post, W_out) + b_out


class Block(nn.Module):
    """Pre-norm transformer block: resid += attn(ln1(resid)); resid += mlp(ln2(resid)).

    With `positions`, everything after the keys and values is computed at those
    positions only and the block returns [b, k, d]. `attn_input` replaces
    ln1(resid) as the attention's input (the first block's `_EmbeddingInput`).

    Split inputs (TransformerLens's use_attn_in / use_split_qkv_input): hook_attn_in
    is resid_pre copied per head [b, p, h, d], and hook_q_input / hook_k_input /
    hook_v_input are copies of it, each normalised by ln1 per head. When one of
    them is edited the attention reads them (ln1's own sites are then not
    hooked); otherwise they are only formed when captured, as copies.
    """

    cfg: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, resid, sites: Sites, key_mask, positions=None, attn_input=None, kv=None):  # resid [b, p, d]
        c, b = self.cfg, f"blocks.{self.layer}"
        norm = (lambda name: LayerNorm(c, name=name)) if c.normalization_type else None
        resid = sites(f"{b}.hook_resid_pre", resid)
        split = split_input_sites(self.layer)
        copies = lambda: jnp.broadcast_to(resid[:, :, None], resid.shape[:2] + (c.n_heads, c.d_model))  # [b, p, h, d]
        if any(sites.edited(name) for name in split):
            ln1 = norm("ln1") if norm else None
            attn_in = sites(split[0], copies())
            per_head = (sites(name, attn_in) for name in split[1:])  # [b, p, h, d] each
            attn_input = tuple(_HeadInput(ln1(x, _NO_SITES, "") if ln1 else x) for x in per_head)
        else:
            for name in split:  # captured only: the copies TransformerLens would hook
                if sites.wanted(name):
                    sites(name, copies())
            if attn_input is None:
                attn_input = _DenseInput(norm("ln1")(resid, sites, f"{b}.ln1") if norm else resid)
        attn = Attention(c, name="attn")(attn_input, sites, f"{b}.attn", key_mask, positions, kv)
        attn_out = sites(f"{b}.hook_attn_out", attn)  # [b, q, d]
        resid = _at_positions(resid, positions)
        if c.attn_only:
            return sites(f"{b}.hook_resid_post", resid + attn_out)
        resid = sites(f"{b}.hook_resid_mid", resid + attn_out)
        x = sites(f"{b}.hook_mlp_in", resid)
        x = norm("ln2")(x, sites, f"{b}.ln2") if norm else x
        mlp_out = sites(f"{b}.hook_mlp_out", MLP(c, name="mlp")(x, sites, f"{b}.mlp"))
        return sites(f"{b}.hook_resid_post", resid + mlp_out)


_NO_SITES = Sites(None, ())  # a LayerNorm applied per head in the split-input path hooks nothing


class Embed(nn.Module):
    """Token embedding table W_E [d_vocab, d_model]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        return _weight(self, "W_E", (self.cfg.d_vocab, self.cfg.d_model))  # [v, d]


class PosEmbed(nn.Module):
    """Learned positional embedding table W_pos [n_ctx, d_model]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        return _weight(self, "W_pos", (self.cfg.n_ctx, self.cfg.d_model))  # [n_ctx, d]


class Unembed(nn.Module):
    """Unembedding W_U [d_model, d_vocab_out] and bias b_U."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):  # x [b, p, d]
        c = self.cfg
        W_U, b_U = _weight(self, "W_U", (c.d_model, c.d_vocab_out)), _bias(self, "b_U", (c.d_vocab_out,))
        return jnp.einsum("bpd,dv->bpv", x, W_U) + b_U


class Transformer(nn.Module):
    """Token + learned positional embedding, blocks, final norm, unembedding.

    With `kv` (a `KVCache`), `tokens` are a chunk at positions kv.start.. of a
    longer sequence (see the module docstring)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, sites: Sites, key_mask=None, positions=None, kv: KVCache | None = None):
        c = self.cfg  # tokens int [b, p]
        tokens = sites("hook_tokens", tokens)  # capture only (check_inputs refuses edits)
        W_E = Embed(c, name="embed")()  # [v, d]
        W_pos = PosEmbed(c, name="pos_embed")()  # [n_ctx, d]
        n_pos = tokens.shape[1]
        W_pos = W_pos[:n_pos] if kv is None else jax.lax.dynamic_slice_in_dim(W_pos, kv.start, n_pos)  # [p, d]
        embed = sites("hook_embed", W_E[tokens])  # [b, p, d]
        pos_embed = sites("hook_pos_embed", jnp.broadcast_to(W_pos, embed.shape))  # [b, p, d]
        resid = embed + pos_embed
        first = _EmbeddingInput(tokens, W_E, W_pos) if _project_tables(c, sites, tokens.shape) else None
        for layer in range(c.n_layers):
            last = layer == c.n_layers - 1
            resid = Block(c, layer, name=f"blocks_{layer}")(
                resid, sites, key_mask, positions if last else None, first if layer == 0 else None, kv)
        if c.normalization_type:
            resid = LayerNorm(c, name="ln_final")(resid, sites, "ln_final")
        return Unembed(c, name="unembed")(sites("unembed.hook_in", resid))  # [b, q, v]


def _project_tables(cfg: ModelConfig, sites: Sites, shape) -> bool:
    """Whether the first block projects W_E and W_pos rows instead of tokens: it
    reads the raw embeddings (no LayerNorm, no edit before it), and the tables are
    much smaller than the batch's tokens."""
    edited = {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"} & set(sites.edits)
    batch, n_pos = shape
    return cfg.normalization_type is None and not edited and 2 * (cfg.d_vocab + n_pos) <= batch * n_pos


def head_result(cfg: ModelConfig, params: dict, layer: int, head, q_input, k_input, v_input,
                key_padding_mask=None) -> jax.Array:
    """One attention head of a block run alone on its own query, key and value inputs
    (traceable): the inputs are residual streams [b, p, d] before ln1 (the head's
    hook_q_input / hook_k_input / hook_v_input), `head` an int or a traced int; returns
    the head's hook_result [b, p, d] (its share of hook_attn_out, without b_O). Exact edge
    patching (`toymech.analysis.edges`) recomputes just the receiving head this way."""
    block = params[f"blocks_{layer}"]
    one = {name: jnp.zeros_like(w) if name == "b_O" else jax.lax.dynamic_slice_in_dim(w, head, 1)
           for name, w in block["attn"].items()}  # the head's W_Q [1, d, e], ..., W_O [1, e, d]
    if cfg.normalization_type:
        ln1 = lambda x: LayerNorm(cfg).apply({"params": block.get("ln1", {})}, x, _NO_SITES, "")
    else:
        ln1 = lambda x: x
    inputs = tuple(_DenseInput(ln1(x)) for x in (q_input, k_input, v_input))
    one_head = dataclasses.replace(cfg, n_heads=1)
    return Attention(one_head).apply({"params": one}, inputs, _NO_SITES, "", key_padding_mask)


# --- functional entry points -------------------------------------------------


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters with TransformerLens's default init (normal weights with
    std cfg.init_range, zero biases, unit LayerNorm weights)."""
    return _init_jit(cfg, key)


@functools.partial(jax.jit, static_argnums=0)
def _init_jit(cfg: ModelConfig, key: jax.Array) -> dict:
    tokens = jnp.zeros((1, cfg.n_ctx), jnp.int32)
    return Transformer(cfg).init(key, tokens, Sites(None, ()))["params"]


def _forward(cfg, params, tokens, intervention, capture, key_padding_mask, fixed_positions=None, row_positions=None):
    sites = Sites(intervention, capture)
    positions = fixed_positions if row_positions is None else row_positions
    logits = Transformer(cfg).apply({"params": params}, tokens, sites, key_padding_mask, positions)
    return logits, ActivationCache(cfg, sites.captured)


_forward_jit = jax.jit(_forward, static_argnums=(0, 4, 6))


@functools.partial(jax.jit, static_argnums=(0, 4, 6))
def _forward_batched(cfg, params, tokens, intervention, capture, key_padding_mask, fixed_positions, row_positions):
    run = lambda one: _forward(cfg, params, tokens, one, capture, key_padding_mask, fixed_positions, row_positions)
    return jax.vmap(run)(intervention)


def position_restricted_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """The sites that `output_positions` computes at the output positions only:
    the last block's queries and everything after them (its keys, values and
    input stay whole)."""
    b = f"blocks.{cfg.n_layers - 1}"
    whole = {f"{b}.hook_resid_pre", f"{b}.ln1.hook_scale", f"{b}.ln1.hook_normalized", f"{b}.attn.hook_k",
             f"{b}.attn.hook_v", *split_input_sites(cfg.n_layers - 1)}
    return tuple(n for n in site_names(cfg) if n.startswith((f"{b}.", "ln_final.", "unembed.")) and n not in whole)


def output_positions_for(cfg: ModelConfig, positions, *, capture=(), intervention=None):
    """`positions` if a forward pass with this capture and intervention can use them
    as `output_positions`, else None (it captures or edits a site that would be
    computed at those positions only). For task code that reads a few positions and
    sometimes captures everything."""
    used = _used_sites(intervention, _resolve_capture(cfg, capture))
    return None if set(used) & set(position_restricted_sites(cfg)) else positions


def _resolve_positions(cfg: ModelConfig, output_positions, shape, sites_used) -> tuple:
    """(fixed_positions, row_positions) for `_forward` from a user's `output_positions`.

    An int or a sequence of ints (numpy semantics: negative counts from the end)
    becomes a static tuple; an int array [batch, k] stays an array (its values are
    range-checked when concrete). Raises ValueError for out-of-range positions, a
    bad shape, or a captured or edited site that is only computed at those positions.
    """
    if output_positions is None:
        return None, None
    batch, n_pos = shape
    restricted = sorted(set(sites_used) & set(position_restricted_sites(cfg)))
    if restricted:
        raise ValueError(
            f"with output_positions, the sites {restricted} are computed at the output positions only; "
            "capture or edit them without output_positions")
    if isinstance(output_positions, jax.Array) or (isinstance(output_positions, np.ndarray) and output_positions.ndim == 2):
        if np.ndim(output_positions) != 2 or np.shape(output_positions)[0] != batch:
            raise ValueError(f"output_positions as an array must be int [batch={batch}, k], "
                             f"got shape {np.shape(output_positions)}")
        if not jnp.issubdtype(jnp.result_type(output_positions), jnp.integer):
            raise ValueError(f"output_positions must be integers, got dtype {jnp.result_type(output_positions)}")
        if not isinstance(output_positions, jax.core.Tracer):
            values = np.asarray(output_positions)
            bad = (values < 0) | (values >= n_pos)
            if bad.any():
                b, k = np.argwhere(bad)[0]
                raise ValueError(f"output_positions[{b}, {k}] = {values[b, k]} is outside the sequence's "
                                 f"positions [0, {n_pos}) (per-row positions must be non-negative)")
        return None, jnp.asarray(output_positions)
    items = [output_positions] if np.ndim(output_positions) == 0 else (
        list(output_positions) if isinstance(output_positions, (list, tuple)) else np.ravel(output_positions).tolist())
    if not items:
        raise ValueError("output_positions is empty; give at least one position, or None for all")
    fixed = []
    for p in items:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise ValueError(f"output_positions must be ints, got {p!r}")
        if not -n_pos <= p < n_pos:
            raise ValueError(f"output position {int(p)} is out of range for a sequence of {n_pos} positions "
                             f"(valid: -{n_pos}..{n_pos - 1})")
        fixed.append(int(p) % n_pos)
    return tuple(fixed), None


def _resolve_capture(cfg: ModelConfig, capture) -> tuple[str, ...]:
    if capture is None:
        return ()
    if isinstance(capture, str):
        capture = site_names(cfg) if capture == "all" else (capture,)
    elif callable(capture):  # a names filter, as TransformerLens's names_filter
        capture = tuple(name for name in site_names(cfg) if capture(name))
    elif not isinstance(capture, (tuple, list, set, frozenset)):
        raise TypeError(
            f"capture must be a site name, a sequence of site names, 'all' or a function name -> bool, "
            f"got {type(capture).__name__}"
        )
    capture = tuple(capture)
    check_sites(cfg, capture, "capture")
    return capture


def check_inputs(cfg: ModelConfig, tokens, intervention, key_padding_mask, check_values: bool,
                 batched: bool = False):
    """Validates a forward pass's inputs at the boundary: shapes, site names
    and the range of concrete integer intervention indices always, token
    values when concrete and `check_values`; with `batched`, that the
    intervention is a stack (else that it is not). Raises ValueError."""
    tokens = _as_tokens(tokens)
    if batched and intervention is None:
        raise ValueError("apply_batched needs a stacked intervention (interventions.stack); for one run use apply")
    if intervention is not None:
        if not isinstance(intervention, iv.Intervention):
            raise TypeError(f"intervention must be a toymech Intervention, got {type(intervention).__name__}")
        check_sites(cfg, intervention.sites, "intervention site")
        if "hook_tokens" in intervention.edits:
            raise ValueError("hook_tokens can be captured but not edited: pass the tokens you want to run")
        if batched:
            iv.batch_size(intervention)
        elif intervention.n_stacked is not None and not _traced(intervention):
            raise ValueError(
                f"this intervention is a stack of {intervention.n_stacked} runs (interventions.stack): run "
                "them all with toymech.apply_batched, or one of them with intervention=stacked[i]"
            )
    shape = np.shape(tokens)
    if len(shape) != 2:
        hint = " (for one sequence, pass tokens[None] or [tokens])" if len(shape) == 1 else ""
        raise ValueError(f"tokens must be an int array [batch, pos], got shape {shape}{hint}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {jnp.result_type(tokens)}")
    if shape[1] > cfg.n_ctx:
        raise ValueError(f"sequence length {shape[1]} exceeds the model's n_ctx={cfg.n_ctx}")
    if key_padding_mask is not None and np.shape(key_padding_mask) != shape:
        raise ValueError(
            f"key_padding_mask must have the tokens' shape {shape}, got {np.shape(key_padding_mask)}"
        )
    if intervention is not None:
        iv.check_indices(intervention, lambda site: site_shape(cfg, site, shape[0], shape[1]))
    if check_values and not isinstance(tokens, jax.core.Tracer):
        t = np.asarray(tokens)
        bad = (t < 0) | (t >= cfg.d_vocab)
        if bad.any():
            b, p = np.argwhere(bad)[0]
            raise ValueError(
                f"token {t[b, p]} at [batch {b}, pos {p}] is outside the vocabulary [0, {cfg.d_vocab}) "
                f"({int(bad.sum())} out-of-range tokens in all)"
            )
    return tokens


def _as_tokens(tokens):
    """Python lists/tuples of token ids -> a numpy array (one-line errors)."""
    if not isinstance(tokens, (list, tuple)):
        return tokens
    try:
        array = np.asarray(tokens)
    except ValueError:
        raise ValueError(
            "tokens: a Python list whose rows have different lengths; pad it into an int array "
            "[batch, pos] (and pass key_padding_mask to mark the padding)"
        ) from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens: a Python list that is not all integer token ids (numpy reads it as "
                         f"{array.dtype}); pass an int array [batch, pos]")
    return array


@functools.lru_cache(maxsize=None)
def _param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return {name: leaf.shape for name, leaf in flatten_params(params).items()}


def check_params(cfg: ModelConfig, params) -> None:
    """Raises ValueError unless `params` has exactly the parameters (names
    and shapes) of a model with config `cfg`, saying what differs."""
    want = _param_shapes(cfg)
    try:
        got = {name: np.shape(leaf) for name, leaf in flatten_params(params).items()}
    except (AttributeError, TypeError):
        raise TypeError(f"params must be the nested dict of init_params, got {type(params).__name__}") from None
    if got == want:
        return
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [f"{n} {got[n]} (config needs {want[n]})" for n in sorted(set(got) & set(want)) if got[n] != want[n]]
    parts = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
    parts += [f"wrong shapes: {', '.join(wrong)}"] * bool(wrong)
    message = "params do not fit this model config: " + "; ".join(parts)
    ln = lambda names: names and all(n.split(".")[-2].startswith("ln") for n in names)
    if ln(missing) and not extra and not wrong:
        message += (f". The config has normalization_type={cfg.normalization_type!r} but the params have no LayerNorm "
                    "weights: params from toymech.weights.process_weights go with the config it returned "
                    "(cfg, params = process_weights(cfg, params))")
    elif ln(extra) and not missing and not wrong:
        message += (f". The config has normalization_type={cfg.normalization_type!r} but the params have LayerNorm "
                    "weights: use the config these params were made with")
    raise ValueError(message)


def _traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _checked(cfg, params, tokens, intervention, capture, key_padding_mask, output_positions, check_values,
             batched=False):
    """The checks of `apply` and its siblings: (tokens, capture, positions) to run with."""
    tokens = check_inputs(cfg, tokens, intervention, key_padding_mask, check_values=check_values, batched=batched)
    check_params(cfg, params)
    capture = _resolve_capture(cfg, capture)
    positions = _resolve_positions(cfg, output_positions, np.shape(tokens), _used_sites(intervention, capture))
    _check_split_inputs(cfg, intervention, capture)
    return tokens, capture, positions


def _check_split_inputs(cfg: ModelConfig, intervention, capture) -> None:
    """Refuses ln1's sites in a layer whose split inputs are edited: ln1 then runs
    per head on each input (TransformerLens hooks it three times there)."""
    if intervention is None or cfg.normalization_type is None:
        return
    for layer in range(cfg.n_layers):
        edited = sorted(set(split_input_sites(layer)) & set(intervention.sites))
        ln1 = sorted({f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.ln1.hook_normalized"}
                     & set(_used_sites(intervention, capture)))
        if edited and ln1:
            raise ValueError(f"{ln1} cannot be captured or edited in the same call as an edit of {edited}: with "
                             "edited split inputs ln1 is applied per head to each of them; capture ln1 in another call")


def _used_sites(intervention, capture) -> tuple[str, ...]:
    return tuple(capture) + (tuple(intervention.sites) if isinstance(intervention, iv.Intervention) else ())


def apply(cfg: ModelConfig, params: dict, tokens, *, intervention=None, capture=(), key_padding_mask=None,
          output_positions=None):
    """Runs the model: returns (logits [batch, pos, d_vocab_out], cache).

    The cache (`toymech.cache.ActivationCache`) maps the captured site names
    to their activations, in forward order; it also takes short keys
    (`cache["pattern", 0]`) and is a pytree.

    Args:
      cfg, params: the model.
      tokens: int [batch, pos], values in [0, d_vocab), pos <= n_ctx (checked).
      intervention: a `toymech.interventions.Intervention`, or None.
      capture: site names to return (see `toymech.site_names(cfg)`), "all", or a
        names filter (a function site name -> bool, as TransformerLens's names_filter).
      key_padding_mask: bool [batch, pos], True for real tokens; padded keys
        get zero attention (in causal and bidirectional models).
      output_positions: compute logits only at these positions (exact there):
        an int or a sequence of ints (negative counts from the end), the same
        for every row, or an int array [batch, k] of per-row positions (e.g. each
        row's last real token). Logits are then [batch, k, d_vocab_out]. The
        last block's queries and everything after them are computed at those
        positions only, so their sites (`position_restricted_sites(cfg)`) cannot
        be captured or edited in the same call. None: every position.
    The call is jitted (compiled once per config, capture set, fixed output
    positions and input shapes) and may itself be used inside jit/vmap/grad;
    token values are only checked when they are concrete (use `apply_unchecked`
    to skip).
    """
    tokens, capture, positions = _checked(cfg, params, tokens, intervention, capture, key_padding_mask,
                                          output_positions, check_values=True)
    return _forward_jit(cfg, params, tokens, intervention, capture, key_padding_mask, *positions)


def apply_unchecked(cfg: ModelConfig, params: dict, tokens, *, intervention=None, capture=(), key_padding_mask=None,
                    output_positions=None):
    """`apply` without the token-value check, for hot loops over validated data."""
    tokens, capture, positions = _checked(cfg, params, tokens, intervention, capture, key_padding_mask,
                                          output_positions, check_values=False)
    return _forward_jit(cfg, params, tokens, intervention, capture, key_padding_mask, *positions)


def apply_batched(cfg: ModelConfig, params: dict, tokens, intervention, *, capture=(), key_padding_mask=None,
                  output_positions=None):
    """Runs the model once per intervention of a stacked batch, in one jitted,
    vmapped call: returns logits [n, batch, pos, d_vocab_out] (pos: the
    `output_positions` when given, as in `apply`) and activations with the same
    leading axis n (see `toymech.interventions.stack`)."""
    tokens, capture, positions = _checked(cfg, params, tokens, intervention, capture, key_padding_mask,
                                          output_positions, check_values=True, batched=True)
    return _forward_batched(cfg, params, tokens, intervention, capture, key_padding_mask, *positions)

"""Residual-stream attribution: decompositions, LayerNorm scaling, direct
logit attribution (per component and per path), logit differences.

Everything works on a forward pass's captured activations (`acts`, from
`tm.apply(..., capture=capture_sites(cfg))`) and follows TransformerLens's
`ActivationCache` methods of the same names, as pure functions:

* `decompose_resid`: the residual stream entering a layer as a stack of the
  components that wrote it -- embed, pos_embed, each layer's attention
  output (or each head's result plus the summed b_O) and each MLP output.
  The components sum to the residual stream exactly.
* `stack_head_results`, `accumulated_resid`: every head's result; the
  residual stream before each layer (logit-lens style).
* `apply_ln_to_stack`: what each component contributes to a LayerNorm's
  output: centre it and divide by the scale the LayerNorm actually used
  (captured at `*.hook_scale`). The LN is linear once its scale is fixed,
  so the scaled components still sum to the normalised residual.
* `direct_logit_attribution`: each component's contribution to the logits
  (all of them, or the direction of given tokens, or correct minus
  incorrect): the final-LN-scaled stack times W_U (times ln_final.w in an
  'LN' model). Summed over a complete decomposition it gives the logits
  minus the constant ln_final.b @ W_U + b_U.
* `path_stack`: the contribution of each component of a layer's input
  through each head of that layer -- for query position q,
  sum_k pattern[h, q, k] * LN1(c[k]) @ W_V[h] @ W_O[h] -- as a stack that
  `direct_logit_attribution` attributes (study 4's "layer-0 component ->
  layer-1 head" DLA). LN1 uses the captured scale (the standard linear
  approximation, exact for the sum); biases (ln1.b, b_V) are not paths.
* `logit_diff`: logit of one token minus another.

A stack is a `ResidStack`: an array [component, batch, pos, d_model] and
its component labels (TransformerLens's: 'embed', 'pos_embed', 'L0H1',
'0_attn_out', '1_mlp_out', '0_pre', 'final_post', ...).

Einsum letters: n component, b batch, p/q/k positions, h head, d d_model,
e d_head, v vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from toymech.config import ModelConfig
from toymech.sites import site_names

Array = jax.Array


@struct.dataclass
class ResidStack:
    """Components of the residual stream: stack [n, batch, pos, d_model] and
    one label per component (static). Indexable by label: `rs["L1H0"]`."""

    stack: Array
    labels: tuple[str, ...] = struct.field(pytree_node=False)

    def __getitem__(self, label: str) -> Array:
        if label not in self.labels:
            raise KeyError(f"no component {label!r}; components are {list(self.labels)}")
        return self.stack[self.labels.index(label)]

    def __len__(self) -> int:
        return len(self.labels)


def capture_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """The sites every function here may read, in forward order: pass as
    `tm.apply(..., capture=capture_sites(cfg))`."""
    wanted = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
              "hook_attn_out", "hook_mlp_out", "attn.hook_result", "attn.hook_pattern", "hook_scale")
    return tuple(s for s in site_names(cfg) if s.endswith(wanted))


def _act(acts: dict, site: str, what: str) -> Array:
    if site not in acts:
        raise ValueError(
            f"{what} needs the activation {site!r}, which was not captured; run the model with "
            "capture=toymech.analysis.attribution.capture_sites(cfg)"
        )
    return acts[site]


def _layer(cfg: ModelConfig, layer: int | None, what: str) -> int:
    """None / -1 -> n_layers (the unembedding); checks 0 <= layer <= n_layers."""
    if layer is None or layer == -1:
        return cfg.n_layers
    if not 0 <= layer <= cfg.n_layers:
        raise ValueError(f"{what}: layer must be in [0, {cfg.n_layers}] (or -1/None), got {layer}")
    return layer


def _check_mlp_input(cfg: ModelConfig, layer: int, mlp_input: bool, what: str) -> None:
    if mlp_input and (layer == cfg.n_layers or cfg.attn_only):
        raise ValueError(
            f"{what}: mlp_input=True needs a layer with an MLP (layer < n_layers={cfg.n_layers} "
            f"in a model with MLPs), got layer {layer}" + (" in an attention-only model" if cfg.attn_only else "")
        )


def stack_head_results(cfg: ModelConfig, acts: dict, layer: int | None = None) -> ResidStack:
    """Every head's result (hook_result) in layers before `layer` (None: all):
    [layer * n_heads, batch, pos, d_model], labels 'L{l}H{h}'."""
    layer = _layer(cfg, layer, "stack_head_results")
    parts = [jnp.moveaxis(_act(acts, f"blocks.{l}.attn.hook_result", "stack_head_results"), 2, 0)
             for l in range(layer)]  # each [h, b, p, d]
    if not parts:
        embed = _act(acts, "hook_embed", "stack_head_results")
        return ResidStack(jnp.zeros((0,) + embed.shape, embed.dtype), ())
    labels = tuple(f"L{l}H{h}" for l in range(layer) for h in range(cfg.n_heads))
    return ResidStack(jnp.concatenate(parts), labels)


def decompose_resid(cfg: ModelConfig, params: dict, acts: dict, layer: int | None = None, *,
                    mlp_input: bool = False, by_head: bool = False, incl_embeds: bool = True) -> ResidStack:
    """The residual stream entering `layer` (None: the final residual, before
    ln_final) as a stack [n, batch, pos, d_model] of what wrote it.

    Components, in forward order: 'embed', 'pos_embed' (if incl_embeds);
    per layer l < `layer`: '{l}_attn_out' -- or, with by_head, each head's
    'L{l}H{h}' -- and '{l}_mlp_out'; with mlp_input, also layer `layer`'s
    attention (the stack then sums to hook_resid_mid, the MLP's input). With
    by_head, a last component 'b_O' holds the attention output biases of the
    included layers, so the stack still sums to the residual stream exactly.
    `params` is only read for b_O.
    """
    layer = _layer(cfg, layer, "decompose_resid")
    _check_mlp_input(cfg, layer, mlp_input, "decompose_resid")
    n_attn = layer + int(mlp_input)
    parts, labels = [], []
    if incl_embeds:
        for site, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
            parts.append(_act(acts, site, "decompose_resid")[None])
            labels.append(label)
    heads = stack_head_results(cfg, acts, n_attn) if by_head else None
    for l in range(n_attn):
        if by_head:
            parts.append(heads.stack[l * cfg.n_heads:(l + 1) * cfg.n_heads])
            labels += heads.labels[l * cfg.n_heads:(l + 1) * cfg.n_heads]
        else:
            parts.append(_act(acts, f"blocks.{l}.hook_attn_out", "decompose_resid")[None])
            labels.append(f"{l}_attn_out")
        if l < layer and not cfg.attn_only:
            parts.append(_act(acts, f"blocks.{l}.hook_mlp_out", "decompose_resid")[None])
            labels.append(f"{l}_mlp_out")
    if by_head and n_attn:
        b_O = sum(params[f"blocks_{l}"]["attn"]["b_O"] for l in range(n_attn))  # [d]
        parts.append(jnp.broadcast_to(b_O, (1,) + parts[-1].shape[1:]))
        labels.append("b_O")
    if not parts:
        raise ValueError("decompose_resid: nothing to decompose (layer 0 without embeddings)")
    return ResidStack(jnp.concatenate(parts), tuple(labels))


def accumulated_resid(cfg: ModelConfig, acts: dict, layer: int | None = None, *,
                      incl_mid: bool = False, mlp_input: bool = False) -> ResidStack:
    """The residual stream at the input of each layer up to `layer` (None:
    also the final one): [n, batch, pos, d_model], labels '{l}_pre', with
    '{l}_mid' after each earlier layer's attention if incl_mid (and for
    `layer` itself if mlp_input), and 'final_post' for layer n_layers."""
    layer = _layer(cfg, layer, "accumulated_resid")
    _check_mlp_input(cfg, layer, mlp_input, "accumulated_resid")
    if incl_mid and cfg.attn_only:
        raise ValueError("accumulated_resid: incl_mid needs a model with MLPs (attention-only has no resid_mid)")
    parts, labels = [], []
    for l in range(layer + 1):
        if l == cfg.n_layers:
            parts.append(_act(acts, f"blocks.{l - 1}.hook_resid_post", "accumulated_resid"))
            labels.append("final_post")
            continue
        parts.append(_act(acts, f"blocks.{l}.hook_resid_pre", "accumulated_resid"))
        labels.append(f"{l}_pre")
        if (incl_mid and l < layer) or (mlp_input and l == layer):
            parts.append(_act(acts, f"blocks.{l}.hook_resid_mid", "accumulated_resid"))
            labels.append(f"{l}_mid")
    return ResidStack(jnp.stack(parts), tuple(labels))


def _scale_site(cfg: ModelConfig, layer: int, mlp_input: bool) -> str:
    if layer == cfg.n_layers:
        return "ln_final.hook_scale"
    return f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"


def apply_ln_to_stack(cfg: ModelConfig, acts: dict, stack, layer: int | None = None, *, mlp_input: bool = False):
    """Each component's contribution to the normalised input of `layer`
    (None: ln_final, before the unembedding; mlp_input: ln2 instead of ln1).

    stack: a ResidStack or an array [..., batch, pos, d_model] aligned with
    the captured activations. With LN / LNPre, each component is centred and
    divided by the captured scale [batch, pos, 1] (as TransformerLens's
    `apply_ln_to_stack`; the LN weight and bias are not applied); without
    normalisation the stack is returned unchanged. Returns the same type.
    """
    layer = _layer(cfg, layer, "apply_ln_to_stack")
    _check_mlp_input(cfg, layer, mlp_input, "apply_ln_to_stack")
    if cfg.normalization_type is None:
        return stack
    x = stack.stack if isinstance(stack, ResidStack) else jnp.asarray(stack)
    scale = _act(acts, _scale_site(cfg, layer, mlp_input), "apply_ln_to_stack")  # [b, p, 1]
    if x.shape[-3:-1] != scale.shape[:2] or x.shape[-1] != cfg.d_model:
        raise ValueError(
            f"apply_ln_to_stack: stack of shape {x.shape} does not end in [batch, pos, d_model] = "
            f"{scale.shape[:2] + (cfg.d_model,)} like the captured activations"
        )
    x = (x - x.mean(-1, keepdims=True)) / scale
    return ResidStack(x, stack.labels) if isinstance(stack, ResidStack) else x


def _unembed(cfg: ModelConfig, params: dict) -> Array:
    """W_U with the final LN weight folded in: [d_model, d_vocab_out]."""
    W_U = params["unembed"]["W_U"]
    if cfg.normalization_type == "LN":
        W_U = params["ln_final"]["w"][:, None] * W_U
    return W_U


def check_token_ids(tokens, n: int, what: str) -> Array:
    """`tokens` as an int array, checked (when concrete) to lie in [0, n); ValueError naming `what`."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{what} must be integer token ids, got dtype {tokens.dtype}")
    if not isinstance(tokens, jax.core.Tracer):
        bad = (np.asarray(tokens) < 0) | (np.asarray(tokens) >= n)
        if bad.any():
            raise ValueError(f"{what} holds {int(bad.sum())} ids outside [0, {n}), e.g. "
                             f"{np.asarray(tokens)[bad][0]}")
    return tokens


def logit_directions(cfg: ModelConfig, params: dict, tokens, incorrect_tokens=None) -> Array:
    """Residual directions [..., d_model] whose dot product with the final
    normalised residual gives the logit of `tokens` [...] (minus that of
    `incorrect_tokens`, if given): columns of W_U, times ln_final.w in an
    'LN' model."""
    W_U = _unembed(cfg, params)
    directions = W_U.T[check_token_ids(tokens, cfg.d_vocab_out, "tokens")]
    if incorrect_tokens is not None:
        directions = directions - W_U.T[check_token_ids(incorrect_tokens, cfg.d_vocab_out, "incorrect_tokens")]
    return directions


def direct_logit_attribution(cfg: ModelConfig, params: dict, acts: dict, stack, tokens=None,
                             incorrect_tokens=None) -> Array:
    """Direct logit attribution of each component of `stack` (a ResidStack
    or array [n, batch, pos, d_model] of contributions to the final residual).

    Without tokens: [n, batch, pos, d_vocab_out], each component's
    contribution to every logit. With tokens [batch, pos] (e.g. the correct
    next tokens; anything broadcastable): [n, batch, pos], the contribution
    to those tokens' logits, minus `incorrect_tokens`' if given (the logit
    difference). The final LN is applied with its captured scale; summed over
    a complete decomposition the attributions equal the logits minus
    ln_final.b @ W_U + b_U.
    """
    x = apply_ln_to_stack(cfg, acts, stack)
    x = x.stack if isinstance(x, ResidStack) else jnp.asarray(x)
    if tokens is None:
        if incorrect_tokens is not None:
            raise ValueError("direct_logit_attribution: incorrect_tokens needs tokens")
        return jnp.einsum("nbpd,dv->nbpv", x, _unembed(cfg, params))
    directions = logit_directions(cfg, params, tokens, incorrect_tokens)  # [b, p, d]
    directions = jnp.broadcast_to(directions, x.shape[1:])
    return jnp.einsum("nbpd,bpd->nbp", x, directions)


def path_stack(cfg: ModelConfig, params: dict, acts: dict, source, layer: int) -> ResidStack:
    """What each component of `layer`'s input writes through each head of
    `layer`, as contributions to the residual stream.

    source: a ResidStack [n, batch, pos, d_model] of components of the
      residual stream entering `layer` (e.g. `decompose_resid(cfg, params,
      acts, layer, by_head=True)`).
    Returns [n * n_heads, batch, pos, d_model] (source-major), labels
    '{source}->L{layer}H{h}': for query position q,
      sum_k pattern[b, h, q, k] * LN1(c[b, k]) @ W_V[h] @ W_O[h],
    with LN1 the centring and captured ln1 scale (and ln1.w in an 'LN'
    model). Summed over a complete source decomposition, path h plus the bias
    path (ln1.b @ W_V[h] + b_V[h]) @ W_O[h] equals head h's hook_result. Feed
    it to `direct_logit_attribution` for the per-path DLA.
    """
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"path_stack: layer must be in [0, {cfg.n_layers}), got {layer}")
    if not isinstance(source, ResidStack):
        raise TypeError(f"path_stack: source must be a ResidStack (with labels), got {type(source).__name__}")
    x = apply_ln_to_stack(cfg, acts, source.stack, layer)  # [n, b, k, d]
    attn = params[f"blocks_{layer}"]["attn"]
    if cfg.normalization_type == "LN":
        x = x * params[f"blocks_{layer}"]["ln1"]["w"]
    pattern = _act(acts, f"blocks.{layer}.attn.hook_pattern", "path_stack")  # [b, h, q, k]
    v = jnp.einsum("nbkd,hde->nbkhe", x, attn["W_V"])
    z = jnp.einsum("bhqk,nbkhe->nbqhe", pattern, v)
    out = jnp.einsum("nbqhe,hed->nhbqd", z, attn["W_O"])  # [n, h, b, q, d]
    labels = tuple(f"{s}->L{layer}H{h}" for s in source.labels for h in range(cfg.n_heads))
    return ResidStack(out.reshape((-1,) + out.shape[2:]), labels)


def logit_diff(logits, correct, incorrect) -> Array:
    """logits[..., correct] - logits[..., incorrect] for logits [..., vocab]
    and int ids broadcastable to logits.shape[:-1]: [...]."""
    logits = jnp.asarray(logits)
    shape, n = logits.shape[:-1], logits.shape[-1]
    ids = [jnp.broadcast_to(check_token_ids(t, n, what), shape)[..., None]
           for t, what in ((correct, "correct"), (incorrect, "incorrect"))]
    pick = lambda i: jnp.take_along_axis(logits, i, -1, mode="fill", fill_value=jnp.nan)[..., 0]
    return pick(ids[0]) - pick(ids[1])  # ids past the vocabulary (only possible under jit) give NaN

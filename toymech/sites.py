"""Activation sites: their TransformerLens names, their axes, and `get_act_name`.

A *site* is a named point in the forward pass where an activation can be
captured or intervened on. toymech uses TransformerLens's hook names
(`hook_embed`, `blocks.0.attn.hook_pattern`, `blocks.1.hook_resid_post`, ...)
so a TransformerLens user can read a toymech run without a dictionary.

Every site has a layout that says which axis is which, so that interventions
can restrict themselves to positions, heads or features:

  'resid'   [batch, pos, d]            residual-stream-like sites (d may be
                                       d_model, d_mlp, or 1 for ln hook_scale)
  'head'    [batch, pos, head, d]      per-head sites (q, k, v, z, result)
  'pattern' [batch, head, q_pos, k_pos] attention scores and pattern; the
                                       "pos" of a mask is the query position and
                                       the "feature" is the key position
  'tokens'  [batch, pos]               hook_tokens, the input token ids (capture only)

Like TransformerLens's `use_attn_result` / `use_hook_tokens` / `use_attn_in` /
`use_split_qkv_input` / `use_hook_mlp_in` options, `attn.hook_result`, `hook_tokens`
and the split-input sites `hook_attn_in`, `hook_q_input`, `hook_k_input`,
`hook_v_input` ([batch, pos, head, d_model], before ln1) and `hook_mlp_in`
(before ln2) cost nothing unless captured (or edited);
`unembed.hook_in` is the final residual stream as the unembedding reads it.
"""

from __future__ import annotations

import re

from toymech.config import ModelConfig

# Which axis of a site's activation each mask kind indexes, per layout.
AXES = {
    "resid": {"pos": 1, "feature": 2},
    "head": {"pos": 1, "head": 2, "feature": 3},
    "pattern": {"head": 1, "pos": 2, "feature": 3},
    "tokens": {"pos": 1},
}

_HEAD_SITES = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result",
               "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")
_PATTERN_SITES = ("hook_attn_scores", "hook_pattern")
# Per-head sites whose last axis is d_model (the rest have d_head).
_HEAD_RESID_SITES = ("hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def _ln_sites(prefix: str, cfg: ModelConfig) -> list[str]:
    if cfg.normalization_type is None:
        return []
    return [f"{prefix}.hook_scale", f"{prefix}.hook_normalized"]


def split_input_sites(layer: int) -> tuple[str, ...]:
    """Layer `layer`'s split-input sites: hook_attn_in, then hook_q_input, hook_k_input, hook_v_input."""
    return tuple(f"blocks.{layer}.hook_{name}" for name in ("attn_in", "q_input", "k_input", "v_input"))


def site_names(cfg: ModelConfig) -> tuple[str, ...]:
    """Every site of a model with this config, in forward-pass order."""
    names = ["hook_tokens", "hook_embed", "hook_pos_embed"]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        names.append(f"{b}.hook_resid_pre")
        names += split_input_sites(layer)
        names += _ln_sites(f"{b}.ln1", cfg)
        names += [f"{b}.attn.{h}" for h in ("hook_q", "hook_k", "hook_v")]
        names += [f"{b}.attn.{h}" for h in _PATTERN_SITES]
        names += [f"{b}.attn.hook_z", f"{b}.attn.hook_result", f"{b}.hook_attn_out"]
        if not cfg.attn_only:
            names += [f"{b}.hook_resid_mid", f"{b}.hook_mlp_in"]
            names += _ln_sites(f"{b}.ln2", cfg)
            names += [f"{b}.mlp.hook_pre", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out"]
        names.append(f"{b}.hook_resid_post")
    names += _ln_sites("ln_final", cfg)
    names.append("unembed.hook_in")
    return tuple(names)


def site_layout(name: str) -> str:
    """The layout ('resid', 'head', 'pattern' or 'tokens') of the site called `name`."""
    if name == "hook_tokens":
        return "tokens"
    last = name.rsplit(".", 1)[-1]
    if last in _HEAD_SITES:
        return "head"
    if last in _PATTERN_SITES:
        return "pattern"
    return "resid"


_AXIS_WORDS = {
    "resid": {"pos": "position", "feature": "feature (last)"},
    "head": {"pos": "position", "head": "head", "feature": "feature (last)"},
    "pattern": {"pos": "query position", "head": "head", "feature": "key position"},
    "tokens": {"pos": "position"},
}


def axis_word(layout: str, kind: str) -> str:
    """What a `kind` mask ('pos', 'head', 'feature') indexes at a site of
    `layout`, in words: 'position', 'query position', 'key position', ..."""
    return _AXIS_WORDS[layout][kind]


def site_shape(cfg: ModelConfig, name: str, batch: int, n_pos: int) -> tuple[int, ...]:
    """The shape of site `name`'s activation in a forward pass over tokens
    [batch, n_pos] (a site of `cfg`, see `check_sites`)."""
    last = name.rsplit(".", 1)[-1]
    layout = site_layout(name)
    if name == "hook_tokens":
        return (batch, n_pos)
    if layout == "pattern":
        return (batch, cfg.n_heads, n_pos, n_pos)
    if layout == "head":
        return (batch, n_pos, cfg.n_heads, cfg.d_model if last in _HEAD_RESID_SITES else cfg.d_head)
    if last == "hook_scale":
        return (batch, n_pos, 1)
    if name.startswith("blocks.") and ".mlp." in name:
        return (batch, n_pos, cfg.d_mlp)
    return (batch, n_pos, cfg.d_model)


def check_sites(cfg: ModelConfig, names, what: str = "site") -> None:
    """Raises ValueError naming any of `names` that is not a site of `cfg`."""
    valid = site_names(cfg)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(
            f"unknown {what} name(s) {unknown} for this model config. Valid sites are:\n  "
            + "\n  ".join(valid)
        )


_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}
_ATTN_NAMES = ("q", "k", "v", "z", "result", "pattern", "attn_scores")
_MLP_NAMES = ("pre", "post")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Expands a short activation name into a full site name, like TransformerLens.

    get_act_name("pattern", 0)          -> "blocks.0.attn.hook_pattern"
    get_act_name("resid_post", 1)       -> "blocks.1.hook_resid_post"
    get_act_name("pre", 0)              -> "blocks.0.mlp.hook_pre"
    get_act_name("scale", 0, "ln1")     -> "blocks.0.ln1.hook_scale"
    get_act_name("normalized")          -> "ln_final.hook_normalized"
    get_act_name("k6")                  -> "blocks.6.attn.hook_k"
    A full name ("hook_embed", "blocks.0.hook_attn_out") is returned unchanged.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)
    if match is not None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3)
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    else:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    full = f"blocks.{layer}." if layer is not None else ""
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full

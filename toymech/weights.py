"""Weight processing with TransformerLens's semantics, as pure functions.

Each function maps `(cfg, params) -> (cfg, params)` (only `fold_layer_norm`
changes the config: 'LN' becomes 'LNPre') and leaves its inputs untouched. They
are the reparametrisations TransformerLens applies in
`HookedTransformer.from_pretrained` / `process_weights_`, and each preserves
what its docstring says, up to float rounding:

| function                          | logits                  | log-probs | activations it changes            |
|-----------------------------------|-------------------------|-----------|-----------------------------------|
| fold_layer_norm (LN only)         | exact                   | exact     | ln*.hook_normalized               |
| center_writing_weights (LN/LNPre) | exact                   | exact     | residual stream, attn/mlp outputs |
| center_unembed                    | + constant per position | exact     | none (only the logits)            |
| fold_value_biases                 | exact                   | exact     | hook_v, hook_z, hook_result       |
| refactor_factored_attn_matrices   | exact                   | exact     | hook_q/k/v/z, hook_result         |

`process_weights` applies the usual combination in TransformerLens's order.
`zero_weights` (params -> params) zeroes named weights, e.g. for the weight
ablations of study 2.
All functions use jnp only, so they also run under jit (with `cfg` static) or
vmap (over a stack of models).

Einsum letters: h head, d d_model, e d_head, m d_mlp, v vocabulary.
"""

from __future__ import annotations

import jax.numpy as jnp

from toymech.config import ModelConfig
from toymech.params import flatten_params, unflatten_params


def _blocks(cfg: ModelConfig):
    """Names of the block parameter groups, in layer order."""
    return [f"blocks_{layer}" for layer in range(cfg.n_layers)]


def _center(x, axis):
    return x - x.mean(axis=axis, keepdims=True)


def _factored_svd(a, b):
    """SVD of the product a @ b ([..., l, r] of rank <= e) from its factors
    a [..., l, e] and b [..., e, r], without forming it: returns U [..., l, e],
    S [..., e], V [..., r, e] with a @ b == U @ diag(S) @ V^T."""
    u_a, s_a, vh_a = jnp.linalg.svd(a, full_matrices=False)  # [.., l, e], [.., e], [.., e, e]
    u_b, s_b, vh_b = jnp.linalg.svd(b, full_matrices=False)  # [.., e, e], [.., e], [.., e, r]
    middle = s_a[..., :, None] * (vh_a @ u_b) * s_b[..., None, :]  # [.., e, e]
    u_m, s_m, vh_m = jnp.linalg.svd(middle, full_matrices=False)
    return u_a @ u_m, s_m, jnp.swapaxes(vh_m @ vh_b, -1, -2)


def fold_layer_norm(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Folds each LayerNorm's weight and bias into the layer that reads it.

    ln1 goes into W_Q/W_K/W_V and b_Q/b_K/b_V, ln2 into W_in and b_in,
    ln_final into W_U and b_U (b += W^T ln.b, then W *= ln.w); the reading
    weights are then centered along d_model, which changes nothing as the
    normalized input has zero mean. What is left of each LayerNorm is the
    parameter-free LNPre (center and scale), so the returned config has
    normalization_type 'LNPre' and the params no ln1/ln2/ln_final.
    Preserves: logits and every activation except `ln*.hook_normalized`
    exactly. Needs normalization_type 'LN'.
    """
    if cfg.normalization_type != "LN":
        raise ValueError(f"fold_layer_norm needs normalization_type 'LN', got {cfg.normalization_type!r}")
    params = dict(params)
    for block in _blocks(cfg):
        group = dict(params[block])
        ln1 = group.pop("ln1")
        attn = dict(group["attn"])
        for x in "QKV":
            W = attn[f"W_{x}"]  # [h, d, e]
            attn[f"b_{x}"] = attn[f"b_{x}"] + jnp.einsum("hde,d->he", W, ln1["b"])
            attn[f"W_{x}"] = _center(W * ln1["w"][None, :, None], axis=1)
        group["attn"] = attn
        if not cfg.attn_only:
            ln2 = group.pop("ln2")
            mlp = dict(group["mlp"])
            mlp["b_in"] = mlp["b_in"] + jnp.einsum("dm,d->m", mlp["W_in"], ln2["b"])
            mlp["W_in"] = _center(mlp["W_in"] * ln2["w"][:, None], axis=0)  # [d, m]
            group["mlp"] = mlp
        params[block] = group
    ln_final = params.pop("ln_final")
    W_U = params["unembed"]["W_U"]  # [d, v]
    params["unembed"] = {
        "W_U": _center(W_U * ln_final["w"][:, None], axis=0),
        "b_U": params["unembed"]["b_U"] + jnp.einsum("dv,d->v", W_U, ln_final["b"]),
    }
    return cfg.replace(normalization_type="LNPre"), params


def center_writing_weights(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Centers, along d_model, every weight and bias that writes to the residual
    stream: W_E, W_pos, W_O, b_O, W_out, b_out.

    This removes the component along the all-ones direction from everything
    added to the residual stream; every reader of the stream (ln1, ln2,
    ln_final) subtracts the mean first, so nothing downstream sees it.
    Preserves: logits exactly; changes the residual-stream activations and the
    attention/MLP outputs by their mean over d_model. Needs normalization_type
    'LN' or 'LNPre' (without it the mean is not removed and the model changes).
    """
    if cfg.normalization_type not in ("LN", "LNPre"):
        raise ValueError(
            f"center_writing_weights needs LayerNorm ('LN' or 'LNPre'), got {cfg.normalization_type!r}: "
            "without it the residual stream's mean reaches the logits"
        )
    params = dict(params)
    params["embed"] = {"W_E": _center(params["embed"]["W_E"], axis=-1)}
    params["pos_embed"] = {"W_pos": _center(params["pos_embed"]["W_pos"], axis=-1)}
    for block in _blocks(cfg):
        group = dict(params[block])
        attn = dict(group["attn"])
        attn["W_O"], attn["b_O"] = _center(attn["W_O"], axis=-1), _center(attn["b_O"], axis=-1)
        group["attn"] = attn
        if not cfg.attn_only:
            mlp = dict(group["mlp"])
            mlp["W_out"], mlp["b_out"] = _center(mlp["W_out"], axis=-1), _center(mlp["b_out"], axis=-1)
            group["mlp"] = mlp
        params[block] = group
    return cfg, params


def center_unembed(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Centers W_U and b_U along the vocabulary.

    Every logit at a position moves by the same amount (the mean logit), so
    softmax, log-probabilities and the loss are unchanged while the logits
    themselves shift by a per-position constant. Any config.
    """
    unembed = params["unembed"]
    return cfg, {
        **params,
        "unembed": {"W_U": _center(unembed["W_U"], axis=-1), "b_U": _center(unembed["b_U"], axis=-1)},
    }


def fold_value_biases(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Moves each layer's value biases into its output bias:
    b_O += sum_h b_V[h] @ W_O[h], b_V = 0.

    A head's output is pattern @ (x W_V + b_V) W_O, and as each attention
    pattern row sums to 1 the b_V term adds the constant b_V W_O at every
    position (that attends to any key: a query whose keys are all padding
    gets b_O alone before, b_O + b_V W_O after). Preserves: logits, the attention output and everything else
    exactly; changes hook_v, hook_z and hook_result (the per-head outputs no
    longer carry the bias, their sum plus b_O is the same). Any config.
    """
    params = dict(params)
    for block in _blocks(cfg):
        attn = dict(params[block]["attn"])
        attn["b_O"] = attn["b_O"] + jnp.einsum("he,hed->d", attn["b_V"], attn["W_O"])
        attn["b_V"] = jnp.zeros_like(attn["b_V"])
        params[block] = {**params[block], "attn": attn}
    return cfg, params


def refactor_factored_attn_matrices(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Re-factors each head's QK and OV circuits into "even" SVD factors.

    QK: with the biases appended as a last input row (an input that is always
    1), W_Q' W_K'^T = W_Q W_K^T where W_Q' = U sqrt(S) and W_K' = V sqrt(S)
    from the SVD U S V^T of the product, so the attention scores are kept.
    OV: the value biases are folded into b_O (`fold_value_biases`), then
    W_V' = U S and W_O' = V^T from the SVD of W_V W_O, so W_O' has orthonormal
    rows and |z| equals the head's output norm. Preserves: logits, attention
    scores and patterns exactly; changes hook_q/k/v/z and hook_result.
    Any config with standard positional embeddings.
    """
    cfg, params = fold_value_biases(cfg, params)
    params = dict(params)
    for block in _blocks(cfg):
        attn = dict(params[block]["attn"])
        q_eff = jnp.concatenate([attn["W_Q"], attn["b_Q"][:, None, :]], axis=1)  # [h, d+1, e]
        k_eff = jnp.concatenate([attn["W_K"], attn["b_K"][:, None, :]], axis=1)  # [h, d+1, e]
        u, s, v = _factored_svd(q_eff, jnp.swapaxes(k_eff, -1, -2))
        q_eff, k_eff = u * jnp.sqrt(s)[:, None, :], v * jnp.sqrt(s)[:, None, :]
        attn["W_Q"], attn["b_Q"] = q_eff[:, :-1], q_eff[:, -1]
        attn["W_K"], attn["b_K"] = k_eff[:, :-1], k_eff[:, -1]
        u, s, v = _factored_svd(attn["W_V"], attn["W_O"])  # [h, d, e], [h, e], [h, d, e]
        attn["W_V"], attn["W_O"] = u * s[:, None, :], jnp.swapaxes(v, -1, -2)
        params[block] = {**params[block], "attn": attn}
    return cfg, params


def process_weights(
    cfg: ModelConfig,
    params: dict,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> tuple[ModelConfig, dict]:
    """TransformerLens's weight processing (`load_and_process_state_dict`).

    Applies, in this order and as TransformerLens 3.x does: fold_layer_norm
    (only for 'LN' models), center_writing_weights (only for 'LN'/'LNPre'
    models, where it preserves the logits), center_unembed, fold_value_biases
    and, when asked, refactor_factored_attn_matrices. Steps a config cannot
    take are skipped as in TransformerLens (e.g. a model without LayerNorm is
    neither folded nor centered). Preserves log-probabilities exactly, and the
    logits up to a per-position constant (exactly without center_unembed).
    Returns the new (cfg, params).
    """
    if fold_ln and cfg.normalization_type == "LN":
        cfg, params = _STEPS["fold_ln"](cfg, params)
    if center_writing_weights and cfg.normalization_type in ("LN", "LNPre"):
        cfg, params = _STEPS["center_writing_weights"](cfg, params)
    if center_unembed:
        cfg, params = _STEPS["center_unembed"](cfg, params)
    # TransformerLens re-centers b_O after this step; with W_O and b_O already
    # centered, b_O + b_V W_O has zero mean, so there is nothing to re-center.
    if fold_value_biases:
        cfg, params = _STEPS["fold_value_biases"](cfg, params)
    if refactor_factored_attn_matrices:
        cfg, params = _STEPS["refactor_factored_attn_matrices"](cfg, params)
    return cfg, params


# process_weights' flags share the steps' names; it reaches the steps here.
_STEPS = {
    "fold_ln": fold_layer_norm,
    "center_writing_weights": center_writing_weights,
    "center_unembed": center_unembed,
    "fold_value_biases": fold_value_biases,
    "refactor_factored_attn_matrices": refactor_factored_attn_matrices,
}


_HEAD_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


def zero_weights(params, *names: str, head: int | None = None):
    """Returns params with the named weights (TransformerLens names, e.g.
    'blocks.0.mlp.W_out') set to zero; `head` restricts per-head weights
    (W_Q/W_K/W_V/W_O, b_Q/b_K/b_V) to that head's slice."""
    flat = dict(flatten_params(params))
    for name in names:
        if name not in flat:
            raise ValueError(f"zero_weights: no parameter named {name!r}; parameters are {sorted(flat)}")
        w = flat[name]
        if head is None:
            flat[name] = jnp.zeros_like(w)
        elif name.rsplit(".", 1)[-1] in _HEAD_WEIGHTS:
            flat[name] = w.at[head].set(0)
        else:
            raise ValueError(f"zero_weights: {name} has no head axis; drop head={head}")
    return unflatten_params(flat)

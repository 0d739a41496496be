"""The logit lens, next-token losses with TransformerLens's return types, and token names.

* `logit_lens`: what the model would predict if the residual stream stopped
  at each layer: the accumulated residual stream (`attribution.accumulated_resid`:
  each layer's input, optionally each resid_mid, and the final residual) through
  the final LayerNorm and the unembedding, per layer and position. The final
  LayerNorm is applied as TransformerLens's `accumulated_resid(apply_ln=True)`
  does (3.x): to each entry with its own statistics, weight and bias included.
  With `recompute_ln=False`, each entry is instead centred and divided by the
  scale the final LayerNorm used in this forward pass (TransformerLens's
  `apply_ln_to_stack` default; linear, so the lens of a sum of components is
  the sum of their lenses), then ln_final's weight and bias are applied.
  Either way the last entry is the model's logits.
* `next_token_loss`, `forward`: the cross-entropy of predicting token p + 1 from
  the logits at p, per token or averaged, as TransformerLens's
  `model(tokens, return_type="loss", loss_per_token=...)`.
* `token_names`: token ids as the strings of a task's vocabulary (TransformerLens's
  `to_str_tokens`, for models without a tokenizer; the tasks define their
  vocabularies, e.g. `toymech.tasks.reverse.VOCAB`).

Einsum letters: n lens entry, b batch, p position, d d_model, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toymech.analysis import attribution
from toymech.config import ModelConfig
from toymech.model import apply

RETURN_TYPES = ("logits", "loss", "both")


def lens_sites(cfg: ModelConfig, incl_mid: bool = False) -> tuple[str, ...]:
    """The sites `logit_lens` reads, in forward order: capture them with
    `tm.apply(..., capture=lens_sites(cfg, incl_mid))`."""
    names = [f"blocks.{l}.{h}" for l in range(cfg.n_layers)
             for h in ("hook_resid_pre",) + (("hook_resid_mid",) if incl_mid and not cfg.attn_only else ())]
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    return tuple(names) + (("ln_final.hook_scale",) if cfg.normalization_type else ())


def logit_lens(cfg: ModelConfig, params: dict, acts, *, incl_mid: bool = False,
               recompute_ln: bool = True) -> tuple[jax.Array, tuple[str, ...]]:
    """Logits read from the residual stream before each layer and after the last.

    acts: a forward pass's activations holding `lens_sites(cfg, incl_mid)`.
    Returns (logits [n, batch, pos, d_vocab_out], labels): n = n_layers + 1 entries
    '{l}_pre' and 'final_post' (with incl_mid, also '{l}_mid' after each layer's
    attention), in forward order. 'final_post' equals the model's logits.
    """
    resid = attribution.accumulated_resid(cfg, acts, None, incl_mid=incl_mid)  # [n, b, p, d]
    x = resid.stack
    if cfg.normalization_type is not None:
        if recompute_ln:
            x = x - x.mean(-1, keepdims=True)
            x = x / jnp.sqrt((x**2).mean(-1, keepdims=True) + cfg.eps)
        else:
            x = attribution.apply_ln_to_stack(cfg, acts, x)
        if cfg.normalization_type == "LN":
            x = x * params["ln_final"]["w"] + params["ln_final"]["b"]
    unembed = params["unembed"]
    return jnp.einsum("nbpd,dv->nbpv", x, unembed["W_U"]) + unembed["b_U"], resid.labels


def next_token_loss(logits, tokens, *, per_token: bool = False) -> jax.Array:
    """Cross-entropy of each next token: -log softmax(logits[:, p])[tokens[:, p + 1]].

    logits [batch, pos, d_vocab_out], tokens int [batch, pos] (values in [0, d_vocab_out),
    checked when concrete). Returns [batch, pos - 1] with per_token, else its mean.
    """
    logits, tokens = jnp.asarray(logits), jnp.asarray(tokens)
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(f"next_token_loss: logits must be [batch, pos, vocab] and tokens [batch, pos] of the same "
                         f"batch and pos, got {logits.shape} and {tokens.shape}")
    if logits.shape[1] < 2:
        raise ValueError(f"next_token_loss: needs at least 2 positions (one prediction), got {logits.shape[1]}")
    targets = attribution.check_token_ids(tokens[:, 1:], logits.shape[-1], "next_token_loss: tokens")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # [b, p - 1, v]
    loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [b, p - 1]
    return loss if per_token else loss.mean()


def forward(cfg: ModelConfig, params: dict, tokens, *, return_type: str = "logits", loss_per_token: bool = False,
            **apply_kwargs):
    """TransformerLens's `model(tokens, return_type=..., loss_per_token=...)`: the logits,
    the next-token loss (`next_token_loss`), or both as (logits, loss).

    `apply_kwargs` (intervention, key_padding_mask, ...) go to `toymech.apply`; for the
    captured activations, call `apply` itself.
    """
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
    if "capture" in apply_kwargs or "output_positions" in apply_kwargs:
        raise ValueError("forward returns logits and losses over every position: for captures or output_positions "
                         "call toymech.apply")
    logits, _ = apply(cfg, params, tokens, **apply_kwargs)
    if return_type == "logits":
        return logits
    loss = next_token_loss(logits, tokens, per_token=loss_per_token)
    return loss if return_type == "loss" else (logits, loss)


def token_names(vocab: Sequence[str], tokens) -> list:
    """The names of token ids: `vocab[t]` for each id in tokens (an int, or an array of
    any shape), as nested lists of the tokens' shape (a str for a single id).

    vocab: the names of the ids 0..len(vocab)-1 (a task's VOCAB). Raises ValueError for an
    id outside it or non-integer tokens."""
    ids = np.asarray(tokens)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_names: tokens must be integer ids, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= len(vocab))
    if bad.any():
        raise ValueError(f"token_names: id {ids[bad].flat[0]} is outside the vocabulary of {len(vocab)} tokens "
                         f"{tuple(vocab)}")
    names = np.asarray(vocab, dtype=object)[ids]
    return names.tolist() if isinstance(names, np.ndarray) else names

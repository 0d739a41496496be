"""Stacked weight views: TransformerLens's `model.W_Q`, `model.OV`, ... from params.

`weights(cfg, params)` returns a `StackedWeights` whose attributes stack each
layer's parameter along a leading layer axis, with TransformerLens's names
and shapes:

  W_Q, W_K, W_V  [n_layers, n_heads, d_model, d_head]   b_Q, b_K, b_V [L, H, e]
  W_O            [n_layers, n_heads, d_head, d_model]   b_O           [L, d]
  W_in           [n_layers, d_model, d_mlp]             b_in          [L, m]
  W_out          [n_layers, d_mlp, d_model]             b_out         [L, d]
  W_E [d_vocab, d_model], W_pos [n_ctx, d_model], W_U [d_model, d_vocab_out], b_U
  QK, OV         FactoredMatrix [n_layers, n_heads, d_model, d_model]
                 (`toymech.analysis.circuits.qk_circuit` / `ov_circuit` of each layer)

Each attribute is computed when read. As in TransformerLens, these are the
raw weights: in a model with LayerNorm they mean what they usually mean after
`toymech.weights.process_weights`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toymech.analysis import circuits
from toymech.config import ModelConfig

Array = jax.Array

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_MLP = ("W_in", "W_out", "b_in", "b_out")
_TABLES = {"W_E": ("embed", "W_E"), "W_pos": ("pos_embed", "W_pos"), "W_U": ("unembed", "W_U"),
           "b_U": ("unembed", "b_U")}


class StackedWeights:
    """A model's weights stacked over layers, by TransformerLens's names."""

    def __init__(self, cfg: ModelConfig, params: dict):
        self.cfg, self.params = cfg, params

    def __getattr__(self, name: str):
        cfg, params = self.__dict__["cfg"], self.__dict__["params"]
        layers = range(cfg.n_layers)
        if name in _ATTN:
            return jnp.stack([params[f"blocks_{l}"]["attn"][name] for l in layers])
        if name in _MLP:
            if cfg.attn_only:
                raise AttributeError(f"{name}: this model is attention-only (d_mlp=None) and has no MLP weights")
            return jnp.stack([params[f"blocks_{l}"]["mlp"][name] for l in layers])
        if name in _TABLES:
            module, param = _TABLES[name]
            return params[module][param]
        if name in ("QK", "OV"):
            per_layer = [(circuits.qk_circuit if name == "QK" else circuits.ov_circuit)(cfg, params, l) for l in layers]
            return circuits.FactoredMatrix(jnp.stack([m.A for m in per_layer]), jnp.stack([m.B for m in per_layer]))
        raise AttributeError(
            f"no stacked weight {name!r}; there are {list(_ATTN + _MLP + tuple(_TABLES))} and QK, OV"
        )

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_ATTN + _MLP + tuple(_TABLES)) | {"QK", "OV"})


def weights(cfg: ModelConfig, params: dict) -> StackedWeights:
    """The stacked weight views of a model (see the module docstring)."""
    return StackedWeights(cfg, params)

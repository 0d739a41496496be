"""toymech: mechanistic interpretability of small transformers in JAX/Flax.

The core surface:
  ModelConfig, init_params, apply, apply_batched, get_act_name, site_names,
  flatten_params, unflatten_params;
and its modules:
  interventions  ablate / patch / project out / add, as data (vmappable)
  interop        TransformerLens checkpoints in and out (no torch needed to read)
  weights        TransformerLens weight processing (fold LN, centre, fold biases)
  train          optax training in lax.scan, checkpoints, many seeds at once
  analysis       probes, fits, Fourier, attribution, sweeps, progress measures
"""

from toymech import analysis, compilation_cache, interop, interventions, train, weights
from toymech.config import ModelConfig
from toymech.model import (
    Transformer,
    apply,
    apply_batched,
    apply_unchecked,
    flatten_params,
    init_params,
    output_positions_for,
    position_restricted_sites,
    unflatten_params,
)
from toymech.sites import get_act_name, site_names

__all__ = [
    "ModelConfig",
    "Transformer",
    "apply",
    "apply_batched",
    "analysis",
    "apply_unchecked",
    "compilation_cache",
    "flatten_params",
    "get_act_name",
    "init_params",
    "interop",
    "interventions",
    "output_positions_for",
    "position_restricted_sites",
    "site_names",
    "train",
    "unflatten_params",
    "weights",
]

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

# Bottom-up, as the layers run (BUILD.md): the core first, then the modules built on it.
from toymech.config import ModelConfig
from toymech.sites import get_act_name, site_names
from toymech.params import flatten_params, unflatten_params
from toymech.model import (Transformer, apply, apply_batched, apply_unchecked, init_params, output_positions_for,
                           position_restricted_sites)
from toymech import interventions, weights, interop, train
from toymech import analysis

__all__ = [
    "ModelConfig",
    "Transformer",
    "apply",
    "apply_batched",
    "analysis",
    "apply_unchecked",
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

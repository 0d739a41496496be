"""toymech: mechanistic interpretability of small transformers in JAX/Flax.

The core surface:
  ModelConfig, init_params, apply, apply_batched, get_act_name, site_names,
  flatten_params, unflatten_params, and the `interventions` module.
"""

from toymech import interventions
from toymech.config import ModelConfig
from toymech.model import (
    Transformer,
    apply,
    apply_batched,
    apply_unchecked,
    flatten_params,
    init_params,
    unflatten_params,
)
from toymech.sites import get_act_name, site_names

__all__ = [
    "ModelConfig",
    "Transformer",
    "apply",
    "apply_batched",
    "apply_unchecked",
    "flatten_params",
    "get_act_name",
    "init_params",
    "interventions",
    "site_names",
    "unflatten_params",
]

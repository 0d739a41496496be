"""toymech: mechanistic interpretability of small transformers in JAX/Flax.

    import toymech as tm
    cfg = tm.ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512,
                         d_vocab=114, d_vocab_out=113, n_ctx=3, act_fn="relu")
    params = tm.init_params(cfg, jax.random.key(0))   # TransformerLens names and shapes
    logits, acts = tm.apply(cfg, params, tokens, intervention=tm.interventions.zero(
        "blocks.0.attn.hook_z", head=1), capture=("blocks.0.attn.hook_pattern",))

The core:
  ModelConfig      the validated config (a HookedTransformerConfig subset)
  init_params      parameters with TransformerLens's names/shapes
  apply            forward pass: (logits, {site: activation}); interventions and
                   captures are arguments (apply_batched: vmapped over a stack of
                   interventions; apply_unchecked: inside your own jit)
  get_act_name, site_names      TransformerLens activation-site names
  flatten_params, unflatten_params   nested params <-> 'blocks.0.attn.W_Q' names
  output_positions_for, position_restricted_sites   computing logits only where they are read
  generate, generate_batched   autoregressive sampling with a KV cache (greedy / temperature /
                   top-k), with an intervention or a stack of them (toymech.generation)
Modules:
  interventions  zero / mean / patch / project out / add / scale, as data (vmappable)
  weights        TransformerLens weight processing (fold LN, centre, fold biases), zero_weights
  interop        TransformerLens checkpoints in and out (no torch needed to read)
  train          optax training in lax.scan, checkpoints, many seeds at once
  analysis       probes, fits, Fourier, attribution, circuits, sweeps, progress measures,
                 the logit lens and next-token losses (analysis.lens)
  tasks, studies the four studies' tasks and their train-and-analyse pipelines
The Flax module itself is `toymech.model.Transformer`.
"""

# Bottom-up, as the layers run (BUILD.md): the core first, then the modules built on it.
from toymech.config import ModelConfig
from toymech.sites import get_act_name, site_names
from toymech.params import flatten_params, unflatten_params
from toymech.model import (Transformer, apply, apply_batched, apply_unchecked, init_params, output_positions_for,
                           position_restricted_sites)
from toymech.generation import generate, generate_batched
from toymech import interventions, weights, interop, train, compilation_cache
from toymech import analysis

__all__ = [
    # the core, in the order of a first session
    "ModelConfig",
    "init_params",
    "apply",
    "apply_batched",
    "apply_unchecked",
    "generate",
    "generate_batched",
    "get_act_name",
    "output_positions_for",
    "position_restricted_sites",
    "site_names",
    "flatten_params",
    "unflatten_params",
    # modules
    "interventions",
    "weights",
    "interop",
    "train",
    "compilation_cache",
    "analysis",
]

"""Parameter names: the nested Flax params pytree <-> TransformerLens's flat names.

`flatten_params` gives exactly the keys of a HookedTransformer state dict
(`'blocks.0.attn.W_Q'`, `'unembed.W_U'`, ...); `unflatten_params` is its
inverse. This module sits at the bottom of the package (it imports nothing
from toymech), so the model, weight processing, interop and training can all
name parameters the same way without importing one another.
"""

from __future__ import annotations

import jax


def flatten_params(params: dict) -> dict[str, jax.Array]:
    """{'blocks.0.attn.W_Q': array, ...}: the keys of a HookedTransformer state dict."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [p.key for p in path]
        if keys[0].startswith("blocks_"):
            keys[0] = "blocks." + keys[0][len("blocks_"):]
        flat[".".join(keys)] = leaf
    return flat


def unflatten_params(flat: dict) -> dict:
    """Inverse of `flatten_params`."""
    params: dict = {}
    for name, leaf in flat.items():
        keys = name.split(".")
        if keys[0] == "blocks":
            keys = [f"blocks_{keys[1]}"] + keys[2:]
        node = params
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return params

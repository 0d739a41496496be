"""ActivationCache: the activations a forward pass returns, as TransformerLens users know them.

`toymech.apply(..., capture=...)` returns `(logits, cache)`. The cache is a
read-only Mapping {site name: array}, so `cache[name]`, `name in cache`,
`cache.items()` and `dict(cache)` work as on a dict, and

* it keeps forward-pass order (`list(cache)` follows `toymech.site_names`);
* it takes TransformerLens's short keys: `cache["pattern", 0]`,
  `cache["resid_post", -1]` (negative layers count from the end),
  `cache["scale", 0, "ln1"]`, `cache["embed"]` (see `toymech.get_act_name`);
* it is a pytree (its arrays are the leaves, the config and site names are
  static), so it passes through `jit`, `vmap` and `jax.tree.map`;
* it offers TransformerLens's analysis methods -- `decompose_resid`,
  `accumulated_resid`, `stack_head_results`, `apply_ln_to_stack`,
  `logit_attrs` -- as thin calls of `toymech.analysis.attribution`, with
  the cache's config filled in. Those that read weights take `params`
  (a cache holds activations only, no model).

The cache of `apply_batched` has the runs' leading axis on every array; use
its methods on one run (`jax.tree.map(lambda a: a[i], cache)`) or under vmap.

Why here and not in `analysis/`: `model.py` builds the cache, and imports run
one way (analysis imports the model), so the class sits next to the model and
its methods import `toymech.analysis.attribution` when called.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

from toymech.config import ModelConfig
from toymech.sites import get_act_name, site_names


@jax.tree_util.register_pytree_node_class
class ActivationCache(Mapping):
    """{site name: activation} of one forward pass, in forward order."""

    def __init__(self, cfg: ModelConfig, acts: Mapping):
        self.cfg = cfg
        order = {name: i for i, name in enumerate(site_names(cfg))}
        self._acts = dict(sorted(acts.items(), key=lambda item: order.get(item[0], len(order))))

    # --- pytree ------------------------------------------------------------

    def tree_flatten(self):
        return tuple(self._acts.values()), (self.cfg, tuple(self._acts))

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        out = object.__new__(cls)  # leaves may be tracers or placeholders: no re-sorting
        out.cfg, names = aux
        out._acts = dict(zip(names, leaves))
        return out

    # --- mapping -----------------------------------------------------------

    def name(self, key) -> str:
        """The full site name of `key`: a full name, a short one ('embed'), or
        a tuple (name, layer[, layer_type]) as TransformerLens's cache takes."""
        if isinstance(key, str):
            return key if key in self._acts else get_act_name(key)
        if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
            raise KeyError(f"cache keys are site names or tuples (name, layer[, layer_type]), got {key!r}")
        name, *rest = key
        if rest and isinstance(rest[0], int) and rest[0] < 0:
            rest[0] += self.cfg.n_layers
        return get_act_name(name, *rest)

    def __getitem__(self, key):
        name = self.name(key)
        if name not in self._acts:
            raise KeyError(
                f"{name!r} is not in this cache" + (f" (from key {key!r})" if name != key else "")
                + f"; it holds {list(self._acts)}. Capture it with apply(..., capture=...)"
            )
        return self._acts[name]

    def __iter__(self):
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {getattr(a, 'shape', '?')}" for name, a in self._acts.items())
        return f"ActivationCache({shapes})"

    # --- TransformerLens's analysis methods (toymech.analysis.attribution) ---

    def stack_head_results(self, layer: int | None = None):
        """Every head's hook_result in layers before `layer`: a ResidStack."""
        from toymech.analysis import attribution

        return attribution.stack_head_results(self.cfg, self, layer)

    def decompose_resid(self, params: dict, layer: int | None = None, **kwargs):
        """The residual stream entering `layer` as the components that wrote it
        (see `toymech.analysis.attribution.decompose_resid` for the options)."""
        from toymech.analysis import attribution

        return attribution.decompose_resid(self.cfg, params, self, layer, **kwargs)

    def accumulated_resid(self, layer: int | None = None, **kwargs):
        """The residual stream at the input of each layer up to `layer`."""
        from toymech.analysis import attribution

        return attribution.accumulated_resid(self.cfg, self, layer, **kwargs)

    def apply_ln_to_stack(self, stack, layer: int | None = None, **kwargs):
        """Each component of `stack` through the LayerNorm before `layer`, with
        the scale this forward pass used."""
        from toymech.analysis import attribution

        return attribution.apply_ln_to_stack(self.cfg, self, stack, layer, **kwargs)

    def logit_attrs(self, params: dict, stack, tokens=None, incorrect_tokens=None):
        """Direct logit attribution of each component of `stack` (to `tokens`,
        minus `incorrect_tokens`), as TransformerLens's `logit_attrs`."""
        from toymech.analysis import attribution

        return attribution.direct_logit_attribution(self.cfg, params, self, stack, tokens, incorrect_tokens)

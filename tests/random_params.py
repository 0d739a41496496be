"""Random toymech params for tests, drawn with numpy (no XLA compilation).

Unlike a fresh `init_params`, every bias is non-zero and every LayerNorm weight
differs from one, so that tests exercise every parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm


def random_params(cfg: tm.ModelConfig, seed: int = 0) -> dict:
    """Weights ~ N(0, init_range), biases ~ N(0, 0.1), LayerNorm weights ~ 1 + N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    shapes = tm.flatten_params(jax.eval_shape(lambda: tm.init_params(cfg, jax.random.key(0))))
    flat = {}
    for name, leaf in shapes.items():
        last = name.rsplit(".", 1)[-1]
        if last.startswith("W_"):
            value = rng.normal(0.0, cfg.init_range, leaf.shape)
        elif last == "w":
            value = 1.0 + rng.normal(0.0, 0.1, leaf.shape)
        else:
            value = rng.normal(0.0, 0.1, leaf.shape)
        flat[name] = jnp.asarray(value, dtype=cfg.dtype)
    return tm.unflatten_params(flat)

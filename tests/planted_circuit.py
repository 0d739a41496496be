"""A model with a planted circuit: weights built by hand so that a known set of edges carries the task.

Task: predict the first token (vocabulary 0..3) at the last of 3 positions. The corrupted input
resamples the first token. d_model 16 holds four 4-dim subspaces:

  dims 0-3    the token embedding (one-hot; pos_embed is zero)
  dims 4-7    written by L0H0, which attends uniformly (W_Q = W_K = 0) and copies dims 0-3
  dims 8-11   written by MLP 0, which copies dims 4-7 (relu(x) - relu(-x))
  dims 12-15  written by L1H0, which attends uniformly and copies dims 8-11; W_U reads them

Every other head writes nothing (W_V = W_O = 0) and no reader overlaps another subspace, so the
edges embed -> L0H0.v, L0H0 -> MLP0, MLP0 -> L1H0.v and L1H0 -> logits carry everything and every
other edge has exactly no effect. No normalization (an LN couples every subspace through its scale).
"""

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=8, d_vocab=4, n_ctx=3, act_fn="relu",
                     normalization_type=None, attention_dir="causal")
PLANTED = ("embed -> blocks.0.attn.head.0.v", "blocks.0.attn.head.0 -> blocks.0.mlp",
           "blocks.0.mlp -> blocks.1.attn.head.0.v", "blocks.1.attn.head.0 -> logits")


def params() -> dict:
    shapes = tm.flatten_params(jax.eval_shape(lambda: tm.init_params(CFG, jax.random.key(0))))
    flat = {name: np.zeros(leaf.shape, np.float32) for name, leaf in shapes.items()}
    eye = np.eye(4, dtype=np.float32)
    flat["embed.W_E"][:, 0:4] = eye
    flat["blocks.0.attn.W_V"][0, 0:4] = eye
    flat["blocks.0.attn.W_O"][0, :, 4:8] = eye
    flat["blocks.0.mlp.W_in"][4:8] = np.concatenate([eye, -eye], 1)
    flat["blocks.0.mlp.W_out"][:, 8:12] = np.concatenate([eye, -eye], 0)
    flat["blocks.1.attn.W_V"][0, 8:12] = eye
    flat["blocks.1.attn.W_O"][0, :, 12:16] = eye
    flat["unembed.W_U"][12:16] = 10.0 * eye
    return tm.unflatten_params({k: jnp.asarray(v) for k, v in flat.items()})


def inputs(n: int = 64, seed: int = 0):
    """(clean, corrupted, first tokens): corrupted differs from clean in its first token only."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 4, (n, 3))
    corrupted = clean.copy()
    corrupted[:, 0] = (clean[:, 0] + rng.integers(1, 4, n)) % 4
    return clean, corrupted, clean[:, 0]

"""TransformerLens as a test-time reference: build a HookedTransformer for a
toymech config and copy weights between the two.

Only tests import this module, and only after
`pytest.importorskip("transformer_lens")`.
"""

import jax.numpy as jnp
import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import toymech as tm


def tl_config(cfg: tm.ModelConfig, **extra) -> HookedTransformerConfig:
    """The HookedTransformerConfig with the same architecture as `cfg`."""
    return HookedTransformerConfig(**tm.interop.transformer_lens_config(cfg), device="cpu", **extra)


def split_option_sites(cfg: tm.ModelConfig) -> set[str]:
    """toymech's sites that a HookedTransformer has only with its split-input options
    (use_attn_in / use_split_qkv_input / use_hook_mlp_in): hook_attn_in, hook_q/k/v_input
    and, with an MLP, hook_mlp_in, in every layer."""
    mlp_in = set() if cfg.attn_only else {f"blocks.{l}.hook_mlp_in" for l in range(cfg.n_layers)}
    return {s for l in range(cfg.n_layers) for s in tm.sites.split_input_sites(l)} | mlp_in


def tl_model(cfg: tm.ModelConfig, seed: int = 0, randomize_biases: bool = True) -> HookedTransformer:
    """A HookedTransformer with random weights (and, by default, random biases
    and LayerNorm weights too, so that every parameter is exercised)."""
    model = HookedTransformer(tl_config(cfg, seed=seed, use_attn_result=True, use_hook_tokens=True))
    if randomize_biases:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "b_" in name or ".b" in name or name.endswith(".w"):
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def params_from_tl(model: HookedTransformer) -> dict:
    """toymech params holding the model's weights (buffers dropped)."""
    flat = {
        k: jnp.asarray(v.detach().cpu().numpy())
        for k, v in model.state_dict().items()
        if not k.endswith((".mask", ".IGNORE"))
    }
    return tm.unflatten_params(flat)


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

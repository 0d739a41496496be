"""ModelConfig: the shape and semantics of a toymech transformer.

A frozen (hashable) dataclass covering the part of TransformerLens's
`HookedTransformerConfig` that toy-model work uses. Being hashable, a config is
a static argument of jitted functions; being validated on construction, an
impossible config fails here with a `ValueError` naming the field, not later
with a shape error deep inside the forward pass.
"""

from __future__ import annotations

import dataclasses
import math

ACT_FNS = ("relu", "gelu", "gelu_new", "silu")
NORMALIZATION_TYPES = ("LN", "LNPre", None)
ATTENTION_DIRS = ("causal", "bidirectional")
POSITIONAL_EMBEDDING_TYPES = ("standard",)
DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a HookedTransformer-style model.

    Attributes:
        n_layers: number of transformer blocks.
        d_model: width of the residual stream.
        n_heads: attention heads per block.
        d_head: width of each head's query/key/value.
        d_mlp: hidden width of each MLP; None makes the model attention-only.
        d_vocab: number of input tokens (valid token ids are 0..d_vocab-1).
        n_ctx: the longest sequence the model accepts (rows of W_pos).
        d_vocab_out: number of output logits; None means d_vocab.
        act_fn: MLP nonlinearity: 'relu', 'gelu' (exact erf GELU), 'gelu_new'
            (tanh approximation) or 'silu'.
        normalization_type: 'LN' (LayerNorm with weights), 'LNPre' (centering and
            scaling only, as left by folding LN weights) or None.
        attention_dir: 'causal' (decoder) or 'bidirectional' (encoder).
        positional_embedding_type: only 'standard' (a learned W_pos) for now.
        eps: LayerNorm epsilon.
        init_range: std of the normal init of every weight matrix; None gives
            TransformerLens's default 0.8 / sqrt(d_model). Biases start at zero and
            LayerNorm weights at one.
        dtype: parameter and activation dtype.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    d_vocab_out: int | None = None
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    attention_dir: str = "causal"
    positional_embedding_type: str = "standard"
    eps: float = 1e-5
    init_range: float | None = None
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            _check_positive_int(name, getattr(self, name))
        if self.d_mlp is not None:
            _check_positive_int("d_mlp", self.d_mlp)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        _check_positive_int("d_vocab_out", self.d_vocab_out)
        _check_choice("act_fn", self.act_fn, ACT_FNS)
        _check_choice("normalization_type", self.normalization_type, NORMALIZATION_TYPES)
        _check_choice("attention_dir", self.attention_dir, ATTENTION_DIRS)
        _check_choice(
            "positional_embedding_type", self.positional_embedding_type, POSITIONAL_EMBEDDING_TYPES
        )
        _check_choice("dtype", self.dtype, DTYPES)
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"ModelConfig.eps must be a positive number, got {self.eps!r}")
        if self.init_range is None:
            object.__setattr__(self, "init_range", 0.8 / math.sqrt(self.d_model))
        elif not (isinstance(self.init_range, (int, float)) and self.init_range > 0):
            raise ValueError(
                f"ModelConfig.init_range must be a positive number or None, got {self.init_range!r}"
            )

    @property
    def attn_only(self) -> bool:
        """True when the blocks have no MLP."""
        return self.d_mlp is None

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-JSON view of the config."""
        return dataclasses.asdict(self)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"ModelConfig.{name} must be one of {choices}, got {value!r}")

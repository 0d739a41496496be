"""QK and OV circuits as factored matrices.

An attention head's bilinear maps are low-rank products of its weights:

  QK circuit  W_Q[h] @ W_K[h]^T   [d_model, d_model], rank <= d_head
              (query-side residual vector x, key-side y: score = x QK y^T)
  OV circuit  W_V[h] @ W_O[h]     [d_model, d_model], rank <= d_head
              (what head h writes when it attends to residual vector x: x OV)

`FactoredMatrix` keeps such a product A @ B ([..., l, m] @ [..., m, r]) as
its two factors, with any leading batch axes (heads, layers), and computes
what an analysis needs -- products with other matrices, the thin SVD, the
Frobenius norm, eigenvalues -- from the factors, never forming the [l, r]
product unless `.AB` is asked for. It is a pytree, so it passes through
jit / vmap.

`qk_circuit` / `ov_circuit` give one layer's circuits for every head
[n_heads, d_model, d_model]; `full_qk_circuit` / `full_ov_circuit` put
embeddings (or any residual vectors) on the input side and the unembedding
on the output side ([n_heads, d_vocab, d_vocab] and
[n_heads, d_vocab, d_vocab_out]); `qk_scores` gives a layer's attention
scores for given queries (e.g. the mean hook_q) against any key-side
residual vectors (study 4's layer-0 QK circuit with mean queries).

The circuits use the raw weights. In a model with LayerNorm they mean what
they usually mean after `toymech.weights.process_weights` (LN weights
folded into W_Q/W_K/W_V, writing weights centred).

Einsum letters: h head, d d_model, e d_head, q/k query/key position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from toymech.analysis import linalg
from toymech.config import ModelConfig

Array = jax.Array


@jax.tree_util.register_pytree_node_class
class FactoredMatrix:
    """The matrix A @ B kept as its factors A [..., l, m] and B [..., m, r].

    Leading axes broadcast (once, at construction). `shape` is [..., l, r];
    m is the inner (hidden) dimension. A pytree whose leaves are A and B.
    """

    def __init__(self, A, B):
        A, B = jnp.asarray(A), jnp.asarray(B)
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"FactoredMatrix needs A [..., l, m] and B [..., m, r] with the same m; "
                f"got A {A.shape} and B {B.shape}"
            )
        try:
            lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except ValueError:
            raise ValueError(
                f"FactoredMatrix: leading axes of A {A.shape} and B {B.shape} do not broadcast"
            ) from None
        self.A = jnp.broadcast_to(A, lead + A.shape[-2:])
        self.B = jnp.broadcast_to(B, lead + B.shape[-2:])

    __array_ufunc__ = None  # numpy array @ FactoredMatrix -> __rmatmul__

    def tree_flatten(self):
        return (self.A, self.B), None

    @classmethod
    def tree_unflatten(cls, _, leaves):
        out = object.__new__(cls)  # leaves may be tracers or placeholders: no checks
        out.A, out.B = leaves
        return out

    # --- shape -------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self.A.shape[:-1] + self.B.shape[-1:]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    def __getitem__(self, index) -> FactoredMatrix:
        """Indexes the leading (batch) axes only, e.g. `ov[head]`."""
        index = index if isinstance(index, tuple) else (index,)
        n_lead = self.ndim - 2
        used = sum(i is not None for i in index)
        if any(i is Ellipsis for i in index) or used > n_lead:
            raise IndexError(
                f"FactoredMatrix of shape {self.shape} indexes only its {n_lead} leading axes, got {index}"
            )
        return FactoredMatrix(self.A[index], self.B[index])

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={self.shape}, mdim={self.mdim})"

    # --- products ----------------------------------------------------------

    @property
    def AB(self) -> Array:
        """The product [..., l, r] (materialised)."""
        return self.A @ self.B

    @property
    def BA(self) -> Array:
        """The reversed product [..., m, m] (needs l == r)."""
        self._check_square("BA")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose B^T A^T [..., r, l]."""
        return FactoredMatrix(jnp.swapaxes(self.B, -1, -2), jnp.swapaxes(self.A, -1, -2))

    def __mul__(self, scalar) -> FactoredMatrix:
        scalar = jnp.asarray(scalar)
        if scalar.ndim:
            raise ValueError(f"FactoredMatrix * x needs a scalar x, got shape {scalar.shape}; use @ for products")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __matmul__(self, other):
        """self @ other: a FactoredMatrix for a matrix or FactoredMatrix
        [..., r, n]; an array [..., l] for a vector [r]."""
        if isinstance(other, FactoredMatrix):
            self._check_inner(self.rdim, other.ldim, "@", other.shape)
            middle = self.B @ other.A  # [..., m1, m2]
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, middle @ other.B)
            return FactoredMatrix(self.A @ middle, other.B)
        other = jnp.asarray(other)
        self._check_inner(self.rdim, other.shape[-2] if other.ndim > 1 else other.shape[0], "@", other.shape)
        if other.ndim == 1:
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other):
        """other @ self for a matrix [..., n, l] (-> FactoredMatrix) or a
        vector [l] (-> array [..., r])."""
        other = jnp.asarray(other)
        self._check_inner(other.shape[-1], self.ldim, "@ (left)", other.shape)
        if other.ndim == 1:
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        return FactoredMatrix(other @ self.A, self.B)

    # --- spectra -----------------------------------------------------------

    def svd(self) -> linalg.SVD:
        """Thin SVD of A @ B: u [..., l, k], s [..., k], vh [..., k, r] with
        k = min(l, m, r), from a thin QR of A and the SVD of the small
        [min(l, m), r] matrix R_A @ B. Signs follow `linalg.svd` (the
        largest-|.| entry of each vh row is positive), so this equals
        `linalg.svd(self.AB)`."""
        q, r = jnp.linalg.qr(self.A)  # [..., l, j], [..., j, m], j = min(l, m)
        small = linalg.svd(r @ self.B)  # of [..., j, r]
        return linalg.SVD(q @ small.u, small.s, small.vh)

    @property
    def S(self) -> Array:
        """Singular values [..., min(l, m, r)], descending."""
        return self.svd().s

    def norm(self) -> Array:
        """Frobenius norm [...], as sqrt(sum((A^T A) * (B B^T))): two [m, m]
        Gram matrices, no SVD and no [l, r] product."""
        gram_a = jnp.swapaxes(self.A, -1, -2) @ self.A  # [..., m, m]
        gram_b = self.B @ jnp.swapaxes(self.B, -1, -2)  # [..., m, m]
        return jnp.sqrt(jnp.maximum((gram_a * gram_b).sum((-2, -1)), 0.0))

    @property
    def eigenvalues(self) -> Array:
        """Eigenvalues [..., m] (complex) of the square A @ B: those of the
        [m, m] matrix B @ A (A @ B has these plus l - m zeros)."""
        return jnp.linalg.eigvals(self.BA)

    # --- checks ------------------------------------------------------------

    def _check_square(self, what: str) -> None:
        if self.ldim != self.rdim:
            raise ValueError(f"FactoredMatrix.{what} needs a square matrix, shape is {self.shape}")

    def _check_inner(self, left: int, right: int, op: str, other_shape) -> None:
        if left != right:
            raise ValueError(
                f"FactoredMatrix {op}: inner dimensions differ ({left} vs {right}) for "
                f"FactoredMatrix {self.shape} and operand {tuple(other_shape)}"
            )


# --- circuits of a model ------------------------------------------------------


def _attn(cfg: ModelConfig, params: dict, layer: int) -> dict:
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} out of range for a model with n_layers={cfg.n_layers}")
    return params[f"blocks_{layer}"]["attn"]


def _residual_vectors(x, cfg: ModelConfig, what: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != cfg.d_model:
        raise ValueError(f"{what} must be residual vectors [..., d_model={cfg.d_model}], got shape {x.shape}")
    return x


def qk_circuit(cfg: ModelConfig, params: dict, layer: int) -> FactoredMatrix:
    """W_Q[h] @ W_K[h]^T for every head of `layer`: [n_heads, d_model, d_model]
    (query-side residual on the left, key-side on the right; biases and the
    1/sqrt(d_head) scale are not included)."""
    attn = _attn(cfg, params, layer)
    return FactoredMatrix(attn["W_Q"], jnp.swapaxes(attn["W_K"], -1, -2))


def ov_circuit(cfg: ModelConfig, params: dict, layer: int) -> FactoredMatrix:
    """W_V[h] @ W_O[h] for every head of `layer`: [n_heads, d_model, d_model]
    (the residual vector attended to on the left, what the head writes on
    the right; b_V is not included)."""
    attn = _attn(cfg, params, layer)
    return FactoredMatrix(attn["W_V"], attn["W_O"])


def full_qk_circuit(cfg: ModelConfig, params: dict, layer: int, queries=None, keys=None) -> FactoredMatrix:
    """queries @ W_Q[h] @ W_K[h]^T @ keys^T: [n_heads, n_q, n_k].

    queries [n_q, d_model], keys [n_k, d_model] are residual vectors (default
    both W_E, giving the token-token circuit [n_heads, d_vocab, d_vocab]); pass
    e.g. W_pos, or embeddings divided by a typical LN scale, for other views.
    """
    W_E = params["embed"]["W_E"]
    queries = _residual_vectors(W_E if queries is None else queries, cfg, "queries")
    keys = _residual_vectors(W_E if keys is None else keys, cfg, "keys")
    return queries @ qk_circuit(cfg, params, layer) @ keys.T


def full_ov_circuit(cfg: ModelConfig, params: dict, layer: int, inputs=None, outputs=None) -> FactoredMatrix:
    """inputs @ W_V[h] @ W_O[h] @ outputs: [n_heads, n_in, n_out].

    inputs [n_in, d_model] default W_E; outputs [d_model, n_out] default W_U,
    giving the token -> logit circuit [n_heads, d_vocab, d_vocab_out]. Chain
    layers with FactoredMatrix products, e.g. study 4's W_E OV0[h0] OV1[h1] W_U:
    `W_E @ ov_circuit(cfg, p, 0)[:, None] @ ov_circuit(cfg, p, 1)[None] @ W_U`
    ([n_heads, n_heads, d_vocab, d_vocab_out]).
    """
    inputs = _residual_vectors(params["embed"]["W_E"] if inputs is None else inputs, cfg, "inputs")
    outputs = jnp.asarray(params["unembed"]["W_U"] if outputs is None else outputs)
    if outputs.ndim != 2 or outputs.shape[0] != cfg.d_model:
        raise ValueError(f"outputs must be [d_model={cfg.d_model}, n_out], got shape {outputs.shape}")
    return inputs @ ov_circuit(cfg, params, layer) @ outputs


def qk_scores(cfg: ModelConfig, params: dict, layer: int, queries, keys) -> Array:
    """Attention scores of `layer` for given queries against key-side inputs.

    queries: [..., q, n_heads, d_head], the query vectors (hook_q, e.g. its
      mean over a batch when queries are roughly constant);
    keys: [..., k, d_model], what the key side reads (the layer's attention
      input: hook_resid_pre, or ln1.hook_normalized in a model with LN).
    Returns [..., n_heads, q, k] = q . (keys W_K + b_K) / sqrt(d_head), before
    masking: with the model's own queries and inputs, hook_attn_scores.
    """
    attn = _attn(cfg, params, layer)
    queries = jnp.asarray(queries)
    if queries.ndim < 3 or queries.shape[-2:] != (cfg.n_heads, cfg.d_head):
        raise ValueError(
            f"queries must be [..., q, n_heads={cfg.n_heads}, d_head={cfg.d_head}], got shape {queries.shape}"
        )
    keys = _residual_vectors(keys, cfg, "keys")
    k = jnp.einsum("...kd,hde->...khe", keys, attn["W_K"]) + attn["b_K"]  # [..., k, h, e]
    return jnp.einsum("...qhe,...khe->...hqk", queries, k) / np.sqrt(cfg.d_head).astype(k.dtype)

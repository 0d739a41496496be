"""FactoredMatrix against numpy on the materialised product and against
TransformerLens's FactoredMatrix; model circuits against TransformerLens's
QK / OV and the model's own attention scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech.analysis import circuits, linalg
from toymech.analysis.circuits import FactoredMatrix

TOL = dict(rtol=2e-4, atol=2e-5)


def _factors(seed=0, lead=(3,), l=7, m=3, r=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=lead + (l, m)).astype(np.float32), rng.normal(size=lead + (m, r)).astype(np.float32))


def test_products_transpose_and_indexing_match_numpy():
    A, B = _factors()
    fm = FactoredMatrix(A, B)
    AB = A @ B
    assert fm.shape == (3, 7, 5) and fm.mdim == 3
    np.testing.assert_allclose(fm.AB, AB, **TOL)
    np.testing.assert_allclose(fm.T.AB, np.swapaxes(AB, -1, -2), **TOL)
    np.testing.assert_allclose(fm[1].AB, AB[1], **TOL)
    np.testing.assert_allclose((2.5 * fm).AB, 2.5 * AB, **TOL)
    rng = np.random.default_rng(1)
    right, left = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(2, 7)).astype(np.float32)
    vec_r, vec_l = rng.normal(size=5).astype(np.float32), rng.normal(size=7).astype(np.float32)
    np.testing.assert_allclose((fm @ right).AB, AB @ right, **TOL)
    np.testing.assert_allclose((left @ fm).AB, left @ AB, **TOL)  # numpy on the left defers to us
    np.testing.assert_allclose((jnp.asarray(left) @ fm).AB, left @ AB, **TOL)
    np.testing.assert_allclose(fm @ vec_r, AB @ vec_r, **TOL)
    np.testing.assert_allclose(vec_l @ fm, vec_l @ AB, **TOL)
    C, D = _factors(2, lead=(), l=5, m=2, r=6)  # FactoredMatrix @ FactoredMatrix, broadcast leading axes
    product = fm @ FactoredMatrix(C, D)
    assert product.mdim == 2
    np.testing.assert_allclose(product.AB, AB @ (C @ D), **TOL)
    pairwise = fm[:, None] @ FactoredMatrix(*_factors(3, lead=(4,), l=5, m=4, r=5))[None]
    assert pairwise.shape == (3, 4, 7, 5)


def test_svd_norm_and_eigenvalues_match_numpy_on_the_product():
    A, B = _factors(l=9, m=4, r=6)
    fm = FactoredMatrix(A, B)
    AB = (A.astype(np.float64) @ B)
    svd = fm.svd()
    assert svd.u.shape == (3, 9, 4) and svd.s.shape == (3, 4) and svd.vh.shape == (3, 4, 6)
    np.testing.assert_allclose(svd.s, np.linalg.svd(AB, compute_uv=False)[:, :4], **TOL)
    np.testing.assert_allclose(np.einsum("bik,bk,bkj->bij", svd.u, svd.s, svd.vh), AB, **TOL)
    np.testing.assert_allclose(np.swapaxes(svd.u, -1, -2) @ svd.u, np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-5)
    dense = linalg.svd(jnp.asarray(AB, jnp.float32))  # same sign convention as the dense SVD
    np.testing.assert_allclose(svd.vh, dense.vh[:, :4], atol=1e-4)
    np.testing.assert_allclose(fm.norm(), np.linalg.norm(AB, axis=(-2, -1)), **TOL)
    square = FactoredMatrix(*_factors(4, l=6, m=2, r=6))
    eig = np.linalg.eigvals(np.asarray(square.AB, np.float64))  # [3, 6]: 2 nonzero + 4 ~zero
    ours = np.asarray(square.eigenvalues)
    for i in range(3):
        top = eig[i][np.argsort(-np.abs(eig[i]))[:2]]
        np.testing.assert_allclose(np.sort_complex(ours[i]), np.sort_complex(top), rtol=1e-3, atol=1e-4)


def test_svd_and_norm_never_form_the_product():
    A, B = _factors(lead=(), l=300, m=4, r=300)
    fm = FactoredMatrix(A, B)
    for fn in (lambda f: f.svd(), lambda f: f.norm()):
        jaxpr = jax.make_jaxpr(fn)(fm)
        shapes = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars]
        assert (300, 300) not in shapes, shapes


def test_factored_matrix_is_a_pytree_for_jit_and_vmap():
    A, B = _factors()
    fm = FactoredMatrix(A, B)
    np.testing.assert_allclose(jax.jit(lambda f: f.norm())(fm), fm.norm(), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda f: f.svd().s)(fm), fm.svd().s, rtol=1e-5)


def test_matches_transformer_lens_factored_matrix():
    torch = pytest.importorskip("torch")
    tl_fm = pytest.importorskip("transformer_lens").FactoredMatrix
    A, B = _factors(5, l=8, m=3, r=8)
    ours, theirs = FactoredMatrix(A, B), tl_fm(torch.tensor(A), torch.tensor(B))
    np.testing.assert_allclose(ours.S, theirs.S.numpy(), **TOL)
    np.testing.assert_allclose(ours.norm(), theirs.norm().numpy(), **TOL)
    right = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    np.testing.assert_allclose((ours @ right).AB, (theirs @ torch.tensor(right)).AB.numpy(), **TOL)


def test_bad_factors_and_products_are_errors():
    with pytest.raises(ValueError, match=r"same m; got A \(4, 3\) and B \(2, 5\)"):
        FactoredMatrix(np.zeros((4, 3)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="do not broadcast"):
        FactoredMatrix(np.zeros((2, 4, 3)), np.zeros((3, 3, 5)))
    fm = FactoredMatrix(np.zeros((4, 3)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"inner dimensions differ \(5 vs 4\)"):
        fm @ np.zeros((4, 2))
    with pytest.raises(ValueError, match="needs a square matrix"):
        fm.eigenvalues
    with pytest.raises(IndexError, match="indexes only its 0 leading axes"):
        fm[0]


# --- circuits of a model -------------------------------------------------------

CFG = tm.ModelConfig(n_layers=2, d_model=16, n_heads=3, d_head=4, d_mlp=None, d_vocab=10, d_vocab_out=8, n_ctx=6,
                     normalization_type="LNPre")


@pytest.fixture(scope="module")
def model():
    params = tm.init_params(CFG, jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    return params


def test_circuits_match_transformer_lens_qk_ov(model):
    pytest.importorskip("transformer_lens")
    import tl_reference
    tl = tl_reference.tl_model(CFG, seed=2)
    params = tl_reference.params_from_tl(tl)
    for layer in range(CFG.n_layers):
        np.testing.assert_allclose(circuits.qk_circuit(CFG, params, layer).AB, tl.QK[layer].AB.detach().numpy(), **TOL)
        np.testing.assert_allclose(circuits.ov_circuit(CFG, params, layer).AB, tl.OV[layer].AB.detach().numpy(), **TOL)


def test_full_circuits_equal_the_dense_chains(model):
    flat = {k: np.asarray(v, np.float64) for k, v in tm.flatten_params(model).items()}
    W_E, W_U, W_pos = flat["embed.W_E"], flat["unembed.W_U"], flat["pos_embed.W_pos"]
    W_Q, W_K, W_V, W_O = (flat[f"blocks.1.attn.{n}"] for n in ("W_Q", "W_K", "W_V", "W_O"))
    np.testing.assert_allclose(circuits.full_qk_circuit(CFG, model, 1).AB,
                               W_E @ W_Q @ np.swapaxes(W_K, 1, 2) @ W_E.T, **TOL)
    np.testing.assert_allclose(circuits.full_qk_circuit(CFG, model, 1, queries=W_pos, keys=W_E).AB,
                               W_pos @ W_Q @ np.swapaxes(W_K, 1, 2) @ W_E.T, **TOL)
    full_ov = circuits.full_ov_circuit(CFG, model, 1)
    assert full_ov.shape == (CFG.n_heads, CFG.d_vocab, CFG.d_vocab_out)
    np.testing.assert_allclose(full_ov.AB, W_E @ W_V @ W_O @ W_U, **TOL)
    # Two-layer OV chain for every pair of heads, as in study 4.
    W_V0, W_O0 = flat["blocks.0.attn.W_V"], flat["blocks.0.attn.W_O"]
    chain = model["embed"]["W_E"] @ circuits.ov_circuit(CFG, model, 0)[:, None] \
        @ circuits.ov_circuit(CFG, model, 1)[None] @ model["unembed"]["W_U"]
    assert chain.shape == (3, 3, CFG.d_vocab, CFG.d_vocab_out)
    np.testing.assert_allclose(chain[2, 1].AB, W_E @ W_V0[2] @ W_O0[2] @ W_V[1] @ W_O[1] @ W_U, rtol=1e-3, atol=1e-4)


def test_qk_scores_with_the_models_queries_are_its_attention_scores(model):
    tokens = np.random.default_rng(0).integers(0, CFG.d_vocab, size=(3, CFG.n_ctx))
    layer = 1
    sites = [tm.get_act_name(n, layer) for n in ("q", "attn_scores")] + [f"blocks.{layer}.ln1.hook_normalized"]
    _, acts = tm.apply(CFG, model, tokens, capture=sites)
    scores = circuits.qk_scores(CFG, model, layer, acts[sites[0]], acts[sites[2]])  # [b, h, q, k]
    causal = np.tril(np.ones((CFG.n_ctx, CFG.n_ctx), bool))
    np.testing.assert_allclose(np.asarray(scores)[..., causal], np.asarray(acts[sites[1]])[..., causal], **TOL)
    # Mean queries against any key inputs: [h, q, k].
    mean_q = acts[sites[0]].mean(0)
    assert circuits.qk_scores(CFG, model, layer, mean_q, model["pos_embed"]["W_pos"]).shape == (3, 6, 6)
    with pytest.raises(ValueError, match=r"queries must be \[..., q, n_heads=3, d_head=4\]"):
        circuits.qk_scores(CFG, model, layer, mean_q[..., :2], model["pos_embed"]["W_pos"])
    with pytest.raises(ValueError, match="layer 2 out of range"):
        circuits.ov_circuit(CFG, model, 2)

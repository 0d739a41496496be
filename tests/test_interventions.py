"""Each intervention kind and mask against a hand computation on captured activations."""

import jax
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv

CFG = tm.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=7, n_ctx=6)
SITE = "blocks.0.hook_resid_mid"  # [batch, pos, d_model]
NEXT = "blocks.0.ln2.hook_scale"  # computed from SITE only: shows the edit reached the rest of the model


@pytest.fixture(scope="module")
def run():
    params = tm.init_params(CFG, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 7, (3, 6))
    clean = tm.apply(CFG, params, tokens, capture=(SITE,))[1][SITE]

    def edited(intervention, site=SITE):
        logits, acts = tm.apply(CFG, params, tokens, intervention=intervention, capture=(site, NEXT))
        return np.asarray(acts[site]), logits, acts

    return np.asarray(clean), edited


def _expected_scale(x):
    x = x - x.mean(-1, keepdims=True)
    return np.sqrt((x**2).mean(-1, keepdims=True) + CFG.eps)


def test_zero_with_position_and_feature_masks(run):
    clean, edited = run
    pos = np.array([False, True, False, True, False, False])
    got, _, acts = edited(iv.zero(SITE, pos=pos, feature=[0, 5]))
    want = clean.copy()
    for p in (1, 3):
        want[:, p, [0, 5]] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(acts[NEXT], _expected_scale(want), rtol=1e-5)


def test_mean_uses_batch_mean_or_the_given_value(run):
    clean, edited = run
    got, _, _ = edited(iv.mean(SITE))
    np.testing.assert_allclose(got, np.broadcast_to(clean.mean(0, keepdims=True), clean.shape), rtol=1e-6)
    dataset_mean = np.linspace(-1, 1, 6 * 8).reshape(6, 8)
    got, _, _ = edited(iv.mean(SITE, dataset_mean, pos=2))
    want = clean.copy()
    want[:, 2] = dataset_mean[2]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_project_out_removes_the_subspace_and_keeps_the_rest(run):
    clean, edited = run
    directions = np.random.default_rng(1).normal(size=(2, 8))  # not orthonormal
    got, _, _ = edited(iv.project_out(SITE, directions))
    q, _ = np.linalg.qr(directions.T)
    np.testing.assert_allclose(got, clean - clean @ q @ q.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got @ directions.T, 0.0, atol=1e-4)
    dependent = np.concatenate([directions, directions[:1] - 3 * directions[1:]])  # rank 2, three rows
    got_dependent, _, _ = edited(iv.project_out(SITE, dependent))
    np.testing.assert_allclose(got_dependent, got, rtol=1e-4, atol=1e-5)
    single, _, _ = edited(iv.project_out(SITE, directions[0]))
    u = directions[0] / np.linalg.norm(directions[0])
    np.testing.assert_allclose(single, clean - np.outer(clean.reshape(-1, 8) @ u, u).reshape(clean.shape),
                               rtol=1e-4, atol=1e-5)


def test_add_scale_fn_and_combine_in_order(run):
    clean, edited = run
    vec = np.arange(8.0)
    got, _, _ = edited(iv.combine(iv.add(SITE, vec), iv.scale(SITE, 2.0, pos=0)))
    want = clean + vec
    want[:, 0] *= 2.0
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got, _, _ = edited(iv.apply_fn(SITE, lambda x: x**2, feature=np.arange(8) < 3))
    want = clean.copy()
    want[..., :3] **= 2
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_per_batch_position_mask(run):
    clean, edited = run
    mask = np.zeros((3, 6), bool)
    mask[0, 5] = mask[2, 0] = True
    got, _, _ = edited(iv.zero(SITE, pos=mask))
    want = clean.copy()
    want[0, 5] = want[2, 0] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pattern_masks_select_query_positions_and_heads(run):
    _, edited = run
    site = "blocks.1.attn.hook_pattern"
    got, _, _ = edited(iv.zero(site, head=1, pos=4), site=site)
    assert np.all(got[:, 1, 4] == 0)
    assert np.all(got[:, 0].sum(-1) > 0.999) and np.all(got[:, 1, :4].sum(-1) > 0.999)


def test_an_all_false_mask_is_a_no_op(run):
    clean, edited = run
    got, _, _ = edited(iv.scale(SITE, 5.0, pos=np.zeros(6, bool)))
    np.testing.assert_array_equal(got, clean)


def test_stack_needs_the_same_structure():
    with pytest.raises(ValueError, match="intervention 1 has a different structure"):
        iv.stack([iv.zero(SITE, pos=0), iv.zero(SITE)])
    with pytest.raises(ValueError, match="different shapes"):
        iv.stack([iv.zero(SITE, pos=np.ones(6, bool)), iv.zero(SITE, pos=np.ones(5, bool))])
    with pytest.raises(ValueError, match="at least one"):
        iv.stack([])

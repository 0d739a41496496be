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


def test_stack_composes_runs_of_different_sites_and_kinds():
    params = tm.init_params(CFG, jax.random.key(4))
    tokens = np.random.default_rng(5).integers(0, 7, (2, 6))
    resid = "blocks.1.hook_resid_pre"
    _, other = tm.apply(CFG, params, tokens[::-1], capture=(resid,))
    vec = np.linspace(-1, 1, 8)
    singles = [iv.zero(tm.get_act_name("z", l), head=h) for l in range(2) for h in range(2)]  # every head
    singles += [iv.patch(resid, other[resid], pos=p) for p in range(6)]  # plus the resid at each position
    singles += [
        iv.combine(iv.add(SITE, vec), iv.scale(SITE, 2.0, pos=0)),  # two edits at one site, in order...
        iv.combine(iv.scale(SITE, 2.0, pos=1), iv.add(SITE, vec)),  # ...and in the other order
        iv.combine(iv.mean(SITE), iv.zero(tm.get_act_name("pattern", 1), head=-1, pos=np.arange(6) > 2)),
        iv.project_out(SITE, vec, pos=np.array([0, -1])),
        iv.zero(tm.get_act_name("post", 0), feature=[1, 3]),
    ]
    batched = iv.stack(singles)
    assert batched.n_stacked == len(singles) == iv.batch_size(batched)
    logits, acts = tm.apply_batched(CFG, params, tokens, batched, capture=(SITE,))
    for i, single in enumerate(singles):
        want, want_acts = tm.apply(CFG, params, tokens, intervention=single, capture=(SITE,))
        np.testing.assert_allclose(logits[i], want, rtol=1e-5, atol=1e-5, err_msg=f"run {i}")
        np.testing.assert_allclose(acts[SITE][i], want_acts[SITE], rtol=1e-5, atol=1e-5, err_msg=f"run {i}")
        got_one, _ = tm.apply(CFG, params, tokens, intervention=batched[i])  # run i taken out of the stack
        np.testing.assert_allclose(got_one, want, rtol=1e-5, atol=1e-5)
    # Runs making the same edits stack as plain arrays, with no switches.
    same = iv.stack([iv.zero(SITE, pos=p) for p in range(3)])
    assert all(e.active is None for edits in same.edits.values() for e in edits)


def test_stacking_and_batching_errors_say_what_to_do():
    params = tm.init_params(CFG, jax.random.key(4))
    tokens = np.zeros((1, 6), int)
    batched = iv.stack([iv.zero(SITE, pos=0), iv.zero(SITE, pos=1)])
    with pytest.raises(ValueError, match=r"stack of 2 runs .*apply_batched, or one of them with intervention=stacked\[i\]"):
        tm.apply(CFG, params, tokens, intervention=batched)
    with pytest.raises(ValueError, match="apply_batched needs a stacked intervention"):
        tm.apply_batched(CFG, params, tokens, None)
    with pytest.raises(ValueError, match="share one leading axis"):
        tm.apply_batched(CFG, params, tokens, iv.zero(SITE, pos=0))
    with pytest.raises(ValueError, match="at least one"):
        iv.stack([])
    with pytest.raises(TypeError, match="item 1 is a str, not a toymech Intervention"):
        iv.stack([iv.zero(SITE), "zero"])
    with pytest.raises(ValueError, match="item 0 is already a stack of 2 runs"):
        iv.stack([batched])
    with pytest.raises(ValueError, match="cannot mix stacks"):
        iv.combine(batched, iv.zero(SITE))
    with pytest.raises(TypeError, match="single run"):
        iv.zero(SITE)[0]


# --- integer indices: numpy semantics, range errors ----------------------------------------------

# (site, mask kind, axis of the activation it indexes, words naming that axis in errors)
INDEXED_AXES = [
    (SITE, "pos", 1, "position"), (SITE, "feature", 2, "feature"),
    ("blocks.0.attn.hook_z", "pos", 1, "position"), ("blocks.0.attn.hook_z", "head", 2, "head"),
    ("blocks.0.attn.hook_z", "feature", 3, "feature"),
    ("blocks.1.attn.hook_pattern", "pos", 2, "query position"), ("blocks.1.attn.hook_pattern", "head", 1, "head"),
    ("blocks.1.attn.hook_pattern", "feature", 3, "key position"),
]


@pytest.fixture(scope="module")
def clean_sites():
    params = tm.init_params(CFG, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 7, (3, 6))
    sites = sorted({s for s, *_ in INDEXED_AXES})
    _, acts = tm.apply(CFG, params, tokens, capture=sites)
    return params, tokens, {s: np.asarray(acts[s]) for s in sites}


def _zeroed(x, axis, index):
    """x with x[..., index, ...] (numpy indexing along `axis`) set to 0."""
    want = x.copy()
    np.moveaxis(want, axis, 0)[index] = 0.0
    return want


@pytest.mark.parametrize("site,kind,axis,words", INDEXED_AXES)
def test_integer_indices_follow_numpy_alone_and_stacked(clean_sites, site, kind, axis, words):
    params, tokens, clean = clean_sites
    x = clean[site]
    n = x.shape[axis]
    indices = list(range(-n, n))  # every valid index, negative ones included
    batched = iv.stack([iv.zero(site, **{kind: i}) for i in indices])
    stacked, acts = tm.apply_batched(CFG, params, tokens, batched, capture=(site,))
    for j, i in enumerate(indices):
        np.testing.assert_array_equal(acts[site][j], _zeroed(x, axis, i), err_msg=f"{kind}={i}")
    for i in (-1, 0, n - 1):  # alone
        logits, acts = tm.apply(CFG, params, tokens, intervention=iv.zero(site, **{kind: i}), capture=(site,))
        np.testing.assert_array_equal(acts[site], _zeroed(x, axis, i))
        np.testing.assert_allclose(logits, stacked[indices.index(i)], rtol=1e-6, atol=1e-6)  # float32 rounding of vmapped dots
    pair = np.array([0, -1])  # several indices at once
    _, acts = tm.apply(CFG, params, tokens, intervention=iv.zero(site, **{kind: pair}), capture=(site,))
    np.testing.assert_array_equal(acts[site], _zeroed(x, axis, pair))
    for bad in (n, -n - 1, [0, n + 3]):
        message = rf"zero at site {site}: {kind} index -?\d+ is out of range for the {words}.* size {n}"
        with pytest.raises(ValueError, match=message):
            tm.apply(CFG, params, tokens, intervention=iv.zero(site, **{kind: bad}))
    with pytest.raises(ValueError, match=message):
        tm.apply_batched(CFG, params, tokens, iv.stack([iv.zero(site, **{kind: 0}), iv.zero(site, **{kind: n})]))


def test_bool_masks_at_the_boundaries(clean_sites):
    params, tokens, clean = clean_sites
    x = clean[SITE]
    last = np.arange(6) == 5
    cases = [(dict(pos=last), _zeroed(x, 1, 5)), (dict(pos=np.ones(6, bool)), np.zeros_like(x)),
             (dict(feature=np.arange(8) == 7), _zeroed(x, 2, -1))]
    per_batch = np.zeros((3, 6), bool)
    per_batch[0, -1] = per_batch[2, 0] = True
    want = x.copy()
    want[per_batch] = 0.0
    cases.append((dict(pos=per_batch), want))
    for masks, want in cases:
        _, acts = tm.apply(CFG, params, tokens, intervention=iv.zero(SITE, **masks), capture=(SITE,))
        np.testing.assert_array_equal(acts[SITE], want)
    with pytest.raises(ValueError, match=r"pos mask at site .* has shape \(7,\); expected \[6\]"):
        tm.apply(CFG, params, tokens, intervention=iv.zero(SITE, pos=np.ones(7, bool)))
    with pytest.raises(ValueError, match="must be bool or int indices, got dtype float32"):
        iv.zero(SITE, pos=1.0)


def test_indices_inside_a_users_jit_count_from_the_end_and_select_nothing_out_of_range(clean_sites):
    params, tokens, clean = clean_sites
    site = "blocks.0.attn.hook_z"
    run = jax.jit(lambda h: tm.apply_unchecked(CFG, params, tokens, intervention=iv.zero(site, head=h),
                                                capture=(site,))[1][site])
    np.testing.assert_allclose(run(-1), _zeroed(clean[site], 2, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(CFG.n_heads), clean[site], rtol=1e-5, atol=1e-6)  # documented: out of range under jit is a no-op

"""End-to-end tests of the grokking experiment (configs/grokking.py, experiments/grokking.py,
toymech.studies.grokking*) and of the workdir plumbing in toymech.experiment.

The quick variants run the whole study (training, every analysis, report) in seconds."""

import json
import shutil

import jax
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import PolynomialFeatures

import toymech as tm
from toymech import checkpoint, experiment
from toymech.report import check_report
from toymech.studies import grokking, grokking_addition, grokking_modular
from toymech.analysis import fourier
from toymech.tasks import grokking as gk

from conftest import study_config


def get_config(arg):
    return study_config("grokking", arg)


@pytest.fixture
def quick_workdir(grokking_modular_quick):
    """The binary's quick run (tests/conftest.py, shared with the browser test)."""
    err = grokking_modular_quick.stderr
    assert "[train] epoch 300/300" in err  # progress lines with losses, throughput and ETA
    assert "ETA" in err and "epochs/s" in err
    return grokking_modular_quick.workdir


def test_quick_binary_writes_the_whole_workdir(quick_workdir):
    config = get_config("quick")
    assert json.loads((quick_workdir / "config.json").read_text()) == experiment.config_to_dict(config)
    rows = [json.loads(line) for line in (quick_workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 301, 10))
    assert {"train/loss", "train/accuracy", "test/loss", "test/accuracy", "lr"} <= set(rows[0])
    results = json.loads((quick_workdir / "results.json").read_text())
    assert results["training"]["epochs_trained"] == 300
    assert results["training"]["final_train_accuracy"] == 1.0
    analysis = results["analysis"]
    for key in ("key_frequencies", "embedding", "neuron_clusters", "W_logit", "logit_periodicity", "progress"):
        assert key in analysis
    prog = analysis["progress"]
    assert prog["snapshot_epochs"] == [50, 100, 150, 200, 250, 300]
    # memorisation ends at the snapshot where the test loss (checked against metrics.jsonl below) peaks
    assert prog["phases"]["memorisation ends"] == prog["snapshot_epochs"][int(np.argmax(prog["test_loss"]))]
    for name in ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "sum_squared_weights"):
        assert len(prog[name]) == 6 and all(v is not None for v in prog[name])
    # the snapshot losses agree with the training record at the same epochs
    test_at = {r["step"]: r["test/loss"] for r in rows}
    np.testing.assert_allclose(prog["test_loss"], [test_at[e] for e in prog["snapshot_epochs"]], rtol=1e-4)
    found = check_report(quick_workdir / "report.html")
    pngs = {f"figures/{p.name}" for p in (quick_workdir / "figures").glob("*.png")}
    assert set(found.images) == pngs and len(pngs) >= 12  # every figure is in the report, and only those


def test_training_curves_and_cluster_control_against_numpy(quick_workdir):
    """The logits' fit on the key frequencies at the last snapshot, recomputed with numpy from
    the snapshot file; the restricted / test ratio from the progress measures."""
    a = json.loads((quick_workdir / "results.json").read_text())["analysis"]
    tc, prog, keys = a["training_curves"], a["progress"], a["key_frequencies"]
    assert tc["snapshot_epochs"] == prog["snapshot_epochs"]
    np.testing.assert_allclose(tc["restricted_over_test_loss"],
                               np.asarray(prog["restricted_loss"]) / np.asarray(prog["test_loss"]), rtol=1e-5)
    config = get_config("quick")
    task = gk.AdditionTask(config.p)
    cfg = gk.model_config(task, **config.model.to_dict())
    last = prog["snapshot_epochs"][-1]
    params = checkpoint.load_pytree(str(quick_workdir / "snapshots" / f"snap_{last:08d}.msgpack"))
    p = config.p
    logits, _ = tm.apply(cfg, params, gk.all_inputs(task))
    L = np.asarray(logits[:, -1], np.float64).reshape(p, p, p)  # [a, b, c]
    a_, b_, c_ = np.meshgrid(np.arange(p), np.arange(p), np.arange(p), indexing="ij")
    fit, sims = np.zeros_like(L), []
    for k in keys:
        cube = np.cos(2 * np.pi * k * (a_ + b_ - c_) / p)
        fit += (L * cube).sum() / (cube ** 2).sum() * cube
        sims.append((L * cube).sum() / np.linalg.norm(cube) / np.linalg.norm(L))
    assert tc["logit_key_frequency_cosine_similarity"][-1] == pytest.approx(np.sqrt(np.sum(np.square(sims))), rel=1e-3)
    assert tc["logit_key_frequency_residual_fraction"][-1] == pytest.approx(
        np.linalg.norm(L - fit) / np.linalg.norm(L), rel=1e-3)
    cc = a["neuron_cluster_control"]
    assert cc["model_clustered_neurons"] == a["neuron_clusters"]["clustered_neurons"]
    assert cc["random_clustered_neurons"] < cc["neurons"] / 10  # Gaussian activations rarely pass the test


def test_rerun_resumes_and_a_different_config_is_refused(quick_workdir, tmp_path, capsys):
    config = get_config("quick")
    before = json.loads((quick_workdir / "results.json").read_text())
    changed = get_config("quick")
    changed.optimizer.lr = 1e-2
    with pytest.raises(experiment.ConfigMismatchError, match=r"optimizer.lr: 0.003 -> 0.01"):
        grokking.train_and_evaluate(changed, str(quick_workdir))

    # Interrupt a run half way (drop its last checkpoint): the rerun continues from epoch 150 (it
    # neither starts over nor retrains what is saved) and ends exactly where the uninterrupted run did.
    work = tmp_path / "interrupted"
    shutil.copytree(quick_workdir, work)
    ckpts = work / "checkpoints"
    (ckpts / "ckpt_00000300.msgpack").unlink()
    (ckpts / "LATEST").write_text("ckpt_00000150.msgpack")
    for name in ("results.json", "metrics.jsonl", "report.html"):
        (work / name).unlink()
    for snap in (work / "snapshots").glob("*.msgpack"):
        if int(snap.stem.split("_")[1]) > 150:
            snap.unlink()
    resumed = grokking.train_and_evaluate(config, str(work))
    err = capsys.readouterr().err
    assert "[train] epoch 200/300" in err and "[train] epoch 100/300" not in err
    np.testing.assert_allclose(resumed["training"]["final_test_loss"], before["training"]["final_test_loss"],
                               rtol=1e-5)
    assert (work / "metrics.jsonl").read_text().count("\n") == 30


@pytest.fixture(scope="module")
def addition(grokking_addition_quick):
    """The plain-addition quick variant (trained once per session): (config, results' analysis, reloaded
    run, Grid)."""
    config, workdir = grokking_addition_quick.config, grokking_addition_quick.workdir
    check_report(workdir / "report.html")
    analysis = json.loads((workdir / "results.json").read_text())["analysis"]
    run = grokking.train_model(config, experiment.open_workdir(workdir, config))  # reloads the finished run
    return config, analysis, run, grokking_addition.grid_of(run)


def _forward(params, tokens, embed=None, pattern_edit=None):
    """Independent numpy forward pass of the 1-layer model at '=' (no LayerNorm, biases zero):
    (logits [n, v], pre [n, m]); `embed` [n, 3, d] replaces the token embeddings, `pattern_edit`
    maps the attention pattern [n, h, q, k] to a new one."""
    P = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    at, mlp = P["blocks_0"]["attn"], P["blocks_0"]["mlp"]
    x = (P["embed"]["W_E"][tokens] if embed is None else embed) + P["pos_embed"]["W_pos"][None]  # [n, 3, d]
    q, k, v = (np.einsum("npd,hdk->nhpk", x, at[w]) for w in ("W_Q", "W_K", "W_V"))
    scores = np.einsum("nhqk,nhsk->nhqs", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((3, 3), bool)), scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    if pattern_edit is not None:
        pattern = pattern_edit(pattern)
    z = np.einsum("nhqs,nhsk->nhqk", pattern, v)
    resid = x + np.einsum("nhqk,hkd->nqd", z, at["W_O"])
    pre = resid[:, -1] @ mlp["W_in"]
    out = resid[:, -1] + np.maximum(pre, 0) @ mlp["W_out"]
    return out @ P["unembed"]["W_U"], pre


def _sklearn_kept(W_E, keep):
    """mean + the parts of W_E on the PCs in `keep`, with scikit-learn's PCA."""
    pca = PCA().fit(W_E)
    comps = pca.components_[list(keep)]
    return pca.mean_ + (W_E - pca.mean_) @ comps.T @ comps


def _r2(y, X):
    return LinearRegression().fit(X, y).score(X, y)


@pytest.mark.slow
def test_addition_quick_end_to_end(addition):
    config, a, run, g = addition
    assert set(a) >= {"embedding_pca", "attention", "probe", "correlations", "neuron_fits", "pc2_ablation",
                      "feature_ablation", "embedding_ablations", "skip_ablation", "simulated_logits",
                      "logit_fourier", "W_L_pca", "logit_fits", "ours_vs_notebook", "activation_deltas", "sum_fits",
                      "flips_at_0_0", "top_contributors_at_0_0", "W_L_key_neurons", "W_L_column_dft",
                      "coefficient_groups", "W_E_svd", "attention_to_equals", "dead_neurons"}
    ratio = a["embedding_pca"]["explained_variance_ratio"]
    assert abs(sum(ratio) - 1) < 1e-4 and ratio == sorted(ratio, reverse=True)
    assert len(a["logit_fits"]["poly2_r2_per_logit"]) == 20
    # Independent recomputation from the final parameters, with scikit-learn's PCA and numpy forward passes.
    task = gk.AdditionTask(10, modular=False)
    tokens, target = gk.all_inputs(task), gk.labels(task)
    logits, _ = _forward(run.params, tokens)
    assert a["pc2_ablation"]["accuracy_before"] == pytest.approx(np.mean(logits.argmax(-1) == target))
    W_E = np.asarray(run.params["embed"]["W_E"][:10], np.float64)
    digits = np.arange(10.0)
    features = {"linear": digits, "parabola": (digits - 4.5) ** 2, "parity": (-1.0) ** digits}
    scores = PCA().fit_transform(W_E)
    # the feature PCs: each named feature's PC fits it best among the first four (R² of a line fit)
    for name, pc in a["embedding_pca"]["feature_pc"].items():
        r2s = [_r2(scores[:, i], features[name][:, None]) for i in range(4)]
        assert int(pc[2:]) - 1 in np.argsort(r2s)[-2:]  # best or (when the assignment is contested) second best
        assert a["embedding_pca"]["feature_pc_r2"][name] == pytest.approx(r2s[int(pc[2:]) - 1], abs=1e-4)
    for name, row in a["embedding_ablations"].items():
        kept = [int(k[2:]) - 1 for k in row["kept_pcs"]]
        embed = np.zeros((100, 3, W_E.shape[1]))
        embed[:, :2] = _sklearn_kept(W_E, kept)[tokens[:, :2]]
        embed[:, 2] = np.asarray(run.params["embed"]["W_E"], np.float64)[10]
        acc = np.mean(_forward(run.params, tokens, embed)[0].argmax(-1) == target)
        assert row["accuracy"] == pytest.approx(acc, abs=0.011), name  # one of 100 inputs may tie
    lin = int(a["embedding_pca"]["feature_pc"]["linear"][2:]) - 1
    assert a["embedding_ablations"][next(iter(a["embedding_ablations"]))]["kept_pcs"] == [f"PC{lin + 1}"]
    assert a["feature_ablation"]["accuracy_after"] == a["embedding_ablations"][next(iter(a["embedding_ablations"]))]["accuracy"]
    assert a["ours_vs_notebook"]["PC2 ablation by index (keep PC1): accuracy after"]["ours"] == \
        a["pc2_ablation"]["accuracy_after"]
    for row in a["ours_vs_notebook"].values():  # every agreement flag is what the numbers say
        tol = grokking_addition.AGREEMENT_TOLERANCE[row["kind"]]
        tol = tol * row["notebook"] if row["kind"] == "count" else tol
        assert row["agrees"] == (abs(row["ours"] - row["notebook"]) <= tol)
    post = np.maximum(_forward(run.params, tokens)[1], 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # dead neurons have no correlation
        r = np.array([np.corrcoef(post[:, j], target)[0, 1] for j in range(post.shape[1])])
    assert a["correlations"]["neurons_with_r_above_0.9"] == int(np.sum(np.nan_to_num(r) > 0.9))


@pytest.mark.slow
def test_addition_neuron_analyses_against_numpy_and_sklearn(addition):
    _, a, run, g = addition
    task = gk.AdditionTask(10, modular=False)
    tokens, target = gk.all_inputs(task), gk.labels(task)
    W_E = np.asarray(run.params["embed"]["W_E"], np.float64)
    fp = a["embedding_pca"]["feature_pc"]
    lin, par = (int(fp[f][2:]) - 1 for f in ("linear", "parabola"))
    embed = np.zeros((100, 3, W_E.shape[1]))
    embed[:, :2] = _sklearn_kept(W_E[:10], [lin])[tokens[:, :2]]
    embed[:, 2] = W_E[10]
    logits_f, pre_f = _forward(run.params, tokens)
    logits_a, pre_a = _forward(run.params, tokens, embed)
    post_f, post_a = np.maximum(pre_f, 0), np.maximum(pre_a, 0)
    W_L = np.asarray(run.params["blocks_0"]["mlp"]["W_out"], np.float64) @ np.asarray(run.params["unembed"]["W_U"])
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num([np.corrcoef(post_f[:, j], target)[0, 1] for j in range(512)])

    # activation deltas on the failing inputs, and the fit of the pre-activation delta on the parabola PC
    d = a["activation_deltas"]
    fail = logits_a.argmax(-1) != target
    fail = fail if fail.any() else np.ones_like(fail)
    np.testing.assert_allclose(d["mean_abs_post_delta_on_failures"], np.abs(post_f - post_a)[fail].mean(0),
                               atol=2e-4)
    scores = PCA().fit_transform(W_E[:10])
    X = np.stack([scores[tokens[:, 0], par], scores[tokens[:, 1], par]], 1)
    dz = pre_f - pre_a
    moved = dz.std(0) > 1e-9
    r2_lin = [_r2(dz[:, j], X) for j in np.flatnonzero(moved)]
    r2_quad = [_r2(dz[:, j], PolynomialFeatures(2, include_bias=False).fit_transform(X)) for j in np.flatnonzero(moved)]
    assert d["pre_delta_vs_removed_pc_linear_r2"]["mean"] == pytest.approx(np.mean(r2_lin), abs=2e-3)
    assert d["pre_delta_vs_removed_pc_poly2_r2"]["mean"] == pytest.approx(np.mean(r2_quad), abs=2e-3)

    # line fits on a + b, full and ablated
    s = target[:, None].astype(float)
    for model, pre in (("full", pre_f), ("ablated", pre_a)):
        post = np.maximum(pre, 0)
        live = post.std(0) > 1e-9
        want = np.mean([_r2(pre[:, j], s) for j in np.flatnonzero(live)])
        assert a["sum_fits"][model]["pre_relu"]["mean"] == pytest.approx(want, abs=2e-3)
        assert a["sum_fits"][model]["post_relu"]["neurons_fitted"] == int(live.sum())

    # flips at (0, 0) and their logit change
    fl = a["flips_at_0_0"]
    on = np.flatnonzero((pre_f[0] > 0) & (pre_a[0] <= 0))
    off = np.flatnonzero((pre_f[0] <= 0) & (pre_a[0] > 0))
    assert fl["on_in_full_off_in_ablated"]["neurons"] == list(on)
    assert fl["off_in_full_on_in_ablated"]["neurons"] == list(off)
    flipped = np.concatenate([on, off])
    np.testing.assert_allclose(fl["flipped_logit_change"], (post_f[0] - post_a[0])[flipped] @ W_L[flipped], atol=2e-3)

    # top contributors at (0, 0)
    total = np.abs(post_f[0][:, None] * W_L).sum(1)
    assert set(a["top_contributors_at_0_0"]["neurons"][:5]) == set(np.argsort(-total)[:5])

    # W_L over the 100 key neurons
    key = np.argsort(-np.abs(corr))[:100]
    np.testing.assert_allclose(a["W_L_key_neurons"]["positivity_ratio"], (W_L[key] > 0).mean(0), atol=0.011)
    np.testing.assert_allclose(a["W_L_key_neurons"]["max_abs"], np.abs(W_L[key]).max(0), rtol=1e-3)

    # DFT of the live neurons' W_L columns, with an explicit DFT matrix
    live = post_f.std(0) > 1e-9
    k = np.arange(11)[:, None] * np.arange(20)[None]
    mags = np.abs(W_L[live] @ np.exp(-2j * np.pi * k / 20).T)  # [live, 11]
    assert a["W_L_column_dft"]["neurons_peaking_at_frequency"] == list(
        np.bincount(1 + mags[:, 1:].argmax(1), minlength=11))

    # mean Poly2 coefficients per correlation group, fitted by scikit-learn
    X4 = np.stack([scores[tokens[:, 0], lin], scores[tokens[:, 1], lin], scores[tokens[:, 0], par],
                   scores[tokens[:, 1], par]], 1)
    F = PolynomialFeatures(2, include_bias=False).fit_transform(X4)
    group = a["coefficient_groups"]["r >= 0.9"]
    members = np.flatnonzero(live & (corr >= 0.9))
    assert group["neurons"] == len(members)
    if len(members):
        coef = np.mean([LinearRegression().fit(F, pre_f[:, j]).coef_ for j in members], 0)
        got = np.array(list(group["mean_coefficients"].values()))
        np.testing.assert_allclose(np.abs(got), np.abs(coef), rtol=0.05, atol=1e-3 * np.abs(coef).max())

    # SVD of W_E against numpy
    sv = np.linalg.svd(W_E, compute_uv=False)
    np.testing.assert_allclose(a["W_E_svd"]["W_E"]["singular_values"], sv, rtol=1e-4)
    assert a["W_E_svd"]["W_E"]["top2_share_of_squared"] == pytest.approx((sv[:2] ** 2).sum() / (sv ** 2).sum(), rel=1e-4)

    # attention to '=' removed: the numpy forward with the edited pattern
    def no_equals(pattern):
        pattern = pattern.copy()
        ab = pattern[:, :, 2, :2]
        pattern[:, :, 2, :2] = ab / ab.sum(-1, keepdims=True)
        pattern[:, :, 2, 2] = 0
        return pattern
    edited, _ = _forward(run.params, tokens, pattern_edit=no_equals)
    assert a["attention_to_equals"]["accuracy_after"] == pytest.approx(
        np.mean(edited.argmax(-1) == target), abs=0.011)

    # dead neurons: final count, and the death epochs from the snapshot files
    dn = a["dead_neurons"]
    dead = post_f.max(0) <= 0
    assert dn["dead_neurons"] == int(dead.sum())
    alive = [np.maximum(_forward(tm.init_params(g.cfg, jax.random.key(999)), tokens)[1], 0).max(0) > 0]
    for s in range(len(run.snapshot_epochs)):
        alive.append(np.maximum(_forward(jax.tree.map(lambda x: x[s], run.snapshots), tokens)[1], 0).max(0) > 0)
    alive.append(~dead)
    epochs = [0, *map(int, run.snapshot_epochs), int(run.train_history["epoch"][-1])]
    alive = np.array(alive)
    want = [epochs[np.flatnonzero(alive[:, n]).max() + 1] if alive[:, n].any() else 0 for n in np.flatnonzero(dead)]
    assert dn["death_epoch"] == want
    assert dn["dead_at_init"] == int((~alive[0]).sum())


def test_pc_kept_embeddings_and_feature_pcs_against_sklearn():
    task = gk.AdditionTask(10, modular=False)
    cfg = gk.model_config(task, d_model=16, d_head=4, d_mlp=32)
    params = tm.init_params(cfg, jax.random.key(3))
    W_E = np.asarray(params["embed"]["W_E"][:10])
    keep_pc1 = grokking_addition.pc_kept_embeddings(W_E, (0,))
    sk = PCA(n_components=1).fit(W_E)  # independent: sklearn's rank-1 PCA reconstruction
    np.testing.assert_allclose(keep_pc1, sk.inverse_transform(sk.transform(W_E)), atol=1e-5)
    sk2 = PCA().fit(W_E)
    pc2_part = np.outer((W_E - sk2.mean_) @ sk2.components_[1], sk2.components_[1])
    np.testing.assert_allclose(grokking_addition.pc_kept_embeddings(W_E, [i for i in range(9) if i != 1]),
                               W_E - pc2_part, atol=1e-5)
    np.testing.assert_allclose(grokking_addition.pc_kept_embeddings(W_E, (1, 3)), _sklearn_kept(W_E, (1, 3)),
                               atol=1e-5)

    # An embedding built from known directions: parity carries the most variance, then the linear
    # feature, then the parabola; the feature PCs must say so whatever the PCA's order.
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((16, 3)))
    d = np.arange(10.0)
    built = np.stack([5 * (-1.0) ** d, (d - 4.5), 0.3 * ((d - 4.5) ** 2 - 8.25)], 1) @ basis.T
    scores = PCA().fit_transform(built)
    assert grokking_addition.feature_pcs(scores, 10, 3) == {"parity": 0, "linear": 1, "parabola": 2}

    tokens = gk.all_inputs(task)
    patched, _ = tm.apply(cfg, params, tokens, intervention=grokking_addition.embedding_patch(tokens, keep_pc1))
    # the same ablation as a weight edit: '=' keeps its own embedding row
    edited = jax.tree.map(lambda x: x, params)
    edited["embed"]["W_E"] = params["embed"]["W_E"].at[:10].set(keep_pc1)
    want, _ = tm.apply(cfg, edited, tokens)
    np.testing.assert_allclose(np.asarray(patched), np.asarray(want), atol=1e-5)


def test_detect_phases_from_synthetic_measures():
    epochs = np.arange(100, 4001, 100)
    test = np.interp(epochs, [100, 600, 2000, 2400, 3000, 4000], [4.5, 30.0, 8.0, 1.0, 1e-3 / 2, 1e-6])
    restricted = np.interp(epochs, [100, 600, 2400, 4000], [4.0, 5.0, 0.01, 1e-6])  # falls through formation
    phases, rules, evidence = grokking_modular.detect_phases(epochs, test, restricted, p=59, cleanup_test_loss=1e-3)
    first_below = lambda level: int(epochs[np.argmax(test < level)])
    formation = first_below(np.log(59))
    assert phases == {"memorisation ends": 600, "circuit formation ends": formation,
                      "cleanup ends": first_below(1e-3)}
    assert list(rules) == list(phases)
    during = (epochs >= 600) & (epochs < formation)
    assert evidence == pytest.approx({
        "restricted_loss_at_memorisation_end": 5.0,
        "restricted_loss_at_circuit_formation_end": float(np.interp(formation, [600, 2400], [5.0, 0.01])),
        "lowest_test_loss_during_circuit_formation": float(test[during].min()),
        "uniform_guess_loss": np.log(59)})
    # a run that never generalises: memorisation ends at its (latest) test-loss peak, nothing after, no evidence
    phases, _, evidence = grokking_modular.detect_phases(epochs, np.linspace(5, 20, len(epochs)), restricted, p=59,
                                                         cleanup_test_loss=1e-3)
    assert phases == {"memorisation ends": 4000} and evidence == {}
    # a peak at the first snapshot and a test loss that never drops below log(p): one boundary
    phases, _, _ = grokking_modular.detect_phases(epochs, np.linspace(20, 5, len(epochs)), restricted, p=59,
                                                  cleanup_test_loss=1e-3)
    assert phases == {"memorisation ends": 100}


def test_config_variants_and_workdir_plumbing(tmp_path):
    for variant in ("default", "nanda", "addition", "quick", "addition,quick", "nanda,quick"):
        c = get_config(variant)
        assert c.variant == variant and c.study == "grokking"
        assert c.num_epochs % c.eval_every == 0 and c.num_epochs % c.snapshot_every == 0
    small = get_config("addition,quick")
    assert (small.task, small.p, small.num_epochs) == ("plain", 10, 1000)  # quick shrinks the chosen setting
    assert get_config("quick,num_epochs=200,optimizer.lr=1e-3").num_epochs == 200
    assert get_config("quick,optimizer.lr=1e-3").optimizer.lr == 1e-3
    with pytest.raises(experiment.StudyError, match=r"unknown field 'optimizer.lrr' \(did you mean 'optimizer.lr'\?\)"):
        get_config("quick,optimizer.lrr=1")
    with pytest.raises(experiment.StudyError, match=r"unknown grokking variant 'nandaa' \(did you mean 'nanda'\?\)"):
        get_config("nandaa")
    with pytest.raises(AttributeError):  # locked: a misspelt field is never added silently
        get_config("quick").num_epoch = 5
    assert get_config(None).to_dict() == get_config("default").to_dict()
    nanda = get_config("nanda")
    assert (nanda.p, nanda.frac_train, nanda.num_epochs, nanda.snapshot_every) == (113, 0.3, 25000, 100)
    assert (nanda.optimizer.lr, nanda.optimizer.weight_decay, nanda.optimizer.b2) == (1e-3, 1.0, 0.98)
    add = get_config("addition")
    assert (add.task, add.p, add.frac_train, add.num_epochs) == ("plain", 10, 0.72, 10000)
    with pytest.raises(ValueError, match="unknown grokking variant"):
        get_config("nope")
    wd = experiment.open_workdir(tmp_path / "w", {"a": 1, "b": {"c": [1, 2]}})
    assert experiment.open_workdir(wd.path, {"a": 1, "b": {"c": (1, 2)}}) == wd  # same config: reopened
    with pytest.raises(experiment.ConfigMismatchError, match=r"b.c: \[1, 2\] -> \[1, 3\]"):
        experiment.open_workdir(wd.path, {"a": 1, "b": {"c": [1, 3]}})
    experiment.write_results(wd, {"x": np.float32(0.5), "nan": float("nan"), "arr": np.arange(3)})
    assert json.loads(wd.results_path.read_text()) == {"x": 0.5, "nan": None, "arr": [0, 1, 2]}
    experiment.write_metrics(wd, [{"step": 1, "train/loss": np.float32(2.0)}])
    assert experiment.read_metrics(wd) == [{"step": 1, "train/loss": 2.0}]
    with pytest.raises(ValueError, match="needs a 'step'"):
        experiment.write_metrics(wd, [{"train/loss": 1.0}])


@pytest.mark.parametrize("p, step", [(59, 2), (113, 4), (23, 1), (10, 3)])
def test_fourier_tick_labels_name_the_rows_they_mark(p, step):
    """Each labelled row of the Fourier heatmaps is the function its label says (numpy, not toymech)."""
    basis = np.asarray(fourier.fourier_basis(p)[0], np.float64)  # [p, p] rows: const, cos 1, sin 1, ...
    rows, labels = grokking_modular.fourier_ticks(p, step)
    x = np.arange(p)
    assert labels[0] == "Constant" and {lab.split()[0] for lab in labels[1:]} == ({"cos", "sin"} if step == 1 else {"cos"})
    for row, label in zip(rows, labels):
        if label == "Constant":
            want = np.ones(p)
        else:
            kind, k = label.split()
            want = (np.cos if kind == "cos" else np.sin)(2 * np.pi * int(k) * x / p)
        np.testing.assert_allclose(basis[row], want / np.linalg.norm(want), atol=1e-6)

"""End-to-end tests of the grokking experiment (configs/grokking.py, experiments/grokking.py,
toymech.studies.grokking*) and of the workdir plumbing in toymech.experiment.

The quick variants run the whole study (training, every analysis, report) in seconds."""

import json
import shutil

import jax
import numpy as np
import pytest
from sklearn.decomposition import PCA

import toymech as tm
from toymech import checkpoint, experiment
from toymech import interventions as iv
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
    assert "memorisation ends" in prog["phases"]
    for name in ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "sum_squared_weights"):
        assert len(prog[name]) == 6 and all(v is not None for v in prog[name])
    # the snapshot losses agree with the training record at the same epochs
    test_at = {r["step"]: r["test/loss"] for r in rows}
    np.testing.assert_allclose(prog["test_loss"], [test_at[e] for e in prog["snapshot_epochs"]], rtol=1e-4)
    found = check_report(quick_workdir / "report.html")
    pngs = {f"figures/{p.name}" for p in (quick_workdir / "figures").glob("*.png")}
    assert set(found.images) == pngs and len(pngs) >= 12  # every figure is in the report, and only those


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


def test_addition_quick_end_to_end(grokking_addition_quick):
    config, workdir = grokking_addition_quick.config, grokking_addition_quick.workdir
    results = json.loads((workdir / "results.json").read_text())
    a = results["analysis"]
    assert set(a) >= {"embedding_pca", "attention", "probe", "correlations", "neuron_fits", "pc2_ablation",
                      "skip_ablation", "simulated_logits", "logit_fourier", "W_L_pca", "logit_fits",
                      "ours_vs_notebook"}
    ratio = a["embedding_pca"]["explained_variance_ratio"]
    assert abs(sum(ratio) - 1) < 1e-4 and ratio == sorted(ratio, reverse=True)
    assert len(a["logit_fits"]["poly2_r2_per_logit"]) == 20
    check_report(workdir / "report.html")
    # Independent recomputation from the final checkpoint, with scikit-learn's PCA and plain forward passes.
    task = gk.AdditionTask(10, modular=False)
    cfg = gk.model_config(task, **config.model.to_dict())
    params = checkpoint.load_pytree(checkpoint.latest_checkpoint(str(workdir / "checkpoints")))["params"]
    tokens, target = gk.all_inputs(task), gk.labels(task)
    logits, acts = tm.apply(cfg, params, tokens, capture=("blocks.0.mlp.hook_post",))
    before = float(np.mean(np.argmax(np.asarray(logits[:, -1]), -1) == target))
    assert a["pc2_ablation"]["accuracy_before"] == pytest.approx(before)
    W_E = np.asarray(params["embed"]["W_E"][:10], np.float64)
    pca = PCA(n_components=1).fit(W_E)
    embed = np.zeros((len(tokens), 3, cfg.d_model), np.float32)
    embed[:, :2] = pca.inverse_transform(pca.transform(W_E))[tokens[:, :2]]  # mean + PC1 part of each digit
    ablated, _ = tm.apply(cfg, params, tokens, intervention=iv.patch("hook_embed", embed, pos=np.array([1, 1, 0], bool)))
    after = float(np.mean(np.argmax(np.asarray(ablated[:, -1]), -1) == target))
    assert a["pc2_ablation"]["accuracy_after"] == pytest.approx(after, abs=0.011)  # one of 100 inputs may tie
    assert a["ours_vs_notebook"]["PC2 ablation: accuracy after"]["ours"] == pytest.approx(after, abs=0.011)
    post = np.asarray(acts["blocks.0.mlp.hook_post"][:, -1], np.float64)  # [100, d_mlp]
    with np.errstate(invalid="ignore", divide="ignore"):  # dead neurons have no correlation
        r = np.array([np.corrcoef(post[:, j], target)[0, 1] for j in range(post.shape[1])])
    assert a["correlations"]["neurons_with_r_above_0.9"] == int(np.sum(np.nan_to_num(r) > 0.9))


def test_pc2_ablation_patch_equals_editing_the_embedding_weights():
    task = gk.AdditionTask(10, modular=False)
    cfg = gk.model_config(task, d_model=16, d_head=4, d_mlp=32)
    params = tm.init_params(cfg, jax.random.key(3))
    W_E = np.asarray(params["embed"]["W_E"][:10])
    keep_pc1, drop_pc2 = grokking_addition.pc_ablated_embeddings(W_E)
    sk = PCA(n_components=1).fit(W_E)  # independent: sklearn's rank-1 PCA reconstruction
    np.testing.assert_allclose(keep_pc1, sk.inverse_transform(sk.transform(W_E)), atol=1e-5)
    sk2 = PCA().fit(W_E)
    pc2_part = np.outer((W_E - sk2.mean_) @ sk2.components_[1], sk2.components_[1])
    np.testing.assert_allclose(drop_pc2, W_E - pc2_part, atol=1e-5)

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
    excluded = np.interp(epochs, [100, 900, 2400, 4000], [0.5, 0.01, 9.0, 8.0])  # falls, then rises
    phases, rules = grokking_modular.detect_phases(epochs, test, excluded, p=59, cleanup_test_loss=1e-3)
    first_below = lambda level: int(epochs[np.argmax(test < level)])
    assert phases == {"memorisation ends": 900, "circuit formation ends": first_below(np.log(59)),
                      "cleanup ends": first_below(1e-3)}
    assert list(rules) == list(phases)
    # a run that never generalises has only the memorisation boundary (the excluded-loss minimum)
    phases, _ = grokking_modular.detect_phases(epochs, np.linspace(5, 20, len(epochs)), excluded, p=59,
                                               cleanup_test_loss=1e-3)
    assert phases == {"memorisation ends": 900}


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

"""End-to-end test of study 2 (experiments/reverse.py and its library function on the quick
config); its analyses are checked against single forward passes and numpy."""

import json
import math

import jax
import numpy as np
import pytest

import toymech as tm
from toymech import experiment
from toymech.analysis import edges
from toymech.report import Report, check_report
from toymech.studies import common
from toymech.studies import reverse as study
from toymech.studies import reverse_circuits as rc
from toymech.tasks import reverse as rv

from conftest import run_binary, study_config


def get_config(arg):
    return study_config("reverse", arg)


@pytest.fixture(scope="module")
def quick(reverse_quick):
    """The session's quick run (tests/conftest.py), and the trained model reloaded from its workdir:
    (config, path, results, run)."""
    config, path, results = reverse_quick.config, reverse_quick.workdir, reverse_quick.results
    run = study.train_model(config, experiment.open_workdir(path, config))  # resumes: nothing left to train
    return config, path, results, run


def test_workdir_has_every_output(quick):
    config, path, results, _ = quick
    assert json.loads((path / "results.json").read_text()) == experiment.to_jsonable(results)
    images = check_report(path / "report.html").images
    assert set(images) == {f"figures/{p.name}" for p in (path / "figures").glob("*.png")} and len(images) >= 8
    rows = experiment.read_metrics(experiment.Workdir(path))
    assert [r["step"] for r in rows] == [1, 2]
    # The notebook's LambdaLR per epoch: (epoch+1)/warmup, then 0.65 (1 + cos(pi (epoch-warmup)/(total-warmup))).
    o = config.optimizer
    expected = [o.lr * ((e + 1) / o.warmup if e < o.warmup else
                        0.65 * (1 + math.cos(math.pi * (e - o.warmup) / (o.total - o.warmup)))) for e in range(2)]
    np.testing.assert_allclose([r["lr"] for r in rows], expected, rtol=1e-6)
    tr = results["training"]
    assert (tr["n_train"], tr["n_holdout"]) == (60000, 5536)
    assert tr["final_holdout_accuracy"] == pytest.approx(rows[-1]["holdout/accuracy"])
    assert "seed_sweep" not in results  # the quick variant sweeps no seeds


def test_weight_ablations_match_single_forward_passes(quick):
    _, _, results, run = quick
    ab = results["analysis"]["weight_ablations"]
    holdout = run.holdout
    targets = holdout[:, 9:]
    for name, acc in zip(ab["names"], ab["holdout_accuracy"]):
        flat = {k: np.asarray(v) for k, v in tm.flatten_params(run.params).items()}
        if name != "none":
            flat[name] = np.zeros_like(flat[name])
        logits, _ = tm.apply(run.cfg, tm.unflatten_params(flat), holdout[:, :-1])
        assert acc == pytest.approx(np.mean(np.asarray(logits)[:, 8:].argmax(-1) == targets), abs=1e-6)
    assert results["training"]["final_holdout_accuracy"] == pytest.approx(ab["holdout_accuracy"][0], abs=1e-6)


def test_attention_and_embedding_views_match_numpy(quick):
    _, _, results, run = quick
    holdout = run.holdout
    a = results["analysis"]
    _, acts = tm.apply(run.cfg, run.params, holdout[:, :-1],
                       capture=("blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"))
    pattern = np.asarray(acts["blocks.0.attn.hook_pattern"])[:, 0]  # [n, q, k]
    mirror = np.stack([pattern[:, 8 + i, 8 - i] for i in range(8)], axis=1)  # y_i copies x_(7-i) at position 8-i
    np.testing.assert_allclose(a["attention"]["layer_0"]["mirror_weight"][0], mirror.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a["attention"]["layer_0"]["mean"][0], pattern[:, 8:16, 1:9].mean(0), rtol=1e-4, atol=1e-6)
    final = np.asarray(acts["blocks.1.hook_resid_post"])[:, 8:]  # [n, 8, d]
    W_E = np.asarray(run.params["embed"]["W_E"])[:4]
    cos = (final / np.linalg.norm(final, axis=-1, keepdims=True)) @ (W_E / np.linalg.norm(W_E, axis=-1,
                                                                                          keepdims=True)).T
    cr = a["final_resid_cosine"]
    assert cr["target"]["fraction"] == pytest.approx(np.mean(cos.argmax(-1) == holdout[:, 9:]), abs=1e-6)
    np.testing.assert_allclose(cr["examples"], cos[:len(cr["examples"])], atol=1e-5)


def test_copy_route_against_forward_passes(quick):
    _, _, results, run = quick
    cr = results["analysis"]["copy_route"]
    holdout = run.holdout
    targets = holdout[:, 9:]
    flat = {k: np.asarray(v) for k, v in tm.flatten_params(run.params).items()}
    zeroed = {}
    for layer in (0, 1):
        edited = dict(flat, **{f"blocks.{layer}.attn.W_O": np.zeros_like(flat[f"blocks.{layer}.attn.W_O"])})
        logits, _ = tm.apply(run.cfg, tm.unflatten_params(edited), holdout[:, :-1])
        zeroed[layer] = float(np.mean(np.asarray(logits)[:, 8:].argmax(-1) == targets))
        assert cr["holdout_accuracy_with_W_O_zeroed"][layer] == pytest.approx(zeroed[layer], abs=1e-6)
    assert cr["copying_layer"] == min(zeroed, key=zeroed.get)
    _, acts = tm.apply(run.cfg, run.params, holdout[:, :-1], capture=("blocks.1.attn.hook_pattern",))
    pattern = np.asarray(acts["blocks.1.attn.hook_pattern"])[:, 0]  # [n, q, k]
    mirror = np.stack([pattern[:, 8 + i, 8 - i] for i in range(8)], axis=1)  # y_i copies x_(7-i) at position 8-i
    assert cr["mean_mirror_weight"][1] == pytest.approx(mirror.mean(), rel=1e-4)
    most = np.stack([pattern[:, 8 + i].argmax(-1) == 8 - i for i in range(8)], axis=1)
    assert cr["mirror_is_most_attended"][1] == pytest.approx(most.mean(), abs=1e-6)


def test_rerun_resumes_and_the_binary_refuses_another_config(quick, capsys):
    config, path, results, _ = quick
    again = study.train_and_evaluate(config, path)  # finished run: reloaded, not retrained
    assert "[train] epoch" not in capsys.readouterr().err
    np.testing.assert_array_equal(again["analysis"]["weight_ablations"]["holdout_accuracy"], results["analysis"]["weight_ablations"][
        "holdout_accuracy"])
    proc = run_binary("reverse", path, "--config=configs/reverse.py:quick", "--config.optimizer.lr=0.001", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "optimizer.lr: 0.006 -> 0.001" in proc.stderr


def test_seed_sweep_section(quick, tmp_path):
    _, _, _, run = quick
    epochs = np.arange(1, 6)
    acc = np.array([[0.5, 0.9, 1.0, 1.0, 1.0], [0.4, 0.6, 0.7, 0.9, 0.99], [0.3, 1.0, 0.9, 1.0, 0.95]])
    wd = experiment.Workdir(tmp_path)
    rep = Report("sweep", directory=wd.path)
    got = study.seed_sweep_numbers({"seeds": [3, 4, 5], "epochs": epochs, "holdout_accuracy": acc})
    study.seed_sweep_section(got, run, rep)
    assert got["first_epoch_holdout_accuracy_100"] == [3, None, 2]
    assert got["fraction_of_seeds_reaching_100"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(got["final_holdout_accuracy"], [1.0, 0.99, 0.95])
    np.testing.assert_array_equal(got["best_holdout_accuracy"], [1.0, 0.99, 1.0])
    np.testing.assert_array_equal(got["epochs_at_100"], [3, 0, 2])
    assert got["epochs_below_100_after_first_100"] == [[], [], [3, 5]]
    assert check_report(rep.write(wd.report_path)).images == ("figures/seed_sweep.png",)


def test_config_variants():
    default, quick = get_config("default"), get_config("quick")
    assert get_config(None).to_dict() == default.to_dict()
    assert (default.n_train, default.batch_size, default.num_epochs, default.seed_sweep) == (60000, 256, 40, ())
    assert get_config("seeds").seed_sweep == tuple(range(8))
    o = default.optimizer
    assert (o.name, o.lr, o.weight_decay, o.clip_norm, o.warmup, o.total, o.peak) == (
        "adamw", 6e-3, 0.01, 1.0, 5, 40, 1.3)
    assert rv.model_config(**default.model.to_dict()) == rv.model_config()
    assert quick.optimizer.total == quick.num_epochs
    with pytest.raises(ValueError, match="unknown reverse variant"):
        get_config("nope")


def test_autoregressive_accuracy_matches_a_loop_without_cache(quick):
    _, path, results, run = quick
    ar = results["analysis"]["autoregressive"]
    holdout = run.holdout
    seq = holdout[:, :9]  # [BOS, x0..x7]; rerun the model on the growing sequence, greedy
    for _ in range(8):
        logits, _ = tm.apply(run.cfg, run.params, seq)
        seq = np.concatenate([seq, np.asarray(logits)[:, -1].argmax(-1)[:, None]], axis=1)
    right = seq[:, 9:] == holdout[:, 9:]
    assert ar["autoregressive_exact_match"] == pytest.approx(right.all(-1).mean(), abs=1e-12)
    assert ar["autoregressive_token_accuracy"] == pytest.approx(right.mean(), abs=1e-12)
    np.testing.assert_allclose(ar["autoregressive_by_position"], right.mean(0), atol=1e-12)
    logits, _ = tm.apply(run.cfg, run.params, holdout[:, :-1])
    forced = np.asarray(logits)[:, 8:].argmax(-1) == holdout[:, 9:]
    assert ar["teacher_forced_token_accuracy"] == pytest.approx(forced.mean(), abs=1e-12)
    assert ar["teacher_forced_token_accuracy"] == pytest.approx(results["training"]["final_holdout_accuracy"], abs=1e-6)
    # All 8 right when fed the truth <=> all 8 right when fed its own outputs.
    assert ar["teacher_forced_exact_match"] == pytest.approx(forced.all(-1).mean(), abs=1e-12)
    assert ar["autoregressive_exact_match"] == ar["teacher_forced_exact_match"]
    assert "Generating the outputs" in (path / "report.html").read_text()
    assert json.loads((path / "results.json").read_text())["analysis"]["autoregressive"][
        "autoregressive_exact_match"] == ar["autoregressive_exact_match"]


def test_circuit_in_results_matches_the_edge_level_pass(quick):
    """The y3 circuit from results.json, rebuilt as edge weights and run through edges.edge_forward,
    gives the metric and recovered fraction written there."""
    _, path, results, run = quick
    c = results["analysis"]["circuit"]
    names = edges.graph(run.cfg).edges
    assert len(names) == c["n_edges"] == 32 and set(c["kept"]) <= set(names) and c["n_kept"] == len(c["kept"])
    clean, corrupted = rc.position_pairs(run.holdout)
    assert clean.shape == (rc.CIRCUIT_SEQUENCES, 16) == (c["n_sequences"], 16)
    x = rv.N_DIGITS - 1 - rc.OUTPUT  # the resampled input, x4: position 5 of the fed tokens
    assert set(np.flatnonzero((clean != corrupted).any(0))) == {1 + x, 9 + rc.OUTPUT}  # x4 and the y3 it sets
    pos = int(rv.OUTPUT_POSITIONS[rc.OUTPUT])
    logp = lambda x: np.asarray(jax.nn.log_softmax(np.asarray(x, np.float64)[:, pos], axis=-1))
    kl = lambda logits: (np.exp(logp(clean_logits)) * (logp(clean_logits) - logp(logits))).sum(-1).mean()
    clean_logits, _ = tm.apply(run.cfg, run.params, clean)
    full = kl(tm.apply(run.cfg, run.params, corrupted)[0])
    metric = kl(edges.edge_forward(run.cfg, run.params, clean, corrupted, np.isin(names, c["kept"]).astype(float)))
    assert c["metric"] == pytest.approx(metric, rel=1e-3, abs=1e-5)
    assert c["metric_corrupted"] == pytest.approx(full, rel=1e-4)
    assert c["recovered"] == pytest.approx(1 - metric / full, abs=1e-4)
    assert c["tau"] == pytest.approx(rc.TAU_FRACTION * full, rel=1e-3)
    assert c["faithfulness_recovered"][-1] == pytest.approx(1, abs=1e-5)
    assert c["faithfulness_recovered"][0] == pytest.approx(0, abs=1e-5)
    assert sorted(c["eap_ig_scores"]) == sorted(names)
    # the report shows the circuit, its faithfulness curve and the heads on its kept paths
    html = (path / "report.html").read_text()
    assert f"Circuit of output y{rc.OUTPUT}" in html
    assert f"to the logits: {', '.join(sorted(common.heads_on_paths(c['kept']))) or 'none'}." in html
    assert (path / "figures" / "circuit_y3.png").is_file() and (path / "figures" / "circuit_y3_faithfulness.png").is_file()

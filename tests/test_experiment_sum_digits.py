"""End-to-end tests of study 4 (configs/sum_digits.py, experiments/sum_digits.py,
toymech.studies.sum_digits*): the challenge's numbers, the quick binary with every analysis
checked against independent computations, and a tiny training run with resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import checkpoint, experiment, weights
from toymech import interventions as iv
from toymech.report import check_report
from toymech.studies import sum_digits as study
from toymech.analysis import edges
from toymech.studies import common
from toymech.studies import sum_digits_analysis as an
from toymech.studies import sum_digits_circuits as sc
from toymech.tasks import sum_digits as sd

from conftest import study_config


def get_config(arg):
    return study_config("sum_digits", arg)


@pytest.fixture(scope="module")
def processed():
    """The challenge's model, processed, and the quick variant's 64 evaluation sequences."""
    config = get_config("quick")
    cfg, params = weights.process_weights(*study.load_model(config))
    return cfg, params, study.evaluation_tokens(config)


@pytest.fixture(scope="module")
def quick_workdir(sum_digits_quick):
    """The binary's quick run (tests/conftest.py, shared with the browser test)."""
    return sum_digits_quick.workdir


@pytest.fixture(scope="module")
def quick(sum_digits_quick):
    return sum_digits_quick.results


def test_the_challenge_checkpoint_reproduces_the_challenge_numbers():
    config = get_config("default")
    cfg, params = study.load_model(config)
    pcfg, pparams = weights.process_weights(cfg, params)
    tokens = study.evaluation_tokens(config)
    ev = study.evaluate(pcfg, pparams, tokens)
    assert ev["n_sequences"] == 1000
    got = {k: round(ev[k], 3) for k in study.REFERENCE_EVALUATION}
    assert got == study.REFERENCE_EVALUATION == {"mean_cross_entropy": 0.007, "mean_prob_correct": 0.993,
                                                 "median_prob_correct": 0.996, "min_prob_correct": 0.759}
    assert study.max_log_prob_change(cfg, params, pcfg, pparams, tokens[:32]) < 1e-4


def test_quick_binary_writes_the_whole_workdir(quick_workdir, quick):
    config = get_config("quick")
    assert json.loads((quick_workdir / "config.json").read_text()) == experiment.config_to_dict(config)
    assert quick["mode"] == "load" and quick["evaluation"]["n_sequences"] == 64
    assert set(quick["analysis"]) == {"unembed", "head_ablations", "qkv_mean_ablations",
                                      "qkv_mean_ablations_on_carry_subsets", "layer0_qk",
                                      "direct_logit_attribution", "layer1_ov", "carries", "notebook_comparison",
                                      "circuits"}
    found = check_report(quick_workdir / "report.html")
    pngs = {f"figures/{p.name}" for p in (quick_workdir / "figures").glob("*.png")}
    assert set(found.images) == pngs and len(pngs) >= 20  # every figure is in the report, and only those
    html = (quick_workdir / "report.html").read_text()
    assert "0.759" in html and "challenge" in html


def test_quick_evaluation_matches_a_direct_computation(processed, quick):
    cfg, params, tokens = processed
    logits, _ = tm.apply(cfg, params, tokens)
    logp = np.asarray(jax.nn.log_softmax(logits[:, 9:13], axis=-1), np.float64)
    prob = np.exp(np.take_along_axis(logp, tokens[:, 10:14, None], -1)[..., 0])
    ev = quick["evaluation"]
    assert ev["mean_cross_entropy"] == pytest.approx(-np.log(prob).mean(), rel=1e-4)
    assert ev["median_prob_correct"] == pytest.approx(np.median(prob), rel=1e-5)
    assert ev["min_prob_correct"] == pytest.approx(prob.min(), rel=1e-5)


def test_unembedding_is_a_circle_of_digits(processed, quick):
    cfg, params, _ = processed
    u = quick["analysis"]["unembed"]
    assert u["significant_dims"] == [19, 25, 26, 37]  # the notebook's dimensions
    assert u["significant_dims_dominant_frequency"] == [1, 1, 1, 1]
    assert u["power_fraction_by_frequency"][0] > 0.95
    W = np.asarray(params["unembed"]["W_U"])[:, :10]
    np.testing.assert_allclose(u["singular_values"], np.linalg.svd(W, compute_uv=False), rtol=1e-4, atol=1e-5)
    f = np.fft.rfft(W[[19, 25, 26, 37]], axis=1)[:, 1]
    np.testing.assert_allclose(u["significant_dims_frequency_1_phase"], np.angle(f), atol=1e-4)
    steps = np.degrees(u["digit_angle_steps"])  # digits in order around the circle, all one way
    assert (np.sign(steps) == np.sign(steps[0])).all() and abs(steps.mean()) == pytest.approx(36, abs=1e-3)
    assert u["digit_radius_cv"] < 0.2


def test_phase_convention_decodes_a_cosine_peaked_at_each_digit():
    j = np.arange(10)
    for d in range(10):
        logits = 3 * np.cos(2 * np.pi * (j - d) / 10) + 0.5
        phase = np.angle(np.fft.rfft(logits)[1])
        assert an.decode_phase(phase) == d
        assert np.exp(1j * phase) == pytest.approx(np.exp(1j * an.digit_phase(d)), abs=1e-9)


def _scores(cfg, params, tokens, intervention):
    logits, _ = tm.apply(cfg, params, tokens, intervention=intervention)
    loss, correct = sd.token_losses(logits, jnp.asarray(tokens))
    return np.asarray(loss), np.asarray(correct)


def test_ablation_numbers_equal_hand_made_interventions(processed, quick):
    cfg, params, tokens = processed
    heads, qkv = quick["analysis"]["head_ablations"], quick["analysis"]["qkv_mean_ablations"]
    base, _ = _scores(cfg, params, tokens, None)
    assert heads["mean"]["baseline_loss"] == pytest.approx(base.mean(), rel=1e-4)
    _, acts = tm.apply(cfg, params, tokens, capture=("blocks.1.attn.hook_z", "blocks.1.attn.hook_k"))
    # zero ablation of H0.1's output
    loss, correct = _scores(cfg, params, tokens, iv.zero("blocks.0.attn.hook_z", head=1))
    assert heads["zero"]["loss_increase"][0][1] == pytest.approx(loss.mean() - base.mean(), rel=1e-3)
    assert heads["zero"]["accuracy_per_digit"][0][1] == pytest.approx(correct.mean(0).tolist())
    # mean ablation of H1.2's output: patch in its batch mean at each position, computed here
    z_mean = np.asarray(acts["blocks.1.attn.hook_z"]).mean(0, keepdims=True)
    loss, _ = _scores(cfg, params, tokens, iv.patch("blocks.1.attn.hook_z", z_mean, head=2))
    assert heads["mean"]["loss_increase_per_digit"][1][2] == pytest.approx(
        (loss.mean(0) - base.mean(0)).tolist(), rel=1e-3, abs=1e-5)
    carry = sd.carry_in(tokens)
    split = heads["mean"]["loss_increase_per_digit_carry_split"][1][2]  # [2 (carry, none), 4]
    for i in range(3):
        assert split[0][i] == pytest.approx((loss - base)[carry[:, i], i].mean(), rel=1e-3, abs=1e-5)
        assert split[1][i] == pytest.approx((loss - base)[~carry[:, i], i].mean(), rel=1e-3, abs=1e-5)
    assert split[0][3] is None  # the units digit never receives a carry (NaN in JSON)
    # mean ablation of H1.0's keys, scored on sequences without any carry
    k_mean = np.asarray(acts["blocks.1.attn.hook_k"]).mean(0, keepdims=True)
    loss, _ = _scores(cfg, params, tokens, iv.patch("blocks.1.attn.hook_k", k_mean, head=0))
    none = ~carry.any(1)
    assert qkv["loss_increase_sequence_carry_split"][1][1][0][1] == pytest.approx(
        (loss - base)[none].mean(), rel=1e-3, abs=1e-5)
    # ... and, as the notebook did, on those sequences alone with their own mean
    k_mean = np.asarray(acts["blocks.1.attn.hook_k"])[none].mean(0, keepdims=True)
    loss, _ = _scores(cfg, params, tokens[none], iv.patch("blocks.1.attn.hook_k", k_mean, head=0))
    subset = quick["analysis"]["qkv_mean_ablations_on_carry_subsets"]["no carry"]
    assert subset[1][1][0] == pytest.approx((loss - base[none]).mean(), rel=1e-3, abs=1e-5)


def test_layer0_corresponding_digit_heads_are_the_notebooks(processed, quick):
    cfg, params, tokens = processed
    qk = quick["analysis"]["layer0_qk"]
    assert qk["corresponding_digit_heads"] == {"H0.0": ["c1"], "H0.1": ["c1", "c3", "c4"], "H0.2": ["c2", "c3", "c4"]}
    # the positional pattern predicts the real attention of the output positions
    assert qk["positional_vs_mean_pattern_max_abs_diff_at_outputs"] < 0.05
    pattern = np.asarray(qk["positional_pattern"])
    np.testing.assert_allclose(pattern.sum(-1), 1, atol=1e-5)
    assert np.allclose(np.triu(pattern, 1), 0)
    mean = np.asarray(qk["mean_pattern"])
    q, a, b = np.arange(9, 13), np.arange(4), np.arange(5, 9)
    np.testing.assert_allclose(qk["corresponding_digit_mass_mean_pattern"], mean[:, q, a] + mean[:, q, b], atol=1e-6)


def test_direct_logit_attribution_sums_to_the_logits_and_paths_to_the_heads(processed):
    cfg, params, tokens = processed
    logits, acts = tm.apply(cfg, params, tokens, capture=an.capture_sites(cfg))
    simple, paths = an._dla_stacks(cfg, params, acts)
    # embed + pos_embed + every head + b_O, through the final LayerNorm, plus b_U, are the logits
    total = np.asarray(simple.stack).sum(0) + np.asarray(params["unembed"]["b_U"])
    np.testing.assert_allclose(total, np.asarray(logits)[:, 9:13], atol=2e-3)
    # the paths of every layer-1 input component through head h add up to head h (no bias paths left)
    for h in range(3):
        through = [i for i, lab in enumerate(paths.labels) if lab.endswith(f"->L1H{h}")]
        assert len(through) == 6  # embed, pos_embed, L0H0..2, b_O
        np.testing.assert_allclose(np.asarray(paths.stack)[through].sum(0), np.asarray(simple[f"L1H{h}"]),
                                   atol=2e-3)


def test_dla_and_ov_results(processed, quick):
    cfg, params, tokens = processed
    dla = quick["analysis"]["direct_logit_attribution"]
    assert dla["simple"]["labels"] == ["embed", "pos_embed", "L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2", "b_O"]
    assert dla["frequency_1_decode_accuracy"] >= 0.95  # the logits are a frequency-1 wave peaked at the answer
    alignment = np.asarray(dla["simple"]["fourier_alignment"])
    assert np.all(np.abs(alignment) <= 1 + 1e-6)
    ov = an.layer1_ov(cfg, params)
    W = lambda name, layer: np.asarray(params[f"blocks_{layer}"]["attn"][name])
    W_E, W_U = np.asarray(params["embed"]["W_E"])[:10], np.asarray(params["unembed"]["W_U"])[:, :10]
    want = W_E @ W("W_V", 0)[2] @ W("W_O", 0)[2] @ W("W_V", 1)[0] @ W("W_O", 1)[0] @ W_U
    np.testing.assert_allclose(ov["single"][2, 0], want, rtol=1e-4, atol=1e-4)
    i, j = np.divmod(np.arange(100), 10)
    np.testing.assert_allclose(ov["pairs"], ov["single"][:, :, i] + ov["single"][:, :, j], rtol=1e-4, atol=1e-4)
    assert np.asarray(quick["analysis"]["layer1_ov"]["pair_frequency_1_phase"]).shape == (3, 3, 100)
    # the notebook's reading of the pair circuits: H0.0 -> H1.* sends every pair the same way, H0.1 -> H1.0/1.1
    # sorts pairs into three clusters by how many digits are >= 5, and H0.2's chains turn once with the digit
    assert (ov["pair_phase_spread"][0] < 0.02).all()
    assert (ov["pair_spread_explained_by_digits_at_least_5"][1, :2] > 0.9).all()
    assert (np.abs(ov["single_phase_winding"][2]) == 1).all() and (ov["single_phase_winding"][:2] == 0).all()


def test_circular_spread_and_what_a_grouping_explains():
    i, j = np.divmod(np.arange(100), 10)
    by_sum = 2 * np.pi * ((i + j) % 10) / 10  # a function of the sum digit only
    assert an.circular_spread(np.full(7, 1.3)) == pytest.approx(0, abs=1e-12)
    assert an.circular_spread(2 * np.pi * np.arange(10) / 10) == pytest.approx(1)
    assert an.spread_explained(by_sum, (i + j) % 10) == pytest.approx(1)
    assert an.spread_explained(by_sum, np.zeros(100, int)) == pytest.approx(0)
    noisy = by_sum + np.random.default_rng(0).normal(0, 0.3, 100)
    assert 0.5 < an.spread_explained(noisy, (i + j) % 10) < 1
    assert np.isnan(an.spread_explained(np.full(100, 0.4), (i + j) % 10))


def test_carry_split_counts_and_attention(processed, quick):
    cfg, params, tokens = processed
    c = quick["analysis"]["carries"]
    carry = sd.carry_in(tokens)
    assert c["counts"]["digits receiving a carry (c1..c4)"] == carry.sum(0).tolist()
    _, acts = tm.apply(cfg, params, tokens, capture=("blocks.1.attn.hook_pattern",))
    pattern = np.asarray(acts["blocks.1.attn.hook_pattern"])
    att = c["layer1_attention"]
    for i in range(3):
        np.testing.assert_allclose(att["mean"][i][0], pattern[carry[:, i], :, 9 + i].mean(0), atol=1e-6)
        np.testing.assert_allclose(att["mean"][i][1], pattern[~carry[:, i], :, 9 + i].mean(0), atol=1e-6)
        assert att["count"][i] == [int(carry[:, i].sum()), int((~carry[:, i]).sum())]


def test_train_quick_keeps_the_best_epoch_and_resumes(tmp_path, capsys):
    config = get_config("train,quick")
    results = study.train_and_evaluate(config, str(tmp_path))
    err = capsys.readouterr().err
    assert "[train] epoch 3/3" in err
    rows = experiment.read_metrics(experiment.Workdir(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3]
    # lr falls linearly per epoch from 2e-3 to 1e-4 (torch Adam with L2 decay, LambdaLR per epoch)
    np.testing.assert_allclose([r["lr"] for r in rows], [2e-3, 1.05e-3, 1e-4], rtol=1e-5)
    val = [r["val/accuracy"] for r in rows]
    t = results["training"]
    assert t["best_epoch"] == 1 + int(np.argmax(val)) and t["best_val_accuracy"] == pytest.approx(max(val))
    assert t["final_train_loss"] == pytest.approx(rows[-1]["train/loss"])
    # the kept parameters are the best epoch's snapshot, and they are what was evaluated
    cfg = sd.model_config()
    best = checkpoint.load_pytree(str(tmp_path / "best_params.msgpack"))
    snap = checkpoint.load_pytree(str(tmp_path / "snapshots" / f"snap_{t['best_epoch']:08d}.msgpack"))
    jax.tree.map(np.testing.assert_array_equal, best, snap)
    ev = study.evaluate(*weights.process_weights(cfg, best), study.evaluation_tokens(config))
    assert results["evaluation"]["mean_cross_entropy"] == pytest.approx(ev["mean_cross_entropy"], rel=1e-5)
    # per-digit validation accuracy by epoch: its mean is the engine's validation accuracy, and the
    # best epoch's row is a plain forward pass of that snapshot on the validation sequences
    vb = results["validation_by_epoch"]
    np.testing.assert_allclose(np.asarray(vb["accuracy_per_digit"]).mean(1), val, atol=1e-6)
    val_tokens = sd.make_sequences(config.n_val, config.data_seed + 1)
    logits, _ = tm.apply(cfg, snap, val_tokens)
    pred = np.asarray(logits)[:, 9:13].argmax(-1)  # c_i (position 10 + i) is predicted at position 9 + i
    np.testing.assert_allclose(vb["accuracy_per_digit"][t["best_epoch"] - 1], (pred == val_tokens[:, 10:14]).mean(0),
                               atol=1e-6)
    # the challenge checkpoint's head findings are the notebook's corresponding-digit heads
    chal = results["head_findings"]["challenge_checkpoint"]
    assert chal["corresponding_digit_heads"] == {"H0.0": ["c1"], "H0.1": ["c1", "c3", "c4"],
                                                 "H0.2": ["c2", "c3", "c4"]}
    assert set(results["head_findings"]["shared"]) == set(study.shared_findings(chal, chal))
    check_report(tmp_path / "report.html")
    again = study.train_model(config, experiment.open_workdir(tmp_path, config))  # finished: reloaded, not retrained
    assert "[train] epoch" not in capsys.readouterr().err
    assert again.best_epoch == t["best_epoch"]
    jax.tree.map(np.testing.assert_array_equal, again.params, best)
    changed = get_config("train,quick")
    changed.optimizer.lr = 1e-2
    with pytest.raises(experiment.ConfigMismatchError, match=r"optimizer.lr: 0.002 -> 0.01"):
        study.train_and_evaluate(changed, str(tmp_path))


def test_shared_findings_compare_facts_not_head_numbers():
    base = {"corresponding_digit_sets": [("c1",), ("c1", "c3", "c4"), ("c2", "c3", "c4")],
            "digits_with_a_corresponding_digit_head": ["c1", "c2", "c3", "c4"],
            "head_mean_ablation_loss_increase": np.array([[0.1, 2.0, 1.5], [0.5, 0.4, 0.3]]),
            "layer0_query_mean_ablation_loss_increase": np.array([0.001, 0.002, 0.0]),
            "layer1_key_loss_increase_no_carry": np.array([0.05, 0.0, 0.02]),
            "layer1_key_loss_increase_carry": np.array([0.3, 0.0, 0.1])}
    other = dict(base, head_mean_ablation_loss_increase=np.array([[0.1, 0.2, 0.3], [0.5, 3.0, 0.3]]),
                 layer0_query_mean_ablation_loss_increase=np.array([0.5, 0.0, 0.0]),
                 corresponding_digit_sets=[("c1", "c3", "c4"), ("c1",), ("c2", "c3", "c4")])
    got = study.shared_findings(base, other)
    assert got["corresponding-digit heads (digit sets, any head order)"]["shared"] is False  # unsorted != sorted
    other["corresponding_digit_sets"] = sorted(other["corresponding_digit_sets"])
    got = study.shared_findings(base, other)
    assert {k: v["shared"] for k, v in got.items()} == {
        "corresponding-digit heads (digit sets, any head order)": True,
        "every sum digit has a corresponding-digit head": True,
        "most critical head (mean ablation) is in layer": False,  # layer 0 (2.0) vs layer 1 (3.0)
        "layer-0 queries negligible": False,
        "layer-1 keys matter mostly with a carry (>= 5x the loss increase without)": True}
    weak = dict(other, layer1_key_loss_increase_carry=np.array([0.1, 0.0, 0.1]))  # 0.2 < 5 x 0.07
    assert study.shared_findings(base, weak)[
        "layer-1 keys matter mostly with a carry (>= 5x the loss increase without)"]["shared"] is False


def test_config_variants_and_bad_input(tmp_path):
    for variant in ("default", "train", "challenge", "quick", "train,quick"):
        c = get_config(variant)
        assert c.variant == variant
        assert c.mode == ("train" if variant in ("train", "challenge", "train,quick") else "load")
        assert c.optimizer.total == c.num_epochs - 1
    assert get_config(None).to_dict() == get_config("default").to_dict()
    full = get_config("challenge")
    assert (full.num_epochs, full.n_train, full.n_val, full.batch_size) == (100, 100_000, 5_000, 512)
    assert (full.optimizer.name, full.optimizer.lr, full.optimizer.weight_decay) == ("adam", 2e-3, 1e-3)
    assert full.optimizer.lr * full.optimizer.end == pytest.approx(1e-4)
    c = get_config("train")
    c.num_epochs = 40
    assert c.optimizer.total == 39  # the schedule follows an overridden num_epochs
    with pytest.raises(ValueError, match="unknown sum_digits variant"):
        get_config("nope")
    assert (get_config("train,seed=3").seed, get_config("train,seed=3").mode) == (3, "train")
    assert get_config("quick").n_train == 100_000 and get_config("train,quick").n_train == 256
    c = get_config("quick")
    c.checkpoint = "nowhere/sum_model.pt"
    with pytest.raises(FileNotFoundError, match=r"config.checkpoint = 'nowhere/sum_model.pt' -> .*nowhere"):
        study.train_and_evaluate(c, str(tmp_path / "a"))
    c = get_config("quick")
    c.mode = "finetune"
    with pytest.raises(ValueError, match=r"config.mode must be one of \('load', 'train'\)"):
        study.train_and_evaluate(c, str(tmp_path / "b"))
    c = get_config("quick")
    c.n_eval = 5000
    with pytest.raises(ValueError, match=r"config.n_eval must be in 0..1000"):
        study.evaluation_tokens(c)


def _kl(clean_logits, logits, pos):
    """KL(clean || patched) at one position per example, in float64 numpy."""
    logp = lambda x: np.asarray(jax.nn.log_softmax(np.asarray(x, np.float64)[:, pos], axis=-1))
    p, q = logp(clean_logits), logp(logits)
    return (np.exp(p) * (p - q)).sum(-1)


def test_circuits_in_results_match_the_edge_level_pass(processed, quick, quick_workdir):
    """Each digit's circuit from results.json, rebuilt as edge weights (1 kept, 0 corrupted) and run
    through edges.edge_forward, gives the metric and recovered fraction written there."""
    cfg, params, _ = processed
    circuits = quick["analysis"]["circuits"]
    assert list(circuits) == ["c1 digit", "c1 carry", "c2 digit", "c2 carry", "c3 digit", "c3 carry", "c4 digit"]
    names = edges.graph(cfg).edges
    qk = quick["analysis"]["layer0_qk"]
    for name, c in circuits.items():
        label, kind = name.split()
        digit = int(label[1]) - 1
        assert c["kept"] and set(c["kept"]) <= set(names) and c["n_kept"] == len(c["kept"])
        assert len(c["kept_scores"]) == len(c["kept"]) and min(c["kept_scores"]) >= c["tau"] > 0
        clean, corrupted = sc.corrupted_pairs(digit, kind)
        assert c["n_sequences"] == len(clean) == sc.CIRCUIT_SEQUENCES
        changed = np.flatnonzero((clean != corrupted).any(0))
        a_pos = digit if kind == "digit" else digit + 1
        assert a_pos in changed and not set(changed) & set(sd.B_POSITIONS)  # only a digit of a (and the sum) changed
        w = np.isin(names, c["kept"]).astype(np.float32)
        pos = int(sd.OUTPUT_POSITIONS[digit])
        clean_logits, _ = tm.apply(cfg, params, clean)
        corrupted_logits, _ = tm.apply(cfg, params, corrupted)
        metric = _kl(clean_logits, edges.edge_forward(cfg, params, clean, corrupted, w), pos).mean()
        full_corruption = _kl(clean_logits, corrupted_logits, pos).mean()
        assert c["metric"] == pytest.approx(metric, rel=1e-3, abs=1e-4)
        assert c["metric_corrupted"] == pytest.approx(full_corruption, rel=1e-4)
        assert c["recovered"] == pytest.approx((metric - full_corruption) / (0 - full_corruption), abs=1e-4)
        assert c["recovered"] > 0.8  # ACDC at 2% of the corrupted KL keeps most of the behaviour
        assert c["tau"] == pytest.approx(sc.TAU_FRACTION * full_corruption, rel=1e-3)
        # the faithfulness curve ends at the clean and the corrupted run, and its k = n_kept point is the
        # top-k circuit by |EAP-IG score|
        rec = c["faithfulness_recovered"]
        assert rec[0] == pytest.approx(0, abs=1e-5) and rec[-1] == pytest.approx(1, abs=1e-5)
        scores = np.array([c["eap_ig_scores"][e] for e in names])
        top = np.zeros(len(names), np.float32)
        top[np.argsort(-np.abs(scores), kind="stable")[:len(c["kept"])]] = 1
        top_metric = _kl(clean_logits, edges.edge_forward(cfg, params, clean, corrupted, top), pos).mean()
        assert c["eap_ig_top_k_recovered"] == pytest.approx(1 - top_metric / full_corruption, abs=1e-3)
        assert c["eap_ig_top_k_shared_with_acdc"] == int(top[np.isin(names, c["kept"])].sum())
        # the layer-0 heads beside the report's: corresponding-digit heads (digit) or next-digit heads (carry)
        heads = c["layer0_heads"]
        if kind == "digit":
            report = [h for h, digits in qk["corresponding_digit_heads"].items() if label in digits]
        else:
            report = [f"H0.{h}" for h in range(cfg.n_heads) if qk["next_digit_mass"][h][digit] >= qk["threshold"]]
        assert heads["report"] == sorted(report)
        assert set(heads["both"]) | set(heads["report_only"]) == set(report)
        assert heads["circuit"] == sorted(h for h in common.heads_on_paths(c["kept"]) if h.startswith("H0."))
    html = (quick_workdir / "report.html").read_text()
    assert "Circuits of each sum digit" in html
    assert (quick_workdir / "figures" / "circuit_c3_carry.png").is_file()
    assert (quick_workdir / "figures" / "circuit_c4_digit_faithfulness.png").is_file()


def test_heads_on_paths_needs_a_whole_path_through_the_head():
    kept = ["embed -> blocks.0.attn.head.1.v", "blocks.0.attn.head.1 -> blocks.1.attn.head.2.q",
            "blocks.1.attn.head.2 -> logits",  # embed -> H0.1 -> H1.2 -> logits
            "embed -> blocks.0.attn.head.0.k",  # H0.0: an input but no output kept
            "blocks.0.attn.head.2 -> logits",  # H0.2: an output but no input kept
            "pos_embed -> blocks.1.attn.head.0.k", "blocks.1.attn.head.0 -> logits"]
    assert common.heads_on_paths(kept) == {"H0.1", "H1.2", "H1.0"}
    assert common.heads_on_paths(kept[3:5]) == set()

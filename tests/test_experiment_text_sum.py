"""End-to-end test of study 1 (experiments/text_sum.py and its library function on the quick
config) and of its analyses against scikit-learn and single forward passes."""

import errno
import json
import os

import jax
import numpy as np
import pytest
from sklearn.linear_model import Ridge

import toymech as tm
from toymech import experiment
from toymech import interventions as iv
from toymech.report import check_report
from toymech.studies import text_sum as study
from toymech.tasks import text_sum as ts

from conftest import run_binary, study_config


def get_config(arg):
    return study_config("text_sum", arg)


@pytest.fixture(scope="module")
def quick(text_sum_quick):
    """The session's quick run (tests/conftest.py): (config, workdir path, returned results)."""
    return text_sum_quick.config, text_sum_quick.workdir, text_sum_quick.results


def test_workdir_has_every_output(quick):
    config, path, results = quick
    assert json.loads((path / "results.json").read_text()) == experiment.to_jsonable(results)
    assert json.loads((path / "config.json").read_text()) == config.to_dict()
    images = check_report(path / "report.html").images
    assert len(images) >= 6 and all((path / im).is_file() for im in images)
    rows = experiment.read_metrics(experiment.Workdir(path))
    assert [r["step"] for r in rows] == [1, 2]
    val = [r["val/loss"] for r in rows]
    tr = results["training"]
    assert tr["best_epoch"] == 1 + int(np.argmin(val)) and tr["best_val_mse_scaled"] == pytest.approx(min(val))
    x, y, z = ts.read_tsv(path / "data" / "val.tsv")
    assert len(z) == config.data.n_val and tr["n_val"] == config.data.n_val
    assert np.all(z == x + y) and max(x.max(), y.max()) <= config.data.max_operand


def test_probes_and_readout_match_sklearn(quick):
    config, path, results = quick
    run = study.train_model(config, experiment.open_workdir(path, config), *study.load_data(config))  # resumes: nothing left to train
    final = tm.get_act_name("resid_post", run.cfg.n_layers - 1)
    _, acts = tm.apply(run.cfg, run.params, run.val.tokens, key_padding_mask=run.val.mask, capture=(final,))
    last = run.val.mask.sum(1) - 1
    pooled = np.asarray(acts[final], np.float64)[np.arange(len(last)), last]  # [n, d]
    sums = (run.val.x + run.val.y).astype(np.float64)
    ridge = Ridge(alpha=config.analysis.probe_alpha).fit(pooled, sums)
    probes = results["analysis"]["probes"]
    assert probes["final_pooled_r2"] == pytest.approx(ridge.score(pooled, sums), abs=2e-3)
    # The notebook's readout test: remove the probe direction, refit, compare MSEs.
    v = ridge.coef_ / np.linalg.norm(ridge.coef_)
    removed = pooled - np.outer(pooled @ v, v)
    mse = lambda h: np.mean((Ridge(alpha=config.analysis.probe_alpha).fit(h, run.val.z).predict(h) - run.val.z) ** 2)
    readout = results["analysis"]["readout_causal_test"]
    assert readout["ridge_head_mse_before"] == pytest.approx(mse(pooled), rel=2e-2)
    assert readout["ridge_head_mse_after"] == pytest.approx(mse(removed), rel=2e-2)


def test_rerun_resumes_and_the_binary_refuses_another_config(quick, capsys):
    config, path, results = quick
    again = study.train_and_evaluate(config, path)  # finished run: reloaded, not retrained
    assert "[train] epoch" not in capsys.readouterr().err
    assert again["training"]["best_val_mse_scaled"] == results["training"]["best_val_mse_scaled"]
    np.testing.assert_allclose(again["analysis"]["probes"]["position_r2"], results["analysis"]["probes"]["position_r2"],
                               rtol=1e-5)
    # The binary parses --config (file:variant) and overrides, and refuses a changed config.
    proc = run_binary("text_sum", path, "--config=configs/text_sum.py:quick", "--config.num_epochs=3", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "num_epochs: 2 -> 3" in proc.stderr


def test_user_files_malformed_line_is_named(tmp_path):
    config = get_config("quick")
    (tmp_path / "train.tsv").write_text("1\t2\t3\n4\t5\n")
    (tmp_path / "val.tsv").write_text("1\t1\t2\n")
    config.data.train_tsv, config.data.val_tsv = str(tmp_path / "train.tsv"), str(tmp_path / "val.tsv")
    with pytest.raises(ValueError, match=r"train.tsv, line 2: expected 3 tab-separated fields"):
        study.train_and_evaluate(config, tmp_path / "run")
    config.data.val_tsv = ""
    with pytest.raises(ValueError, match="give both"):
        study.train_and_evaluate(config, tmp_path / "run2")


def test_user_files_longer_than_the_context_are_refused(tmp_path):
    config = get_config("quick")
    config.model.n_ctx = 8
    (tmp_path / "train.tsv").write_text("100\t200\t300\n")
    (tmp_path / "val.tsv").write_text("1\t1\t2\n")
    config.data.train_tsv, config.data.val_tsv = str(tmp_path / "train.tsv"), str(tmp_path / "val.tsv")
    with pytest.raises(ValueError, match="13 characters, more than the model's n_ctx=8"):
        study.train_and_evaluate(config, tmp_path / "run")


def test_intervention_sweep_entries_equal_single_forward_passes():
    cfg = ts.model_config(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=16)
    params = tm.init_params(cfg, jax.random.key(0))
    data = ts.make_dataset([3, 45, 120, 7, 999], [4, 6, 80, 990, 1], [7, 51, 200, 997, 1000])
    pred, hidden = study.hidden_states(cfg, params, data)
    rng = np.random.default_rng(0)
    directions, random_dirs = rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
    got = study.intervention_causal_test(cfg, params, data, hidden, directions, random_dirs, chunk_size=3)
    mse = lambda out: np.mean((np.asarray(ts.pool_last(out[..., 0], data.mask)) * ts.SCALE - data.z) ** 2)
    assert got["baseline"] == pytest.approx(np.mean((pred - data.z) ** 2), rel=1e-5)
    sites = study.depth_sites(cfg)
    last = np.arange(data.mask.shape[1])[None] == (data.mask.sum(1) - 1)[:, None]
    for d, m, e, v, value in [(1, 0, 0, directions[1], got["sum_direction"][1, 0, 0]),
                              (0, 1, 0, random_dirs[1], got["random"][0, 1, 0, 1]),
                              (1, 0, 1, directions[1], got["sum_direction"][1, 0, 1]),
                              (0, 1, 1, random_dirs[0], got["random"][0, 1, 1, 0])]:
        unit = v / np.linalg.norm(v)
        comp = hidden[d] @ unit  # [n, pos]
        pos = last if m == 0 else np.ones_like(last)
        shift = 0.0 if e == 0 else (comp[last].mean() if m == 0 else comp.mean(0))
        edited = hidden[d] - (comp - shift)[..., None] * unit  # the site's activation after the edit
        out, _ = tm.apply(cfg, params, data.tokens, key_padding_mask=data.mask,
                          intervention=iv.patch(sites[d], np.where(pos[..., None], edited, hidden[d])))
        assert value == pytest.approx(mse(out), rel=1e-3)


def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(quick, tmp_path, monkeypatch):
    """The second epoch's checkpoint hits ENOSPC: the binary's error names that file and the last
    good checkpoint; a rerun with space resumes from it and ends with the uninterrupted run's numbers."""
    from experiments import common

    config, _, results = quick
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("ckpt_00000002.msgpack"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SystemExit) as stop:
        common._run_study(config, str(tmp_path))
    message = str(stop.value)
    assert "\n" not in message and message.startswith(f"error: could not write {tmp_path}/checkpoints/ckpt_00000002")
    assert "No space left on device" in message
    assert f"the last good checkpoint is {tmp_path}/checkpoints/ckpt_00000001.msgpack" in message
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))  # no half-written file left behind
    monkeypatch.setattr(os, "replace", real_replace)
    again = study.train_and_evaluate(config, str(tmp_path))
    assert again["training"]["best_val_mse_scaled"] == results["training"]["best_val_mse_scaled"]
    np.testing.assert_array_equal(again["analysis"]["probes"]["position_r2"], results["analysis"]["probes"]["position_r2"])

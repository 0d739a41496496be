"""Honest workdirs (toymech.experiment) and the shared binary entry point (experiments/common.py):
one-line errors for bad input, configs built from variants and overrides, data fingerprints;
and what toymech.studies.common gives every study (metrics rows, the attention view's data)."""

import hashlib
import json

import ml_collections
import numpy as np
import pytest

import toymech as tm
from toymech import experiment
from toymech.report import Report
from toymech.studies import common as study_common

from conftest import run_binary, study_config
from random_params import random_params


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(experiment.WorkdirError, match="afile is a file, not a directory"):
        experiment.open_workdir(path, {"a": 1})


def test_changed_data_is_refused_naming_the_file(tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("1\t2\t3\n")
    wd = experiment.open_workdir(tmp_path / "run", {"a": 1}, data_files={"train": data})
    stored = json.loads(wd.inputs_path.read_text())["train"]
    assert (stored["size"], stored["sha256"]) == (6, hashlib.sha256(b"1\t2\t3\n").hexdigest())
    experiment.open_workdir(wd.path, {"a": 1}, data_files={"train": data})  # same data: reopened
    data.write_text("1\t2\t4\n")  # same size, other contents
    with pytest.raises(experiment.DataChangedError, match=r"train.tsv \(train\) changed since the run"):
        experiment.open_workdir(wd.path, {"a": 1}, data_files={"train": data})


def test_build_config_combines_variants_and_overrides():
    base = lambda: ml_collections.ConfigDict({"a": 1, "b": {"c": 0.5, "s": "x"}, "t": (1,)})
    variants = {"big": lambda c: setattr(c, "a", 10), "half": lambda c: setattr(c, "a", c.a // 2)}
    build = lambda arg: experiment.build_config(base, variants, arg, study="toy")
    assert build("big,half").a == 5 and build("half,big").a == 10  # left to right
    c = build("big,b.c=2,b.s=hello,t=[3]")
    assert (c.a, c.b.c, c.b.s, c.t, c.variant, c.study) == (10, 2.0, "hello", (3,), "big,b.c=2,b.s=hello,t=[3]", "toy")
    assert build(None).variant == build("default").variant == "default"
    with pytest.raises(experiment.StudyError, match=r"unknown toy variant 'bigg' \(did you mean 'big'\?\)"):
        build("bigg")
    with pytest.raises(experiment.StudyError, match=r"unknown field 'b.cc' \(did you mean 'b.c'\?\)"):
        build("b.cc=1")
    with pytest.raises(experiment.StudyError, match=r"field a is 1 \(int\); got 'many'"):
        build("a=many")


def test_nonfinite_metrics_are_flagged(tmp_path, capsys):
    wd = experiment.open_workdir(tmp_path, {"a": 1})
    th = {"epoch": np.arange(1, 5), "loss": np.array([1.0, 0.5, np.nan, np.nan])}
    eh = {"epoch": np.array([2, 4]), "loss": np.array([0.7, np.inf])}
    bad = study_common.write_metrics(wd, "toy", th, eh, {"train/loss": ("train", "loss"), "val/loss": ("eval", "loss")})
    assert bad == {"train/loss": [4], "val/loss": [4]}
    assert "[toy] warning: train/loss is not finite" in capsys.readouterr().err
    rows = experiment.read_metrics(wd)
    assert rows == [{"step": 2, "train/loss": 0.5, "val/loss": 0.7}, {"step": 4, "train/loss": None, "val/loss": None}]


@pytest.mark.parametrize("flags, message", [
    (["--config=configs/reverse.py:quik"], "error: unknown reverse variant 'quik' (did you mean 'quick'?)"),
    (["--config=configs/reverse.py:quick", "--config.optimizer.lrr=1"],
     "error: --config.optimizer.lrr: no such config field (did you mean 'optimizer.lr'?)"),
    (["--config=configs/grokking.py:quick"], "error: configs/grokking.py:quick is a grokking config"),
])
def test_the_binary_reports_bad_flags_in_one_line(tmp_path, flags, message):
    proc = run_binary("reverse", tmp_path / "w", *flags, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_an_unusable_compilation_cache_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_binary("reverse", tmp_path / "w", "--config=configs/reverse.py:quick",
                      f"--compilation_cache_dir={tmp_path / 'afile' / 'cache'}", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith(f"error: cannot create the compilation cache folder {tmp_path / 'afile'}")
    assert proc.stderr.strip().endswith("(pass --nocompilation_cache to run without it)")


def test_the_binary_refuses_a_workdir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_binary("reverse", tmp_path / "afile", "--config=configs/reverse.py:quick", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: --workdir {tmp_path / 'afile'} is a file, not a directory; give a "
                                   "directory (new or a run's)")


def test_a_missing_input_leaves_no_config_behind(tmp_path):
    from toymech.studies import text_sum
    config = study_config("text_sum", "quick")
    config.data.train_tsv, config.data.val_tsv = str(tmp_path / "missing.tsv"), str(tmp_path / "val.tsv")
    with pytest.raises(FileNotFoundError, match=r"config.data.train_tsv = '.*missing.tsv': no such file"):
        text_sum.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_attention_section_shows_each_examples_real_tokens_with_its_own_patterns():
    """Every head's pattern of the first ATTENTION_EXAMPLES rows, padding left out: each example
    as shown equals the model run on that example alone (no padding)."""
    cfg = tm.ModelConfig(n_layers=2, d_model=16, n_heads=3, d_head=4, d_mlp=None, d_vocab=5, n_ctx=6,
                         attention_dir="bidirectional")  # study 1's kind of model: padding, no causal mask
    params = random_params(cfg, seed=1)
    lengths = np.array([6, 3, 5, 1, 4, 2])  # 6 rows: only the first ATTENTION_EXAMPLES are shown
    tokens = np.random.default_rng(0).integers(0, 5, (6, 6))
    mask = np.arange(6) < lengths[:, None]
    rep = Report("r")
    vocab = ["a", "b", "<c>", "d", "e"]
    study_common.attention_section(rep, cfg, params, np.where(mask, tokens, 0), vocab, "rows", key_padding_mask=mask)
    page = rep.render()
    start = page.index('class="attention-data">') + len('class="attention-data">')
    view = json.loads(page[start:page.index("</script>", start)])
    assert len(view["examples"]) == study_common.ATTENTION_EXAMPLES == 4
    assert (view["n_layers"], view["n_heads"]) == (2, 3)
    for row, shown in enumerate(view["examples"]):
        n = lengths[row]
        assert shown["tokens"] == [vocab[t] for t in tokens[row, :n]] and shown["name"] == " ".join(shown["tokens"])
        _, cache = tm.apply(cfg, params, tokens[row:row + 1, :n], capture=lambda name: name.endswith("hook_pattern"))
        alone = np.stack([np.asarray(cache["pattern", layer])[0] for layer in range(2)])  # [layer, head, n, n]
        np.testing.assert_allclose(shown["pattern"], alone, atol=6e-5)

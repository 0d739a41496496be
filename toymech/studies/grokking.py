"""Study 3, grokking: training, shared bookkeeping, and the report.

`train_and_evaluate(config, workdir)` runs one variant of `configs/grokking.py`:

1. opens the workdir (config.json written, or checked against the given config);
2. trains the 1-layer transformer full batch with AdamW, biases frozen at zero,
   through `toymech.train.train` (checkpoints in workdir/checkpoints, parameter
   snapshots every `snapshot_every` epochs in workdir/snapshots, progress lines
   on stderr); a rerun resumes, a finished run is not retrained;
3. writes metrics.jsonl (one row per evaluation epoch);
4. runs the analyses of the setting: modular addition
   (`toymech.studies.grokking_modular`) or plain addition
   (`toymech.studies.grokking_addition`);
5. writes results.json, figures/*.png and report.html.

Model seed: the initial parameters are `toymech.init_params(cfg,
jax.random.key(model_seed))` (TransformerLens's init distribution; JAX's
generator, so not the notebook's exact numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import numpy as np

import toymech as tm
from toymech import experiment, plots, train
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import grokking_addition, grokking_modular
from toymech.studies import common
from toymech.studies.common import first_epoch_at_least
from toymech.tasks import grokking as gk


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained (or resumed) model with its data and training record.

    params: final parameters; snapshots: parameters stacked over time [S, ...]
    at `snapshot_epochs` (int [S]); train_history: per epoch ('epoch', 'loss',
    'accuracy', 'lr'), eval_history: per evaluation epoch ('epoch', 'loss',
    'accuracy') on the test rows.
    """

    config: Any
    task: gk.AdditionTask
    data: gk.Dataset
    cfg: ModelConfig
    params: dict
    snapshots: dict | None
    snapshot_epochs: np.ndarray
    train_history: dict[str, np.ndarray]
    eval_history: dict[str, np.ndarray]
    train_seconds: float


def task_from_config(config) -> gk.AdditionTask:
    if config.task not in ("modular", "plain"):
        raise ValueError(f"config.task must be 'modular' or 'plain', got {config.task!r}")
    return gk.AdditionTask(int(config.p), modular=config.task == "modular")


def _loss_fn(cfg: ModelConfig, params, batch):
    """(mean cross-entropy at '=', {'accuracy'}) on a batch {'tokens', 'labels'}."""
    logits, _ = tm.apply_unchecked(cfg, params, batch["tokens"], output_positions=-1)  # [b, 1, v]
    return gk.cross_entropy(logits, batch["labels"]), {"accuracy": gk.accuracy(logits, batch["labels"])}


def train_model(config, wd: experiment.Workdir) -> TrainedRun:
    """Train (or resume, or reload a finished run) as the config says."""
    task = task_from_config(config)
    data = gk.make_dataset(task, float(config.frac_train), int(config.data_seed))
    cfg = gk.model_config(task, **config.model.to_dict())
    params0 = tm.init_params(cfg, jax.random.key(int(config.model_seed)))
    rows = lambda idx: {"tokens": data.tokens[idx], "labels": data.labels[idx]}
    t0 = time.perf_counter()
    result = train.train(
        functools.partial(_loss_fn, cfg), params0, rows(data.train), config.optimizer.to_dict(),
        num_epochs=int(config.num_epochs), eval_data=rows(data.test), eval_every=int(config.eval_every),
        snapshot_every=int(config.snapshot_every), workdir=str(wd.path),
        checkpoint_every=int(config.checkpoint_every), log_every=int(config.log_every))
    return TrainedRun(config, task, data, cfg, result.params, result.snapshots, result.snapshot_epochs,
                      result.train_history, result.eval_history, time.perf_counter() - t0)


# metrics.jsonl: one row per evaluation epoch, the train columns of that epoch.
METRICS = {"train/loss": ("train", "loss"), "train/accuracy": ("train", "accuracy"), "test/loss": ("eval", "loss"),
           "test/accuracy": ("eval", "accuracy"), "lr": ("train", "lr")}


def training_summary(run: TrainedRun) -> dict:
    """Headline numbers of training: final losses/accuracies and when each accuracy saturated."""
    th, eh = run.train_history, run.eval_history
    level = float(run.config.analysis.grokked_accuracy)
    memorised = first_epoch_at_least(th["epoch"], th["accuracy"], level)
    grokked = first_epoch_at_least(eh["epoch"], eh["accuracy"], level)
    at_memorised = None
    if memorised is not None:
        k = int(np.searchsorted(eh["epoch"], memorised))  # first evaluation at/after it
        at_memorised = float(eh["accuracy"][min(k, len(eh["epoch"]) - 1)])
    return {
        "epochs_trained": int(th["epoch"][-1]),
        "train_seconds_this_process": run.train_seconds,
        "final_train_loss": float(th["loss"][-1]),
        "final_train_accuracy": float(th["accuracy"][-1]),
        "final_test_loss": float(eh["loss"][-1]),
        "final_test_accuracy": float(eh["accuracy"][-1]),
        "max_test_loss": float(np.max(eh["loss"])),
        "epoch_of_max_test_loss": int(eh["epoch"][int(np.argmax(eh["loss"]))]),
        "accuracy_level": level,
        "epoch_train_accuracy_reached_level": memorised,
        "epoch_test_accuracy_reached_level": grokked,
        "test_accuracy_when_train_reached_level": at_memorised,
        "chance_accuracy": 1.0 / run.task.p if run.task.modular else 1.0 / (2 * run.task.p - 1),
        "grokking_delay_epochs": (grokked - memorised) if (grokked is not None and memorised is not None) else None,
        "n_train": int(len(run.data.train)),
        "n_test": int(len(run.data.test)),
    }


def training_section(run: TrainedRun, summary: dict, rep: Report,
                     phases: dict[str, int] | None = None) -> None:
    """Loss and accuracy curves with the key numbers (phase boundaries marked when given)."""
    th, eh = run.train_history, run.eval_history
    sec = rep.section("Training")
    step = max(1, len(th["epoch"]) // 2000)  # thin the per-epoch train curve for plotting
    what = (", with the phase boundaries detected from the progress measures (dashed)" if phases else "")
    sec.figure("loss_curves", plots.curves,
               f"Train loss (every epoch) and test loss (every {int(run.config.eval_every)} epochs), log scale"
               f"{what}. Grokking shows as test loss staying high long after train loss has collapsed, then "
               f"falling late. Sharp spikes are Adam 'slingshots': once gradients are near zero, Adam's normalised "
               f"step is briefly large; the model recovers within tens of epochs.",
               {"train loss": (th["epoch"][::step], th["loss"][::step]), "test loss": (eh["epoch"], eh["loss"])},
               title="Train and test loss", xlabel="epoch", ylabel="cross-entropy (log scale)", log_y=True,
               vlines=phases)
    sec.figure("accuracy_curves", plots.curves, f"Train and test accuracy at the evaluation epochs; chance is "
               f"{summary['chance_accuracy']:.3f}.",
               {"train accuracy": (th["epoch"][::step], th["accuracy"][::step]),
                "test accuracy": (eh["epoch"], eh["accuracy"])},
               title="Train and test accuracy", xlabel="epoch", ylabel="accuracy", vlines=phases)
    sec.key_values({
        "train examples / test examples": f"{summary['n_train']} / {summary['n_test']}",
        "epochs trained": summary["epochs_trained"],
        f"first epoch with train accuracy >= {summary['accuracy_level']}": summary[
            "epoch_train_accuracy_reached_level"],
        "test accuracy at that epoch": summary["test_accuracy_when_train_reached_level"],
        f"first epoch with test accuracy >= {summary['accuracy_level']}": summary[
            "epoch_test_accuracy_reached_level"],
        "grokking delay (epochs between the two)": summary["grokking_delay_epochs"],
        "peak test loss (epoch)": f"{summary['max_test_loss']:.4g} ({summary['epoch_of_max_test_loss']})",
        "final train loss / accuracy": f"{summary['final_train_loss']:.3e} / {summary['final_train_accuracy']:.4f}",
        "final test loss / accuracy": f"{summary['final_test_loss']:.3e} / {summary['final_test_accuracy']:.4f}",
    }, caption="Training at a glance")


def headline(run: TrainedRun, summary: dict, analysis: dict) -> dict:
    """The few numbers a reader wants first (also results.json's 'headline')."""
    level = summary["accuracy_level"]
    out = {"final_test_accuracy": summary["final_test_accuracy"],
           "generalised": summary["final_test_accuracy"] >= level,
           "epoch_train_accuracy_reached_level": summary["epoch_train_accuracy_reached_level"],
           "test_accuracy_then": summary["test_accuracy_when_train_reached_level"],
           "grokking_epoch": summary["epoch_test_accuracy_reached_level"]}
    if run.task.modular:
        out["key_frequencies"] = analysis["key_frequencies"]
        out["phases"] = analysis["progress"]["phases"]
    else:
        out["keep_linear_feature_ablation_accuracy"] = [analysis["feature_ablation"]["accuracy_before"],
                                                        analysis["feature_ablation"]["accuracy_after"]]
        out["pc2_ablation_by_index_accuracy"] = [analysis["pc2_ablation"]["accuracy_before"],
                                                 analysis["pc2_ablation"]["accuracy_after"]]
        out["feature_pc"] = analysis["embedding_pca"]["feature_pc"]
        out["pre_relu_poly2_mean_r2"] = analysis["neuron_fits"]["pre_relu_poly2_r2"]["mean"]
        out["W_L_top2_pc_variance_ratio"] = analysis["W_L_pca"]["top2_variance_ratio"]
    return out


def summary_section(h: dict, rep: Report) -> None:
    """The page's first section: what happened, in words."""
    sec = rep.section("Summary", position=0)
    pct = lambda v: "—" if v is None else f"{100 * float(v):.1f}%"
    words = (f"Train accuracy reached 99% at epoch {h['epoch_train_accuracy_reached_level']}, when test accuracy "
             f"was {pct(h['test_accuracy_then'])}; ")
    if h["grokking_epoch"] is not None:
        words += f"test accuracy reached 99% at epoch {h['grokking_epoch']}. "
    else:
        words += "test accuracy never reached 99% in this run. "
    words += f"Final test accuracy: {pct(h['final_test_accuracy'])}."
    if "key_frequencies" in h:
        words += (f" The final model computes (a + b) mod p with the key frequencies {h['key_frequencies']}; "
                  "phase boundaries detected from the progress measures: "
                  + (", ".join(f"{k} at epoch {v}" for k, v in h["phases"].items()) or "none") + ".")
    else:
        before, after = h["keep_linear_feature_ablation_accuracy"]
        fp = h["feature_pc"]
        words += (f" The embedding carries the digit's linear feature on {fp['linear']}, the parabola on "
                  f"{fp['parabola']} and parity on {fp['parity']} (the notebook's run: linear PC1, parabola PC2). "
                  f"Keeping only the linear feature (the notebook's PC2 ablation, by meaning) takes accuracy from "
                  f"{before:.2f} to {after:.2f} (notebook 1.00 → 0.42); keeping PC1 by index gives "
                  f"{h['pc2_ablation_by_index_accuracy'][1]:.2f}. Neuron pre-activations are fitted by degree-2 "
                  f"polynomials of the linear and parabola features with mean R² "
                  f"{float(h['pre_relu_poly2_mean_r2']):.3f} (notebook 0.998); the top two PCs of W_L's columns "
                  f"hold {pct(h['W_L_top2_pc_variance_ratio'])} of their variance (notebook 98.3%). The comparison "
                  f"table at the end marks which numbers agree with the notebook's.")
    sec.text(words)


def train_and_evaluate(config, workdir) -> dict:
    """Train (or resume) the variant in `config`, run its analyses, write the workdir.

    Returns the results dict also written to workdir/results.json. Matmuls run at
    `config.matmul_precision` ('highest': true float32 everywhere, no TF32 on GPUs).
    """
    t0 = time.perf_counter()
    task_from_config(config)  # the config validates before the workdir records it
    wd = common.open_workdir(workdir, config, "grokking")
    with jax.default_matmul_precision(config.matmul_precision):
        return _run(config, wd, t0)


def _run(config, wd: experiment.Workdir, t0: float) -> dict:
    run = train_model(config, wd)
    nonfinite = common.write_metrics(wd, "grokking", run.train_history, run.eval_history, METRICS)
    summary = training_summary(run)
    results: dict[str, Any] = {"variant": config.variant, "setting": config.task, "training": summary}
    if run.task.modular:
        title = f"Grokking (study 3b): modular addition mod {run.task.p}, {config.variant} variant"
        intro = grokking_modular.INTRO
    else:
        title = f"Grokking (study 3a): plain addition of 0..{run.task.p - 1}, {config.variant} variant"
        intro = grokking_addition.INTRO
    rep = Report(title, intro, directory=wd.path)
    if run.task.modular:
        measures = grokking_modular.progress_measures(run)
        training_section(run, summary, rep, measures.phases)
        results["analysis"] = grokking_modular.analyze(run, measures, rep)
    else:
        training_section(run, summary, rep)
        results["analysis"] = grokking_addition.analyze(run, rep)
    common.attention_section(rep, run.cfg, run.params, run.data.tokens[run.data.test],
                             [str(t) for t in range(run.task.p)] + ["="], "test examples (a, b, '=')")
    results["headline"] = headline(run, summary, results["analysis"])
    summary_section(results["headline"], rep)
    return common.finish("grokking", config, wd, rep, results, t0, nonfinite)

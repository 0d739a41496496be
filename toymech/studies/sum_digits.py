"""Study 4, the sum of two 4-digit numbers: the challenge model, or one trained here, taken apart.

`train_and_evaluate(config, workdir)` runs one variant of `configs/sum_digits.py`:

1. opens the workdir (config.json written, or checked against the given config);
2. gets the model, by `config.mode`:
   * 'load': the challenge's TransformerLens checkpoint (`config.checkpoint`,
     relative paths resolved against the repository root), read without torch
     by `toymech.interop.load_transformer_lens`;
   * 'train': the same architecture trained from scratch with the challenge's
     recipe through `toymech.train.train` (Adam with L2 weight decay, lr
     falling linearly per epoch, minibatches, validation after every epoch,
     checkpoints and resume, a parameter snapshot every epoch); the epoch with
     the best validation accuracy is kept (the first one, on ties) and saved
     as workdir/best_params.msgpack; metrics.jsonl gets one row per epoch;
3. processes the weights as the notebook does (`toymech.weights.process_weights`:
   fold LayerNorm, centre writing weights, centre the unembedding, fold value
   biases), which keeps every log-probability;
4. evaluates on the challenge's evaluation sequences (`config.eval_fixture`,
   the first `config.n_eval` of them; 0 = all 1,000): mean cross-entropy and
   the mean / median / minimum probability on the correct digit, beside the
   challenge's numbers;
5. runs every analysis of `toymech.studies.sum_digits_analysis` on the same
   sequences and writes results.json, figures/*.png and report.html.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import toymech as tm
from toymech import checkpoint, experiment, interop, plots, train, weights
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import sum_digits_analysis as analysis
from toymech.studies import common
from toymech.studies.common import first_epoch_at_least
from toymech.tasks import sum_digits as sd

MODES = ("load", "train")

INTRO = (
    "A 2-layer, attention-only transformer (3 heads of 24 per layer, d_model 48, LayerNorm) reads "
    "a1a2a3a4+b1b2b3b4= and predicts the four digits of the sum, each one position early (ARENA's September 2023 "
    "challenge; a, b < 5000). Below: how well it adds, beside the challenge's own numbers; W_U, which writes each "
    "digit as an angle on a circle (one Fourier frequency, 2π/10); which heads, and which of their queries, keys "
    "and values, the loss depends on; the layer-0 heads' positional 'corresponding digit' attention; direct logit "
    "attribution per component and per path through layer 1, also in Fourier space; the layer-1 OV circuits on "
    "digits and digit pairs; and what changes when a digit receives a carry.")

# The challenge's numbers (STUDIES.md section 4; seeds/003).
REFERENCE_EVALUATION = {"mean_cross_entropy": 0.007, "mean_prob_correct": 0.993, "median_prob_correct": 0.996,
                        "min_prob_correct": 0.759}
REFERENCE_TRAINING = {"num_epochs": 100, "first_epoch_val_accuracy_0.999": 47, "best_epoch": 83,
                      "best_val_accuracy": 1.0, "final_train_loss": 0.0062}
VAL_ACCURACY_LEVEL = 0.999


def resolve_path(config, field: str) -> Path:
    """config.<field> as given if absolute, else relative to `config.data_dir`;
    FileNotFoundError naming the config field when there is no such file."""
    path = config[field]
    p = Path(path)
    if not p.is_absolute():
        p = Path(config.data_dir) / p
    if not p.is_file():
        raise FileNotFoundError(
            f"config.{field} = {path!r} -> {p} does not exist (relative paths are resolved against "
            f"config.data_dir = {config.data_dir!r}); pass --config.{field}=/path/to/the/file")
    return p


def data_files(config) -> dict[str, Path]:
    """The user files the run reads ({config field: path}), fingerprinted in the workdir."""
    fields = ("eval_fixture", "checkpoint") if config.mode == "load" else ("eval_fixture",)
    return {field: resolve_path(config, field) for field in fields}


def evaluation_tokens(config) -> np.ndarray:
    """The first `config.n_eval` sequences of the evaluation fixture (0: all).  # int32 [n, 14]"""
    tokens = sd.read_sequences(resolve_path(config, "eval_fixture"))
    n = int(config.n_eval)
    if not 0 <= n <= len(tokens):
        raise ValueError(f"config.n_eval must be in 0..{len(tokens)} (0: all sequences of the fixture), got {n}")
    return tokens[:n] if n else tokens


def load_model(config) -> tuple[ModelConfig, dict]:
    """The challenge's checkpoint as (cfg, raw params), checked against `sd.model_config`."""
    cfg, params = interop.load_transformer_lens(resolve_path(config, "checkpoint"), act_fn="relu")
    expected = sd.model_config(**config.model.to_dict())
    if cfg != expected:
        raise ValueError(f"{config.checkpoint}: the checkpoint's model {cfg} is not the study's {expected}")
    return cfg, params


def evaluate(cfg: ModelConfig, params: dict, tokens: np.ndarray) -> dict:
    """How well the model predicts the four sum digits of tokens [n, 14].

    The challenge's four numbers (mean cross-entropy; mean, median and minimum
    probability on the correct digit, over all n * 4 digits), accuracy per
    digit and overall, the share of sequences with all four digits right, and
    the probability on the correct digit of every digit [n, 4].
    """
    logits, _ = tm.apply(cfg, params, tokens)
    loss, correct = map(np.asarray, sd.token_losses(logits, tokens))  # [n, 4]
    prob = np.exp(-loss)
    return {
        "n_sequences": len(tokens),
        "mean_cross_entropy": float(loss.mean()),
        "mean_prob_correct": float(prob.mean()),
        "median_prob_correct": float(np.median(prob)),
        "min_prob_correct": float(prob.min()),
        "loss_per_digit": loss.mean(0),
        "accuracy": float(correct.mean()),
        "accuracy_per_digit": correct.mean(0),
        "sequence_accuracy": float(correct.all(1).mean()),
        "prob_correct": prob,
    }


def max_log_prob_change(cfg: ModelConfig, params: dict, pcfg: ModelConfig, pparams: dict, tokens) -> float:
    """Largest |log p| difference over tokens' logits between two versions of a model."""
    logp = lambda c, p: np.asarray(jax.nn.log_softmax(tm.apply(c, p, tokens)[0], axis=-1))
    return float(np.abs(logp(cfg, params) - logp(pcfg, pparams)).max())


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A model trained (or resumed, or reloaded when finished) with the config's recipe.

    params: the parameters after `best_epoch` (best validation accuracy);
    train_history: per epoch ('epoch', 'loss', 'accuracy', 'sequence_accuracy',
    'lr'); eval_history: per epoch ('epoch', 'loss', 'accuracy',
    'sequence_accuracy') on the validation sequences.
    """

    cfg: ModelConfig
    params: dict
    best_epoch: int
    train_history: dict[str, np.ndarray]
    eval_history: dict[str, np.ndarray]
    train_seconds: float
    epochs_this_process: int
    n_train: int
    n_val: int


def train_model(config, wd: experiment.Workdir) -> TrainedRun:
    """Train (or resume) as the config says and keep the best validation epoch."""
    cfg = sd.model_config(**config.model.to_dict())
    train_tokens = sd.make_sequences(int(config.n_train), int(config.data_seed))
    val_tokens = sd.make_sequences(int(config.n_val), int(config.data_seed) + 1)
    seed = int(config.seed)
    done = max(checkpoint.list_checkpoints(str(wd.checkpoint_dir)), default=0)
    t0 = time.perf_counter()
    result = train.train(
        functools.partial(sd.loss_fn, cfg), tm.init_params(cfg, jax.random.key(seed)), train_tokens,
        config.optimizer.to_dict(), num_epochs=int(config.num_epochs), batch_size=int(config.batch_size), seed=seed,
        eval_data=val_tokens, eval_every=1, snapshot_every=1, workdir=str(wd.path),
        checkpoint_every=int(config.checkpoint_every), log_every=int(config.log_every))
    seconds = time.perf_counter() - t0
    eh = result.eval_history
    best = int(eh["epoch"][int(np.argmax(eh["accuracy"]))])
    index = int(np.flatnonzero(result.snapshot_epochs == best)[0])
    params = jax.tree.map(lambda x: x[index], result.snapshots)
    checkpoint.save_pytree(str(wd.path / "best_params.msgpack"), params, {"epoch": best})
    return TrainedRun(cfg, params, best, result.train_history, eh, seconds,
                      int(config.num_epochs) - done, len(train_tokens), len(val_tokens))


# metrics.jsonl: one row per epoch: training loss/accuracies (epoch means over batches), lr, validation after it.
METRICS = {"train/loss": ("train", "loss"), "train/accuracy": ("train", "accuracy"),
           "train/sequence_accuracy": ("train", "sequence_accuracy"), "lr": ("train", "lr"),
           "val/loss": ("eval", "loss"), "val/accuracy": ("eval", "accuracy"),
           "val/sequence_accuracy": ("eval", "sequence_accuracy")}


def training_summary(run: TrainedRun) -> dict:
    """Headline numbers of training, with the challenge's beside them."""
    th, eh = run.train_history, run.eval_history
    i = list(eh["epoch"]).index(run.best_epoch)
    return {
        "epochs_trained": int(th["epoch"][-1]),
        "n_train": run.n_train, "n_val": run.n_val,
        "best_epoch": run.best_epoch,
        "best_val_accuracy": float(eh["accuracy"][i]),
        "best_val_sequence_accuracy": float(eh["sequence_accuracy"][i]),
        "best_val_loss": float(eh["loss"][i]),
        f"first_epoch_val_accuracy_{VAL_ACCURACY_LEVEL}": first_epoch_at_least(eh["epoch"], eh["accuracy"],
                                                                               VAL_ACCURACY_LEVEL),
        "final_train_loss": float(th["loss"][-1]),
        "final_val_accuracy": float(eh["accuracy"][-1]),
        "train_seconds_this_process": run.train_seconds,
        "epochs_this_process": run.epochs_this_process,
        "seconds_per_epoch_this_process": (run.train_seconds / run.epochs_this_process
                                           if run.epochs_this_process else None),
        "reference": REFERENCE_TRAINING,
    }


def training_section(run: TrainedRun, summary: dict, rep: Report) -> None:
    """Loss and accuracy curves, and the training numbers beside the challenge's."""
    th, eh = run.train_history, run.eval_history
    sec = rep.section("Training")
    best = {f"best epoch ({run.best_epoch})": run.best_epoch}
    sec.figure("loss_curves", plots.curves,
               "Training loss (mean over each epoch's batches) and validation loss after each epoch, "
               "log scale; dashed: the kept epoch.",
               {"train loss": (th["epoch"], th["loss"]), "validation loss": (eh["epoch"], eh["loss"])},
               title="Loss over the four sum digits", xlabel="epoch", ylabel="cross-entropy (log scale)", log_y=True,
               vlines=best, markers=True)
    sec.figure("accuracy_curves", plots.curves,
               "Per-digit and whole-sequence accuracy on the validation sequences after each epoch, "
               "and the per-digit training accuracy; dashed: the kept epoch.",
               {
               "validation per-digit accuracy": (eh["epoch"], eh["accuracy"]),
               "validation sequence accuracy": (eh["epoch"], eh["sequence_accuracy"]),
               "train per-digit accuracy": (th["epoch"], th["accuracy"])},
               title="Accuracy", xlabel="epoch", ylabel="accuracy", vlines=best, markers=True)
    ref = REFERENCE_TRAINING
    level = f"first_epoch_val_accuracy_{VAL_ACCURACY_LEVEL}"
    sec.table(["", "this run", "challenge"], [
        ["epochs", summary["epochs_trained"], ref["num_epochs"]],
        [f"first epoch with validation accuracy >= {VAL_ACCURACY_LEVEL}", summary[level],
         ref["first_epoch_val_accuracy_0.999"]],
        ["best epoch (kept)", summary["best_epoch"], ref["best_epoch"]],
        ["validation per-digit accuracy at the best epoch", summary["best_val_accuracy"], ref["best_val_accuracy"]],
        ["final training loss", summary["final_train_loss"], ref["final_train_loss"]],
    ], caption=f"Training on {summary['n_train']:,} sequences, validation on {summary['n_val']:,}")
    if summary["seconds_per_epoch_this_process"] is not None:
        sec.text(f"{summary['epochs_this_process']} epochs trained in this process in "
                 f"{summary['train_seconds_this_process']:.0f} s "
                 f"({summary['seconds_per_epoch_this_process']:.1f} s per epoch, compilation included).")


# --------------------------------------------------------------------------- evaluation and report


def evaluation_section(ev: dict, source: str, logp_change: float, rep: Report) -> None:
    """The challenge's four numbers beside ours, and the distribution of the probability on the answer."""
    sec = rep.section("How well it adds")
    names = {"mean_cross_entropy": "mean cross-entropy", "mean_prob_correct": "mean probability on the correct digit",
             "median_prob_correct": "median probability on the correct digit",
             "min_prob_correct": "minimum probability on the correct digit"}
    sec.table(["", "this model", "challenge (1,000 sequences)"],
              [[names[k], round(ev[k], 3), REFERENCE_EVALUATION[k]] for k in names]
              + [["per-digit accuracy", ev["accuracy"], "—"], ["sequence accuracy (all 4 digits)",
                                                               ev["sequence_accuracy"], "—"]],
              caption=f"{source}, processed weights, on {ev['n_sequences']} evaluation sequences")
    sec.text(f"Weight processing changed the log-probabilities by at most {logp_change:.2e}.")
    sec.figure("prob_correct", plots.histogram,
               "Distribution over sequences of log10(1 - p) for the probability p on the correct "
               "digit, per sum digit (further left is more confident).",
               {c: np.log10(1 - ev["prob_correct"][:, i] + 1e-9) for i, c in enumerate(analysis.OUT_LABELS)}, bins=40,
               title="Probability mass off the correct digit", xlabel="log10(1 - p(correct digit))")


def train_and_evaluate(config, workdir) -> dict:
    """Load or train the model of `config`, evaluate and analyse it, write the workdir.

    Returns the results dict also written to workdir/results.json.
    """
    t0 = time.perf_counter()
    if config.mode not in MODES:
        raise ValueError(f"config.mode must be one of {MODES}, got {config.mode!r}")
    tokens = evaluation_tokens(config)
    loaded = load_model(config) if config.mode == "load" else None  # inputs validate before config.json is written
    wd = common.open_workdir(workdir, config, "sum_digits", data_files=data_files(config))
    results: dict[str, Any] = {"variant": config.variant, "mode": config.mode}
    run, nonfinite = None, None
    if loaded is not None:
        cfg, params = loaded
        source = f"the challenge's checkpoint ({Path(config.checkpoint).name})"
    else:
        run = train_model(config, wd)
        nonfinite = common.write_metrics(wd, "sum_digits", run.train_history, run.eval_history, METRICS)
        cfg, params = run.cfg, run.params
        source = f"the model trained here (epoch {run.best_epoch})"
    pcfg, pparams = weights.process_weights(cfg, params)
    ev = evaluate(pcfg, pparams, tokens)
    results["evaluation"] = {k: v for k, v in ev.items() if k != "prob_correct"} | {"reference": REFERENCE_EVALUATION}
    results["weight_processing_max_log_prob_change"] = max_log_prob_change(cfg, params, pcfg, pparams, tokens)
    rep = Report(f"Sum of two 4-digit numbers ({config.variant} variant, {config.mode} mode)", INTRO,
                 directory=wd.path)
    evaluation_section(ev, source, results["weight_processing_max_log_prob_change"], rep)
    if run is not None:
        results["training"] = training_summary(run)
        training_section(run, results["training"], rep)
    results["analysis"] = analysis.analyze(pcfg, pparams, tokens, config.analysis, rep)
    common.attention_section(rep, pcfg, pparams, tokens, sd.VOCAB, "evaluation sequences", names=sd.to_text(tokens))
    return common.finish("sum_digits", config, wd, rep, results, t0, nonfinite)

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
     the validation accuracy of each sum digit is measured after every epoch
     (from the snapshots), and the head-level findings are set beside the
     challenge checkpoint's (`head_findings`, `shared_findings`), so mode
     'train' reads `config.checkpoint` too;
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
    fields = ("eval_fixture", "checkpoint") if config.mode == "load" else ("eval_fixture",)  # 'train' compares only
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
    'sequence_accuracy') on the validation sequences val_tokens [n_val, 14];
    snapshots: the parameters after every epoch, stacked [E, ...], at
    snapshot_epochs int [E].
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
    val_tokens: np.ndarray
    snapshots: dict
    snapshot_epochs: np.ndarray


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
                      int(config.num_epochs) - done, len(train_tokens), len(val_tokens), val_tokens,
                      result.snapshots, result.snapshot_epochs)


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


def validation_by_epoch(run: TrainedRun) -> dict:
    """Validation accuracy of each sum digit c1..c4 after every epoch (from the per-epoch
    parameter snapshots): 'epochs' [E], 'accuracy_per_digit' [E, 4], and the first epoch at
    which each digit's accuracy reaches VAL_ACCURACY_LEVEL (None if never)."""
    tokens = jax.numpy.asarray(run.val_tokens)
    acc = []
    for i in range(len(run.snapshot_epochs)):
        logits, _ = tm.apply(run.cfg, jax.tree.map(lambda x, i=i: x[i], run.snapshots), tokens,
                             output_positions=tuple(sd.OUTPUT_POSITIONS.tolist()))  # [n, 4, v]
        acc.append(np.asarray(sd.token_losses(logits, tokens)[1]).mean(0))
    acc = np.stack(acc)  # [E, 4]
    epochs = np.asarray(run.snapshot_epochs)
    return {"epochs": epochs, "accuracy_per_digit": acc,
            f"first_epoch_at_{VAL_ACCURACY_LEVEL}_per_digit": [first_epoch_at_least(epochs, acc[:, d],
                                                                                    VAL_ACCURACY_LEVEL)
                                                               for d in range(acc.shape[1])]}


def validation_by_epoch_section(vb: dict, rep: Report) -> None:
    epochs, acc = vb["epochs"], vb["accuracy_per_digit"]
    ref = REFERENCE_TRAINING
    sec = rep.section("Validation accuracy per digit, by epoch")
    sec.figure("val_accuracy_per_digit", plots.curves,
               f"Validation accuracy of each sum digit after every epoch (the challenge: per-digit accuracy "
               f"{VAL_ACCURACY_LEVEL} by epoch {ref['first_epoch_val_accuracy_0.999']}, "
               f"{ref['best_val_accuracy']} at its best epoch {ref['best_epoch']}).",
               {c: (epochs, acc[:, i]) for i, c in enumerate(analysis.OUT_LABELS)},
               title="Validation accuracy per sum digit", xlabel="epoch", ylabel="accuracy", markers=True)
    shown = sorted({int(e) for e in (1, 5, 10, 20, ref["first_epoch_val_accuracy_0.999"], 50, ref["best_epoch"],
                                     epochs[-1]) if e <= epochs[-1]})
    rows = [[e] + [float(v) for v in acc[int(np.flatnonzero(epochs == e)[0])]] for e in shown]
    rows.append([f"first epoch >= {VAL_ACCURACY_LEVEL}"] + [
        "never" if v is None else v for v in vb[f"first_epoch_at_{VAL_ACCURACY_LEVEL}_per_digit"]])
    sec.table(["epoch", *analysis.OUT_LABELS], rows, caption="Validation accuracy per sum digit at chosen epochs")


# Head findings of the challenge's checkpoint that a model trained here may share (analysis.NOTEBOOK_FINDINGS).
NEGLIGIBLE_LOSS_INCREASE = 0.01  # a mean ablation raising the loss by less than this "does not change the loss"
CARRY_RATIO = 5.0  # layer-1 keys "handle carries" when ablating them costs >= this x more with a carry than without


def head_findings(cfg: ModelConfig, params: dict, tokens: np.ndarray, an) -> dict:
    """The head-level findings of a processed model on tokens [n, 14], in a form two models
    can be compared by (heads may be numbered differently): the layer-0 corresponding-digit
    heads and the sets of digits they cover; the loss increase when mean-ablating each head
    [n_layers, n_heads], the layer-0 queries [n_heads], and the layer-1 keys on the sequences with
    and without a carry [n_heads] each."""
    tokens = np.asarray(tokens)
    _, acts = tm.apply(cfg, params, tokens, capture=analysis.capture_sites(cfg))
    carry = sd.carry_in(tokens)
    qk = analysis.layer0_qk(cfg, params, acts, float(an.corresponding_digit_threshold))
    heads = analysis.summarize_ablation(*analysis.ablation_scores(cfg, params, tokens, site="z", kind="mean"), carry)
    qkv = analysis.summarize_ablation(*analysis.ablation_scores(cfg, params, tokens, site=analysis.QKV, kind="mean"),
                                      carry)
    subsets = analysis.qkv_on_subsets(cfg, params, tokens, carry)
    cd = qk["corresponding_digit_heads"]
    k1 = lambda name: (subsets[name][1, 1] if subsets[name] is not None else np.full(cfg.n_heads, np.nan))
    return {"corresponding_digit_heads": cd,
            "corresponding_digit_sets": sorted(tuple(d) for d in cd.values()),
            "digits_with_a_corresponding_digit_head": sorted(set().union(*map(set, cd.values()))),
            "head_mean_ablation_loss_increase": heads["loss_increase"],
            "layer0_query_mean_ablation_loss_increase": qkv["loss_increase"][0, 0],
            "layer1_key_loss_increase_no_carry": k1("no carry"), "layer1_key_loss_increase_carry": k1("carry")}


def shared_findings(ours: dict, challenge: dict) -> dict:
    """{finding: {'ours', 'challenge', 'shared'}} over two `head_findings`: the same
    corresponding-digit digit sets (any head order), every sum digit covered by one, the most
    critical head in the same layer, layer-0 queries negligible (NEGLIGIBLE_LOSS_INCREASE), and
    the layer-1 keys mattering mostly on carry sequences (summed over heads, CARRY_RATIO)."""
    def facts(f):
        inc = np.asarray(f["head_mean_ablation_loss_increase"])
        no_carry, with_carry = (np.nansum(f[k]) for k in ("layer1_key_loss_increase_no_carry",
                                                          "layer1_key_loss_increase_carry"))
        return {
            "corresponding-digit heads (digit sets, any head order)": f["corresponding_digit_sets"],
            "every sum digit has a corresponding-digit head": (f["digits_with_a_corresponding_digit_head"]
                                                               == list(analysis.OUT_LABELS)),
            "most critical head (mean ablation) is in layer": int(np.unravel_index(np.argmax(inc), inc.shape)[0]),
            "layer-0 queries negligible": bool(np.max(f["layer0_query_mean_ablation_loss_increase"])
                                               < NEGLIGIBLE_LOSS_INCREASE),
            f"layer-1 keys matter mostly with a carry (>= {CARRY_RATIO:g}x the loss increase without)": bool(
                with_carry >= CARRY_RATIO * no_carry),
        }
    a, b = facts(ours), facts(challenge)
    return {k: {"ours": a[k], "challenge": b[k], "shared": a[k] == b[k]} for k in a}


def shared_findings_section(sf: dict, ours: dict, challenge: dict, rep: Report) -> None:
    sec = rep.section("Head findings shared with the challenge's checkpoint")
    shared = [k for k, v in sf.items() if v["shared"]]
    sec.text(f"The same head-level measurements on the model trained here and on the challenge's checkpoint (both "
             f"processed, on the same evaluation sequences). Shared: {'; '.join(shared) or 'none'}. Not shared: "
             f"{'; '.join(k for k in sf if k not in shared) or 'none'}. Corresponding-digit heads here: "
             + "; ".join(f"{h}: {', '.join(d) or 'none'}" for h, d in ours["corresponding_digit_heads"].items())
             + "; the checkpoint's: " + "; ".join(f"{h}: {', '.join(d) or 'none'}"
                                                 for h, d in challenge["corresponding_digit_heads"].items()) + ".")
    fmt = lambda v: ", ".join("".join(t) for t in v) if isinstance(v, list) else str(v)
    sec.table(["finding", "trained here", "challenge's checkpoint", "shared"],
              [[k, fmt(v["ours"]), fmt(v["challenge"]), "yes" if v["shared"] else "no"] for k, v in sf.items()],
              caption=f"Negligible: a loss increase below {NEGLIGIBLE_LOSS_INCREASE}. Mean-ablation loss increase of "
                      f"the layer-1 keys (H1.0-2) without / with a carry: trained here "
                      f"{analysis._fmt(ours['layer1_key_loss_increase_no_carry'])} / "
                      f"{analysis._fmt(ours['layer1_key_loss_increase_carry'])}, the checkpoint "
                      f"{analysis._fmt(challenge['layer1_key_loss_increase_no_carry'])} / "
                      f"{analysis._fmt(challenge['layer1_key_loss_increase_carry'])}")


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
    # The challenge's checkpoint: the model in mode 'load', the comparison in mode 'train' (inputs validate
    # before config.json is written).
    challenge = load_model(config)
    wd = common.open_workdir(workdir, config, "sum_digits", data_files=data_files(config))
    results: dict[str, Any] = {"variant": config.variant, "mode": config.mode}
    run, nonfinite = None, None
    if config.mode == "load":
        cfg, params = challenge
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
        results["validation_by_epoch"] = validation_by_epoch(run)
        validation_by_epoch_section(results["validation_by_epoch"], rep)
        ccfg, cparams = weights.process_weights(*challenge)
        ours, chal = (head_findings(c, p, tokens, config.analysis) for c, p in ((pcfg, pparams), (ccfg, cparams)))
        results["head_findings"] = {"trained_here": ours, "challenge_checkpoint": chal,
                                    "shared": shared_findings(ours, chal)}
        shared_findings_section(results["head_findings"]["shared"], ours, chal, rep)
    results["analysis"] = analysis.analyze(pcfg, pparams, tokens, config.analysis, rep)
    common.attention_section(rep, pcfg, pparams, tokens, sd.VOCAB, "evaluation sequences", names=sd.to_text(tokens))
    return common.finish("sum_digits", config, wd, rep, results, t0, nonfinite)

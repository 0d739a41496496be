"""Study 1, regression of a sum from text: training, probes, causal tests, report.

`train_and_evaluate(config, workdir)` runs one variant of `configs/text_sum.py`:

1. opens the workdir (config.json written, or checked against the given config);
2. loads the data: the user's TSV files (`config.data.train_tsv` / `val_tsv`) or a
   deterministic generated split written to workdir/data/{train,val}.tsv, read back
   through the same `read_tsv` (one code path);
3. trains the encoder (`toymech.tasks.text_sum`) with minibatch AdamW through
   `toymech.train.train` (checkpoints, a parameter snapshot per epoch, resume), and
   keeps the epoch with the best validation MSE, as the notebook kept its best
   checkpoint;
4. writes metrics.jsonl (one row per epoch);
5. analyses the best model on the validation problems:
   * ridge probes from the residual stream to the true sum x + y at every depth
     (embeddings, after each block) and position, and at the pooled last real token,
     with in-sample R² (the notebook's measure) and held-out R²;
   * the notebook's causal test: the pooled probe's weight vector is the "sum
     direction"; project it out of the pooled vectors and compare the MSE of a ridge
     readout of the target before and after (and after removing random directions,
     a control the notebook lacks);
   * the same as a real intervention: each depth's sum direction removed inside the
     forward pass (`interventions.project_out`, and also with the component set to its
     mean instead of 0), at the last real token or at every position, and the model's
     own MSE, for every depth and random controls in one compiled sweep
     (`toymech.analysis.sweeps.intervention_sweep`);
6. writes results.json, figures/*.png and report.html.

The "hidden state" is the residual stream (`blocks.{L-1}.hook_resid_post` for the
final one). toymech blocks are pre-LN, so it is read before the final LayerNorm that
feeds the regression head; the notebook's `nn.TransformerEncoderLayer` stack is
post-LN (its hidden states come out of a LayerNorm).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm
from toymech import experiment, plots, train
from toymech import interventions as iv
from toymech.analysis import linalg, probes, sweeps
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import common
from toymech.tasks import text_sum as ts

INTRO = (
    "A small bidirectional transformer encoder reads the characters of \"x + y = ?\" and regresses x + y "
    "(divided by 2000) from its last real token. Below: training; how linearly the sum can be read from the "
    "residual stream at every depth and position (ridge probes, R²); and whether the probe's \"sum direction\" "
    "is used: removing it from the pooled vectors hurts a ridge readout (the notebook's test), and removing it "
    "inside the forward pass hurts the model's own prediction (an intervention the notebook does not do). "
    "Differences from the notebook: toymech blocks are pre-LN (PyTorch's TransformerEncoderLayer is post-LN by "
    "default), and the head pools the last *real* token (the notebook's h[:, -1, :] reads a padding position "
    "for problems shorter than the longest in the batch).")

# Printed by the notebook (seeds/000_46e58850586c22e6.txt), on its validation set.
NOTEBOOK = {
    "best_val_mse_scaled": 0.001234409105964005,
    "pooled_r2": 0.9862602949142456,
    "position_r2": [0.8318772912025452, 0.8069847822189331, 0.9027222990989685, 0.7592655420303345,
                    0.9220019578933716, 0.8171101808547974, 0.9003023505210876, 0.8351649045944214,
                    0.8447633981704712, 0.7930974960327148, 0.7784875631332397, 0.8305479288101196,
                    0.9070967435836792],
    "ridge_head_mse_before": 2440.16650390625,
    "ridge_head_mse_after": 9711.5869140625,
    "delta_mse": 7271.42041015625,
}


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """The best-epoch model with its data and training record.

    params: parameters after `best_epoch` (lowest validation MSE); train_history:
    per epoch ('epoch', 'loss', 'mae', 'lr'); eval_history: per epoch ('epoch',
    'loss', 'mae') on the validation problems; data_files: {'train', 'val'} paths.
    """

    config: Any
    cfg: ModelConfig
    train: ts.Dataset
    val: ts.Dataset
    data_files: dict[str, str]
    params: dict
    best_epoch: int
    train_history: dict[str, np.ndarray]
    eval_history: dict[str, np.ndarray]
    train_seconds: float


# --------------------------------------------------------------------------- data and training


def user_files(config) -> dict[str, str]:
    """{'train': path, 'val': path} of the user's TSV files, or {} when the split is generated."""
    d = config.data
    if bool(d.train_tsv) != bool(d.val_tsv):
        raise ValueError("give both config.data.train_tsv and config.data.val_tsv, or neither (to generate them)")
    files = {"train": str(d.train_tsv), "val": str(d.val_tsv)} if d.train_tsv else {}
    for split, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.data.{split}_tsv = {path!r}: no such file")
    return files


def load_data(config) -> tuple[ts.Dataset, ts.Dataset]:
    """(train, val): the user's TSV files (`user_files`), or the generated split. Checked
    before the workdir is opened, so a bad file leaves no config.json behind."""
    files = user_files(config)
    if files:
        train_xyz, val_xyz = ts.read_tsv(files["train"]), ts.read_tsv(files["val"])
    else:
        d = config.data
        (xt, yt), (xv, yv) = ts.generate_split(int(d.n_train), int(d.n_val), int(d.max_operand), int(d.seed))
        train_xyz, val_xyz = (xt, yt, xt + yt), (xv, yv, xv + yv)
    length = ts.max_length(train_xyz[:2], val_xyz[:2])
    if length > int(config.model.n_ctx):
        where = f"{files['train']} / {files['val']}" if files else "the generated split"
        raise ValueError(f"the longest problem in {where} has {length} characters, more "
                         f"than the model's n_ctx={config.model.n_ctx}; raise config.model.n_ctx")
    return ts.make_dataset(*train_xyz, length=length), ts.make_dataset(*val_xyz, length=length)


def data_files(config, wd: experiment.Workdir, train_data: ts.Dataset, val_data: ts.Dataset) -> dict[str, str]:
    """The files the run's data is in: the user's, or the generated split written to workdir/data/."""
    files = user_files(config)
    if not files:
        files = {split: str(wd.path / "data" / f"{split}.tsv") for split in ("train", "val")}
        for split, data in (("train", train_data), ("val", val_data)):
            ts.write_tsv(files[split], data.x, data.y)
    return files


@functools.lru_cache(maxsize=None)
def _loss_fn(cfg: ModelConfig):
    """The task loss for `cfg`, one object per config, so the training engine's
    compilation cache (keyed by the function) is hit again in the same process."""
    return functools.partial(ts.loss_fn, cfg)


def train_model(config, wd: experiment.Workdir, train_data: ts.Dataset, val_data: ts.Dataset) -> TrainedRun:
    """Train (or resume, or reload a finished run) and pick the best validation epoch."""
    files = data_files(config, wd, train_data, val_data)
    cfg = ts.model_config(**config.model.to_dict())
    seed = int(config.seed)
    t0 = time.perf_counter()
    result = train.train(
        _loss_fn(cfg), tm.init_params(cfg, jax.random.key(seed)), train_data.batch(),
        config.optimizer.to_dict(), num_epochs=int(config.num_epochs), batch_size=int(config.batch_size),
        seed=seed, eval_data=val_data.batch(), eval_every=1, snapshot_every=1, workdir=str(wd.path),
        checkpoint_every=int(config.checkpoint_every), log_every=int(config.log_every))
    best = int(np.argmin(result.eval_history["loss"]))
    best_epoch = int(result.eval_history["epoch"][best])
    index = int(np.flatnonzero(result.snapshot_epochs == best_epoch)[0])
    params = jax.tree.map(lambda x: x[index], result.snapshots)
    return TrainedRun(config, cfg, train_data, val_data, files, params, best_epoch, result.train_history,
                      result.eval_history, time.perf_counter() - t0)


# metrics.jsonl: one row per epoch: train loss/MAE (epoch means), validation loss/MAE, lr.
METRICS = {"train/loss": ("train", "loss"), "train/mae": ("train", "mae"), "val/loss": ("eval", "loss"),
           "val/mae": ("eval", "mae"), "lr": ("train", "lr")}


# --------------------------------------------------------------------------- analyses


def depth_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """The residual stream at every depth: embeddings (block 0's resid_pre), then after each block."""
    return (tm.get_act_name("resid_pre", 0),) + tuple(tm.get_act_name("resid_post", l) for l in range(cfg.n_layers))


def depth_labels(cfg: ModelConfig) -> tuple[str, ...]:
    return ("embeddings",) + tuple(f"after block {l}" for l in range(cfg.n_layers))


def hidden_states(cfg: ModelConfig, params: dict, data: ts.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(predictions in sum units [n], residual stream at every depth [depth, n, pos, d_model])."""
    sites = depth_sites(cfg)
    pred, acts = ts.predict(cfg, params, jnp.asarray(data.tokens), jnp.asarray(data.mask), capture=sites)
    return np.asarray(pred) * ts.SCALE, np.stack([np.asarray(acts[s]) for s in sites])


@dataclasses.dataclass(frozen=True)
class SumProbes:
    """Ridge probes to the true sum. R² in-sample (fit and scored on all problems, as the
    notebook) and held out (fit on a split, scored on the rest): by position [depth, pos]
    and pooled at the last real token [depth]; `direction` [depth, d_model] is the pooled
    in-sample probe's weight vector (the "sum direction")."""

    position_r2: np.ndarray
    position_r2_heldout: np.ndarray
    pooled_r2: np.ndarray
    pooled_r2_heldout: np.ndarray
    direction: np.ndarray


def probe_sum(hidden: jax.Array, mask: jax.Array, sums: jax.Array, *, alpha: float, key: jax.Array,
              test_size: float) -> SumProbes:
    """Probes from hidden [depth, n, pos, d] (mask bool [n, pos]) to sums [n], all sites at once."""
    pooled = jax.vmap(ts.pool_last, in_axes=(0, None))(hidden, mask)  # [depth, n, d]
    # Targets as [n, 1] (one target column): `probes.probe` scores a 1-D target wrongly when acts have site axes.
    fit = lambda acts, k: probes.probe(acts, sums[:, None], sample_axis=1, alpha=alpha, key=k, test_size=test_size)
    at_pos, at_pos_out = fit(hidden, None), fit(hidden, key)
    pooled_in, pooled_out = fit(pooled, None), fit(pooled, key)
    return SumProbes(*(np.asarray(a)[..., 0] for a in (at_pos.r2, at_pos_out.r2, pooled_in.r2, pooled_out.r2,
                                                       pooled_in.fit.coef)))


def readout_causal_test(pooled: jax.Array, direction: jax.Array, target: jax.Array, random_directions: jax.Array,
                        *, alpha: float) -> dict:
    """The notebook's causal test on pooled vectors [n, d].

    A ridge readout (penalty alpha) of `target` [n] is fitted and scored (in-sample
    MSE) on the pooled vectors as they are, with `direction` [d] projected out, and
    with each of `random_directions` [k, d] projected out instead (control).
    """
    removed = [linalg.project_out(pooled, direction)] + [linalg.project_out(pooled, r) for r in random_directions]
    variants = jnp.stack([pooled, *removed])  # [2 + k, n, d]
    fit = probes.fit_ridge(variants, target, alpha)
    mse = np.asarray(jnp.mean((probes.predict(fit, variants) - target) ** 2, axis=-1))  # [2 + k]
    return {"ridge_head_mse_before": float(mse[0]), "ridge_head_mse_after": float(mse[1]),
            "delta_mse": float(mse[1] - mse[0]), "ridge_head_mse_after_random": mse[2:],
            "ridge_head_mse_after_random_mean": float(mse[2:].mean())}


def _scaled_mse(out: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    """Metric of a sweep: the model's MSE (scaled units) at the last real token; out [b, p, 1]."""
    return jnp.mean((ts.pool_last(out[..., 0], mask) - target) ** 2)


POSITION_MODES = ("last real token", "every position")
# What replaces the component along the direction: 0 (the notebook's projection), or its mean over the
# problems (at that position), which removes the information but keeps the activation on-distribution.
EDIT_KINDS = ("projected out", "set to its mean")


def intervention_causal_test(cfg: ModelConfig, params: dict, data: ts.Dataset, hidden: np.ndarray,
                             directions: np.ndarray, random_directions: np.ndarray, *, chunk_size: int) -> dict:
    """The model's own MSE (sum units²) with a direction removed from the residual stream.

    For every depth site d (see `depth_sites`; `hidden` [depth, n, pos, d_model] is the
    residual stream there), position mode (`POSITION_MODES`: the last real token, or
    every position), edit kind (`EDIT_KINDS`: the component along the direction
    projected out, i.e. set to 0, or set to its mean over the problems) and direction
    (d's own sum direction `directions[d]` [d_model], or one of `random_directions`
    [k, d_model]), one run edits site d only: `interventions.project_out` and then
    `interventions.add` of the mean component (zero for plain projection). All runs,
    and an unedited baseline, are one stacked intervention (every run edits every
    site; masks that select nothing switch the other sites off) evaluated in one
    compiled sweep.

    Returns {'baseline': mse, 'sum_direction': [depth, mode, kind], 'random': [depth, mode, kind, k]}.
    """
    sites = depth_sites(cfg)
    tokens, mask = jnp.asarray(data.tokens), jnp.asarray(data.mask)
    last = np.arange(mask.shape[1])[None, :] == np.asarray(ts.last_real_index(mask))[:, None]  # [n, pos]
    pos_masks = {"last real token": last, "every position": np.ones_like(last)}
    off = np.zeros_like(last)
    candidates = np.concatenate([directions[:, None], np.broadcast_to(random_directions, (
        len(sites), *random_directions.shape))], axis=1)  # [depth, c, d]
    candidates = candidates / np.linalg.norm(candidates, axis=-1, keepdims=True)
    component = np.einsum("dnpe,dce->dcnp", hidden, candidates)  # [depth, c, n, pos]
    mean_component = {  # [depth, c, pos]: the value the component is set to, per position mode
        "last real token": np.broadcast_to((component * last).sum((2, 3))[..., None] / len(last),
                                           component.shape[:2] + last.shape[1:]),
        "every position": component.mean(2)}
    no_shift = np.zeros(hidden.shape[2:], np.float32)  # [pos, d]

    def run(target=None, mode=None, kind=None, c=0):
        edits = []
        for d, site in enumerate(sites):
            active = d == target
            v = candidates[d, c]
            shift = mean_component[mode][d, c][:, None] * v if active and kind == EDIT_KINDS[1] else no_shift
            pos = pos_masks[mode] if active else off
            edits += [iv.project_out(site, v, pos=pos), iv.add(site, shift.astype(np.float32), pos=pos)]
        return iv.combine(*edits)

    runs = [run()]
    for d in range(len(sites)):
        for mode in POSITION_MODES:
            for kind in EDIT_KINDS:
                runs += [run(d, mode, kind, c) for c in range(candidates.shape[1])]
    metric = sweeps.Metric(_scaled_mse, (mask, jnp.asarray(data.batch()["target"])))
    mse = np.asarray(sweeps.intervention_sweep(cfg, params, tokens, iv.stack(runs), metric, key_padding_mask=mask,
                                               chunk_size=chunk_size)) * ts.SCALE**2
    per = mse[1:].reshape(len(sites), len(POSITION_MODES), len(EDIT_KINDS), candidates.shape[1])
    return {"baseline": float(mse[0]), "sum_direction": per[..., 0], "random": per[..., 1:]}


def random_unit_directions(key: jax.Array, k: int, d: int) -> np.ndarray:
    """k random unit vectors in R^d (Gaussian, normalised).  # [k, d]"""
    v = np.asarray(jax.random.normal(key, (k, d)))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- report


def training_summary(run: TrainedRun, pred: np.ndarray) -> dict:
    """Training numbers and the best model's validation errors in sum units."""
    th, eh = run.train_history, run.eval_history
    err = pred - run.val.z
    return {
        "epochs_trained": int(th["epoch"][-1]),
        "train_seconds_this_process": run.train_seconds,
        "n_train": int(len(run.train.z)), "n_val": int(len(run.val.z)),
        "max_problem_length": int(run.train.tokens.shape[1]),
        "best_epoch": run.best_epoch,
        "best_val_mse_scaled": float(eh["loss"][run.best_epoch - 1]),
        "final_train_mse_scaled": float(th["loss"][-1]),
        "final_val_mse_scaled": float(eh["loss"][-1]),
        "best_val_mse_sum_units": float(np.mean(err**2)),
        "best_val_rmse_sum_units": float(np.sqrt(np.mean(err**2))),
        "best_val_mae_sum_units": float(np.mean(np.abs(err))),
        "best_val_fraction_exact_after_rounding": float(np.mean(np.round(pred) == run.val.z)),
    }


def training_section(run: TrainedRun, summary: dict, pred: np.ndarray, rep: Report) -> None:
    th, eh = run.train_history, run.eval_history
    sec = rep.section("Training")
    sec.figure("loss_curves", plots.curves,
               "Mean squared error of (prediction - sum / 2000) per epoch; the analyses below use "
               "the epoch with the lowest validation MSE (dashed).",
               {"train MSE (epoch mean)": (th["epoch"], th["loss"]), "validation MSE": (eh["epoch"], eh["loss"])},
               title="Training", xlabel="epoch", ylabel="MSE, scaled units (log scale)", log_y=True, markers=True,
               vlines={"best epoch": run.best_epoch})
    sec.figure("predictions", plots.scatter, "Predicted vs true sum for every validation problem (dotted: y = x).",
               run.val.z, pred, diagonal=True, xlabel="true sum x + y", ylabel="model prediction x 2000",
               title="Best model on the validation problems")
    sec.key_values({
        "train / validation problems": f"{summary['n_train']} / {summary['n_val']}",
        "longest problem (tokens)": summary["max_problem_length"],
        "epochs trained / best epoch": f"{summary['epochs_trained']} / {summary['best_epoch']}",
        "best validation MSE, scaled (notebook 0.0012)": summary["best_val_mse_scaled"],
        "best validation RMSE in sum units": summary["best_val_rmse_sum_units"],
        "best validation MAE in sum units": summary["best_val_mae_sum_units"],
        "validation problems exact after rounding": summary["best_val_fraction_exact_after_rounding"],
        "final train / validation MSE, scaled": f"{summary['final_train_mse_scaled']:.3e} / "
                                                f"{summary['final_val_mse_scaled']:.3e}",
    }, caption="Training at a glance")


def probe_numbers(run: TrainedRun, hidden: np.ndarray) -> dict:
    """Ridge probes for x + y from the residual stream `hidden` [depth, n, pos, d] at every
    depth and position and at the pooled last real token (in-sample and held out), with each
    depth's pooled sum direction ('direction' [depth, d], the probe's unit weight vector)."""
    an, val = run.config.analysis, run.val
    probe_key, _ = jax.random.split(jax.random.key(int(an.seed)))
    pr = probe_sum(jnp.asarray(hidden), jnp.asarray(val.mask), jnp.asarray(val.x + val.y, jnp.float32),
                   alpha=float(an.probe_alpha), key=probe_key, test_size=float(an.probe_test_size))
    return {"alpha": float(an.probe_alpha), "pooled_r2": pr.pooled_r2, "pooled_r2_heldout": pr.pooled_r2_heldout,
            "position_r2": pr.position_r2, "position_r2_heldout": pr.position_r2_heldout,
            "share_of_real_tokens_by_position": val.mask.mean(0),
            "final_pooled_r2": float(pr.pooled_r2[-1]), "direction": np.asarray(pr.direction)}


def probe_section(pr: dict, labels: Sequence[str], rep: Report) -> None:
    sec = rep.section("Linear probes for the sum")
    positions = np.arange(len(pr["share_of_real_tokens_by_position"]))
    series = {f"{lab}": (positions, pr["position_r2"][d]) for d, lab in enumerate(labels)}
    series[f"{labels[-1]} (held out)"] = (positions, pr["position_r2_heldout"][-1])
    n_ref = len(NOTEBOOK["position_r2"])
    series["notebook (its final hidden state)"] = (np.arange(n_ref), NOTEBOOK["position_r2"])
    sec.figure("probe_r2_by_position", plots.curves,
               f"R² of a ridge probe (alpha {pr['alpha']:g}) from the residual stream at each position to "
               "x + y, in-sample as the notebook, per depth; the final depth also held out. Positions past a "
               "problem's end are padding for the shorter problems (their share of real tokens: "
               f"{', '.join(f'{s:.2f}' for s in pr['share_of_real_tokens_by_position'])}).",
               series, title="Ridge probe R² for x + y by position", xlabel="position", ylabel="R²", markers=True,
               highlight=(labels[-1],))
    sec.figure("probe_r2_pooled", plots.bars,
               "R² of the probe from the last real token's residual stream (the vector the "
               "regression head reads) at each depth; the notebook's pooled R² is 0.986.",
               list(labels), {"in-sample": pr["pooled_r2"], "held out": pr["pooled_r2_heldout"]},
               title="Probe R² at the pooled last real token", ylabel="R²")
    sec.table(["depth", "pooled R² (in-sample)", "pooled R² (held out)", "min / max R² over positions"],
              [[lab, float(pr["pooled_r2"][d]), float(pr["pooled_r2_heldout"][d]),
                f"{pr['position_r2'][d].min():.3f} / {pr['position_r2'][d].max():.3f}"]
               for d, lab in enumerate(labels)],
              caption="Probes (notebook: pooled 0.986, by position 0.76-0.92)")


def control_directions(run: TrainedRun) -> np.ndarray:
    """The random unit directions [k, d_model] both causal tests use as a control."""
    an = run.config.analysis
    _, random_key = jax.random.split(jax.random.key(int(an.seed)))
    return random_unit_directions(random_key, int(an.n_random_directions), run.cfg.d_model)


def readout_numbers(run: TrainedRun, hidden: np.ndarray, direction: np.ndarray, random_dirs: np.ndarray) -> dict:
    """Causal test 1 (the notebook's): the final pooled vectors' ridge readout MSE before and after
    projecting out the final depth's sum direction `direction` [d] (or a random one)."""
    pooled = ts.pool_last(jnp.asarray(hidden[-1]), jnp.asarray(run.val.mask))  # [n, d]
    return readout_causal_test(pooled, jnp.asarray(direction), jnp.asarray(run.val.z, jnp.float32),
                               jnp.asarray(random_dirs), alpha=float(run.config.analysis.probe_alpha))


def readout_section(readout: dict, k: int, rep: Report) -> None:
    sec = rep.section("Causal test 1: remove the sum direction from the pooled vectors")
    sec.figure("readout_causal_test", plots.bars,
               "The notebook's test: the pooled probe's weight vector is the sum direction; "
               "projecting it out of the final pooled vectors and refitting a ridge readout of the target raises "
               "its (in-sample) MSE; projecting out a random direction instead barely changes it.",
               ["before", "sum direction removed", f"random direction removed (mean of {k})"],
               {"toymech": [readout["ridge_head_mse_before"], readout["ridge_head_mse_after"],
                            readout["ridge_head_mse_after_random_mean"]],
                "notebook": [NOTEBOOK["ridge_head_mse_before"], NOTEBOOK["ridge_head_mse_after"], np.nan]},
               title="Ridge readout MSE of the target (sum units²)", ylabel="MSE", log_y=True)
    sec.table(["quantity", "toymech", "notebook"], [
        ["ridge readout MSE before", readout["ridge_head_mse_before"], NOTEBOOK["ridge_head_mse_before"]],
        ["after removing the sum direction", readout["ridge_head_mse_after"], NOTEBOOK["ridge_head_mse_after"]],
        ["delta", readout["delta_mse"], NOTEBOOK["delta_mse"]],
        [f"after removing a random direction (mean of {k})", readout["ridge_head_mse_after_random_mean"], None],
    ], caption="Readout MSE in sum units² (the notebook's model is less precise, so its MSEs are larger)")


def intervention_numbers(run: TrainedRun, hidden: np.ndarray, directions: np.ndarray,
                         random_dirs: np.ndarray) -> dict:
    """Causal test 2: the model's own MSE with each depth's sum direction (or a random one)
    projected out or set to its mean inside the forward pass (`intervention_causal_test`)."""
    inter = intervention_causal_test(run.cfg, run.params, run.val, hidden, directions, random_dirs,
                                     chunk_size=int(run.config.analysis.chunk_size))
    return {
        "baseline_mse": inter["baseline"], "position_modes": list(POSITION_MODES), "edit_kinds": list(EDIT_KINDS),
        "sum_direction_mse": inter["sum_direction"], "random_direction_mse": inter["random"],
        "random_direction_mse_mean": inter["random"].mean(-1),  # [depth, mode, kind]
        "final_depth_last_token_projected_out_mse": float(inter["sum_direction"][-1, 0, 0]),
        "final_depth_last_token_set_to_mean_mse": float(inter["sum_direction"][-1, 0, 1]),
    }


def intervention_section(inter: dict, labels: Sequence[str], k: int, rep: Report) -> None:
    sec = rep.section("Causal test 2: remove the sum direction inside the forward pass")
    rand = inter["random_direction_mse_mean"]
    groups = {"no edit": [inter["baseline_mse"]] * len(labels)}
    for e, kind in enumerate(EDIT_KINDS):
        groups[f"sum direction {kind}"] = inter["sum_direction_mse"][:, 0, e]
        groups[f"random direction {kind}"] = rand[:, 0, e]
    sec.figure("intervention_causal_test", plots.bars,
               "At each depth of the residual stream (x axis), the component along that depth's "
               f"pooled-probe sum direction, or along a random unit direction (mean over {k}), is projected out "
               "(set to 0, as the notebook does to the pooled vectors) or set to its mean over the problems, at the "
               "last real token inside the forward pass (interventions.project_out + add); bars are the model's "
               "own MSE on the validation problems. At the last block's output this is the forward-pass version "
               "of causal test 1.",
               list(labels), groups, log_y=True,
               title="The model's own MSE with a direction removed at the last real token (sum units²)", ylabel="MSE")
    sec.text("Setting the component to its mean removes what the direction says about each problem while keeping "
             "the activation where the model expects it; projecting it out also shifts the activation off its usual "
             "range, which hurts even for random directions. At the embeddings the last real token is always '?', "
             "so its probe can only read the problem's length from the position embedding (low R²): an effect there "
             "shows that the direction is used, not that it carries the sum.", note=True)
    rows = []
    for d, lab in enumerate(labels):
        for m, mode in enumerate(POSITION_MODES):
            rows.append([lab, mode] + [float(v) for e in range(len(EDIT_KINDS))
                                       for v in (inter["sum_direction_mse"][d, m, e], rand[d, m, e])])
    sec.table(["depth", "where"] + [f"{what} {kind}" for kind in EDIT_KINDS for what in ("sum direction", "random")],
              rows, caption=f"Model MSE in sum units² (no edit: {inter['baseline_mse']:.4g}; random: mean of {k})")


# Each token id as the attention view shows it (a space as '␣'; padding is never shown).
TOKEN_LABELS = tuple(name.replace(" ", "␣") for name in ts.VOCAB)  # a space shows as ␣


def analyze(run: TrainedRun, hidden: np.ndarray, rep: Report) -> dict:
    """Probes and both causal tests on the validation problems, from their residual stream
    `hidden` [depth, n, pos, d_model] (see `hidden_states`): each analysis's numbers, then its section."""
    labels, k = depth_labels(run.cfg), int(run.config.analysis.n_random_directions)
    out: dict = {"depths": list(labels), "sites": list(depth_sites(run.cfg))}
    out["probes"] = probe_numbers(run, hidden)
    probe_section(out["probes"], labels, rep)
    random_dirs = control_directions(run)
    out["readout_causal_test"] = readout_numbers(run, hidden, out["probes"]["direction"][-1], random_dirs)
    readout_section(out["readout_causal_test"], k, rep)
    out["intervention_causal_test"] = intervention_numbers(run, hidden, out["probes"]["direction"], random_dirs)
    intervention_section(out["intervention_causal_test"], labels, k, rep)
    common.attention_section(rep, run.cfg, run.params, run.val.tokens, TOKEN_LABELS, "validation problems",
                             key_padding_mask=run.val.mask, names=[ts.decode(row) for row in run.val.tokens])
    return out


def train_and_evaluate(config, workdir) -> dict:
    """Train (or resume) the variant in `config`, run its analyses, write the workdir.

    Returns the results dict also written to workdir/results.json.
    """
    t0 = time.perf_counter()
    train_data, val_data = load_data(config)
    wd = common.open_workdir(workdir, config, "text_sum", data_files=user_files(config))
    run = train_model(config, wd, train_data, val_data)
    nonfinite = common.write_metrics(wd, "text_sum", run.train_history, run.eval_history, METRICS)
    pred, hidden = hidden_states(run.cfg, run.params, run.val)
    summary = training_summary(run, pred)
    results: dict[str, Any] = {"variant": config.variant, "data_files": run.data_files, "training": summary}
    rep = Report(f"Regression of a sum from text ({config.variant} variant)", INTRO, directory=wd.path)
    training_section(run, summary, pred, rep)
    results["analysis"] = analyze(run, hidden, rep)
    results["notebook"] = NOTEBOOK
    return common.finish("text_sum", config, wd, rep, results, t0, nonfinite)

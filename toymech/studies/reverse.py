"""Study 2, reverse and increment: training, weight ablations, residual/attention/MLP views, report.

`train_and_evaluate(config, workdir)` runs one variant of `configs/reverse.py`:

1. opens the workdir (config.json written, or checked against the given config);
2. trains the 2-layer, d_model-4 decoder (`toymech.tasks.reverse`) with minibatch
   AdamW, the notebook's warmup + cosine schedule per epoch and gradient clipping,
   through `toymech.train.train` (checkpoints, resume); after every epoch the whole
   train set and the holdout set are scored in the same compiled program, as the
   notebook's `evaluate_model` does;
3. writes metrics.jsonl (one row per epoch: loss, lr, train and holdout accuracy);
4. analyses the final model on the holdout sequences:
   * weight ablations (`weights.zero_weights`): layer-0 MLP W_out, layer-1
     MLP W_out, layer-0 attention W_O (the notebook's three) and layer-1 attention
     W_O, all scored in one vmapped call over the stacked parameter sets;
   * cosine similarity of the final residual stream at the output positions with
     the digit embeddings W_E[0..3];
   * layer-0 (and layer-1) attention from the output positions to the inputs, and
     how much of it falls on the mirrored input that the output copies;
   * layer-0 MLP outputs, and which embedding they point to;
   * autoregressive accuracy: the outputs generated greedily from [BOS, x0..x7]
     (`toymech.generate`, KV-cached), exact match and per token, beside teacher forcing;
5. optionally (`config.seed_sweep`, non-empty in the `seeds` variant) trains the
   same recipe for several seeds at once (`toymech.train.train_many`, vmapped, in
   workdir/seed_sweep) and reports each seed's holdout accuracy: a d_model-4 model
   does not solve the task from every initialisation;
6. writes results.json, figures/*.png and report.html.

Seed: `config.seed` seeds the initial parameters (`toymech.init_params` with the
training engine's init key `fold_in(key(seed), 0)`; TransformerLens's init
distribution, JAX's generator, so not the notebook's exact weights) and the batch
order. Seed s of the seed sweep starts from the same parameters and sees the same
batches as a main run with seed s; its vmapped kernels round differently, and Adam
amplifies such differences in near-zero gradients, so the two runs track each other
closely but not bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm
from toymech import experiment, plots, train, weights
from toymech.analysis import linalg
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import common, reverse_circuits
from toymech.studies.common import first_epoch_at_least
from toymech.tasks import reverse as rv

INTRO = (
    "A 2-layer transformer with a 4-dimensional residual stream (1 head of width 2, MLPs of width 16, ReLU, "
    "LayerNorm) reads [BOS, x0..x7] and writes y = reverse(x) + 1 mod 4 one token at a time. It is trained on "
    "the first 60,000 of all 4^8 inputs and scored on the last 5,536. Below: training; what zeroing each "
    "block's output weights does; the final residual stream compared with the digit embeddings; the attention "
    "from each output position to the mirrored input it must copy; and the layer-0 MLP outputs. The original "
    "notebook's numbers are shown beside ours.")

# The notebook's run (seeds/001_8801df8ab1e67bca.txt; STUDIES.md section 2).
NOTEBOOK = {
    "first_epoch_holdout_accuracy_100": 19,
    "final_holdout_accuracy": 1.0,
    "ablated_holdout_accuracy": {"blocks.0.mlp.W_out": 0.2097, "blocks.1.mlp.W_out": 0.2411,
                                 "blocks.0.attn.W_O": 0.3880},
}
ABLATIONS = ("blocks.0.mlp.W_out", "blocks.1.mlp.W_out", "blocks.0.attn.W_O", "blocks.1.attn.W_O")
TOKENS = tuple(str(t) for t in range(rv.N_SYMBOLS))


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """The final model with its data and training record.

    sequences: all 65,536 sequences [n, 17]; is_train: bool [n]; train_history: per
    epoch ('epoch', 'loss', 'accuracy' (running batch mean), 'lr' (the epoch's lr));
    eval_history: per epoch ('epoch', 'train_accuracy', 'holdout_accuracy',
    'train_loss', 'holdout_loss') after the epoch.
    """

    config: Any
    cfg: ModelConfig
    sequences: np.ndarray
    is_train: np.ndarray
    params: dict
    train_history: dict[str, np.ndarray]
    eval_history: dict[str, np.ndarray]
    train_seconds: float

    @property
    def holdout(self) -> np.ndarray:
        return self.sequences[~self.is_train]


@functools.lru_cache(maxsize=None)
def _task_functions(cfg: ModelConfig) -> tuple:
    """(loss_fn, init, eval_fn) for `cfg`: one object each per config, so the training
    engine's compilation caches (keyed by these functions) are hit again when a run is
    resumed or repeated in the same process."""
    return (functools.partial(rv.loss_fn, cfg), functools.partial(tm.init_params, cfg),
            functools.partial(rv.split_metrics, cfg))


def _fit(config, workdir: str, seeds: list[int], many: bool):
    """(cfg, sequences, is_train, TrainResult) of `train.train` (one seed) or `train.train_many` (many=True)."""
    cfg = rv.model_config(**config.model.to_dict())
    sequences = rv.all_sequences()
    train_seqs, _ = rv.split(sequences, int(config.n_train))
    is_train = np.arange(len(sequences)) < len(train_seqs)
    loss_fn, init, eval_fn = _task_functions(cfg)
    args = (loss_fn, init, train_seqs, config.optimizer.to_dict())
    kwargs = dict(num_epochs=int(config.num_epochs), batch_size=int(config.batch_size),
                  eval_data={"sequences": sequences, "is_train": is_train},
                  eval_fn=eval_fn, eval_every=1, workdir=workdir,
                  checkpoint_every=int(config.checkpoint_every), log_every=int(config.log_every))
    if many:
        return cfg, sequences, is_train, train.train_many(*args, seeds=seeds, **kwargs)
    return cfg, sequences, is_train, train.train(*args, seed=seeds[0], **kwargs)


def train_model(config, wd: experiment.Workdir) -> TrainedRun:
    """Train (or resume, or reload a finished run) as the config says."""
    t0 = time.perf_counter()
    cfg, sequences, is_train, result = _fit(config, str(wd.path), [int(config.seed)], many=False)
    return TrainedRun(config, cfg, sequences, is_train, result.params, result.train_history, result.eval_history,
                      time.perf_counter() - t0)


def seed_sweep(config, wd: experiment.Workdir) -> dict | None:
    """Holdout accuracy per epoch [n_seeds, epochs] for every seed of `config.seed_sweep`,
    trained at once (vmapped) in workdir/seed_sweep; None when the sweep is empty."""
    seeds = [int(s) for s in config.seed_sweep]
    if not seeds:
        return None
    _, _, _, result = _fit(config, str(wd.path / "seed_sweep"), seeds, many=True)
    return {"seeds": seeds, "epochs": result.eval_history["epoch"],
            "holdout_accuracy": result.eval_history["holdout_accuracy"]}


def epochs_below_100_after_first_100(epochs, accuracy) -> list[int]:
    """The epochs after the first one at 100% accuracy whose accuracy is below 100% again."""
    first = first_epoch_at_least(epochs, accuracy, 1.0)
    return [] if first is None else [int(e) for e, v in zip(epochs, accuracy) if e > first and v < 1.0]


def seed_sweep_numbers(sweep: dict) -> dict:
    """The spread of a seed sweep (see `seed_sweep`): per seed the final and best holdout
    accuracy, the first epoch at 100%, how many epochs were at 100%, and the epochs after the
    first 100% that fell below it again."""
    epochs, acc = np.asarray(sweep["epochs"]), np.asarray(sweep["holdout_accuracy"])  # [E], [S, E]
    first = [first_epoch_at_least(epochs, a, 1.0) for a in acc]
    dips = [epochs_below_100_after_first_100(epochs, a) for a in acc]
    return {"seeds": list(sweep["seeds"]), "epochs": epochs, "holdout_accuracy": acc,
            "final_holdout_accuracy": acc[:, -1], "best_holdout_accuracy": acc.max(1),
            "first_epoch_holdout_accuracy_100": first, "epochs_at_100": (acc >= 1.0).sum(1),
            "epochs_below_100_after_first_100": dips,
            "fraction_of_seeds_reaching_100": float(np.mean([e is not None for e in first]))}


def seed_sweep_section(numbers: dict, run: TrainedRun, rep: Report) -> None:
    """Report section of `seed_sweep_numbers`."""
    epochs, acc, first = numbers["epochs"], numbers["holdout_accuracy"], numbers["first_epoch_holdout_accuracy_100"]
    sec = rep.section("Seeds")
    sec.figure("seed_sweep", plots.curves,
               f"The training recipe run from {len(acc)} seeds at once (train_many, vmapped): "
               "the initialisation decides whether the 4-dimensional model finds the full algorithm.",
               {f"seed {s}": (epochs, a) for s, a in zip(numbers["seeds"], acc)},
               title="Holdout accuracy of the same recipe from different seeds", xlabel="epoch",
               ylabel="holdout accuracy", highlight=(f"seed {int(run.config.seed)}",),
               vlines={"notebook: 100% from here": NOTEBOOK["first_epoch_holdout_accuracy_100"]})
    sec.text(f"{numbers['fraction_of_seeds_reaching_100']:.0%} of the seeds reach 100% holdout accuracy within "
             f"{int(epochs[-1])} epochs.")
    sec.table(["seed", "final holdout accuracy", "best holdout accuracy", "first epoch at 100%", "epochs at 100%",
               "later epochs below 100%"],
              [[s, float(f), float(b), e, int(n), ", ".join(map(str, d)) or "none"] for s, f, b, e, n, d in zip(
                  numbers["seeds"], numbers["final_holdout_accuracy"], numbers["best_holdout_accuracy"], first,
                  numbers["epochs_at_100"], numbers["epochs_below_100_after_first_100"])],
              caption="Holdout accuracy per seed (the notebook's run: 100% from epoch 19)")


# metrics.jsonl: one row per epoch, as the notebook prints: loss, lr, train and holdout accuracy.
METRICS = {"train/loss": ("train", "loss"), "train/batch_accuracy": ("train", "accuracy"), "lr": ("train", "lr"),
           "train/accuracy": ("eval", "train_accuracy"), "train/eval_loss": ("eval", "train_loss"),
           "holdout/accuracy": ("eval", "holdout_accuracy"), "holdout/loss": ("eval", "holdout_loss")}


# --------------------------------------------------------------------------- analyses


@functools.partial(jax.jit, static_argnums=0)
def _position_accuracy(cfg: ModelConfig, stacked_params: dict, sequences: jax.Array) -> jax.Array:
    """Accuracy at each output position (y0..y7) of each parameter set stacked along
    the leading axis of `stacked_params`: [n_sets, 8]."""
    def one(params):
        _, correct = rv.token_losses(rv.output_logits(cfg, params, sequences)[0], sequences)
        return correct.mean(0)

    return jax.vmap(one)(stacked_params)


def weight_ablations(cfg: ModelConfig, params: dict, sequences: np.ndarray, names=ABLATIONS) -> np.ndarray:
    """Accuracy per output position with no ablation (row 0) and with each weight in
    `names` zeroed (rows 1..): [1 + len(names), 8], one vmapped call over the stacked
    parameter sets."""
    variants = [params] + [weights.zero_weights(params, name) for name in names]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *variants)
    return np.asarray(_position_accuracy(cfg, stacked, jnp.asarray(sequences)))


CAPTURE = ("blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.0.hook_mlp_out")


def activations(cfg: ModelConfig, params: dict, sequences: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(predicted output tokens [n, 8], {site: activation}) for the analyses' sites
    (`CAPTURE` and the final residual stream)."""
    final = tm.get_act_name("resid_post", cfg.n_layers - 1)
    logits, acts = rv.output_logits(cfg, params, jnp.asarray(sequences), capture=CAPTURE + (final,))
    acts = {k: np.asarray(v) for k, v in acts.items()}
    acts["final"] = acts.pop(final)
    return np.asarray(jnp.argmax(logits, -1)), acts


def embedding_agreement(vectors: np.ndarray, W_E: np.ndarray, tokens: dict[str, np.ndarray]) -> dict:
    """Cosine similarity of vectors [n, 8, d] (at the output positions) with the digit
    embeddings W_E[0..3]: for each named token array [n, 8], the fraction of vectors
    whose most similar embedding is that token, overall and per position."""
    cos = np.asarray(linalg.cosine_similarity(jnp.asarray(vectors), jnp.asarray(W_E[: rv.N_SYMBOLS])))  # [n, 8, 4]
    nearest = cos.argmax(-1)
    return {"cosine": cos, **{name: {"fraction": float((nearest == t).mean()), "by_position": (nearest == t).mean(0)}
                              for name, t in tokens.items()}}


def attention_to_inputs(pattern: np.ndarray) -> dict:
    """Attention from the output positions to the inputs, pattern [n, head, 16, 16].

    Returns 'mean' [head, 8 outputs, 8 inputs] (rows y0..y7, columns x0..x7),
    'mirror_weight' [head, 8] (mean weight on the mirrored input each output copies)
    and 'mirror_is_argmax' [head, 8] (fraction of sequences whose most-attended key is
    that input).
    """
    out = pattern[:, :, rv.OUTPUT_POSITIONS]  # [n, h, 8, 16]
    mirror = out[:, :, np.arange(rv.N_DIGITS), rv.MIRROR_POSITIONS]  # [n, h, 8]
    return {"mean": out[..., rv.INPUT_POSITIONS].mean(0), "mirror_weight": mirror.mean(0),
            "mirror_is_argmax": (out.argmax(-1) == rv.MIRROR_POSITIONS).mean(0)}


# --------------------------------------------------------------------------- report


def training_summary(run: TrainedRun) -> dict:
    th, eh = run.train_history, run.eval_history
    return {
        "epochs_trained": int(th["epoch"][-1]),
        "train_seconds_this_process": run.train_seconds,
        "n_train": int(run.is_train.sum()), "n_holdout": int((~run.is_train).sum()),
        "final_train_loss": float(th["loss"][-1]),
        "final_train_accuracy": float(eh["train_accuracy"][-1]),
        "final_holdout_accuracy": float(eh["holdout_accuracy"][-1]),
        "final_holdout_loss": float(eh["holdout_loss"][-1]),
        "first_epoch_holdout_accuracy_100": first_epoch_at_least(eh["epoch"], eh["holdout_accuracy"], 1.0),
        "first_epoch_holdout_accuracy_99": first_epoch_at_least(eh["epoch"], eh["holdout_accuracy"], 0.99),
        "epochs_at_100_holdout": int((eh["holdout_accuracy"] >= 1.0).sum()),
        "epochs_below_100_holdout_after_first_100": epochs_below_100_after_first_100(eh["epoch"],
                                                                                     eh["holdout_accuracy"]),
        "peak_lr": float(th["lr"].max()),
    }


def training_section(run: TrainedRun, summary: dict, rep: Report) -> None:
    th, eh = run.train_history, run.eval_history
    ref = {"notebook: 100% holdout from here": NOTEBOOK["first_epoch_holdout_accuracy_100"]}
    sec = rep.section("Training")
    sec.figure("loss_curves", plots.curves,
               "Mean cross-entropy over the 8 output tokens: the epoch mean of the training "
               "batches, and the holdout set after each epoch.",
               {"train loss (epoch mean)": (th["epoch"], th["loss"]),
                "holdout loss": (eh["epoch"], eh["holdout_loss"])},
               title="Cross-entropy on the output tokens", xlabel="epoch", ylabel="loss (log scale)", log_y=True,
               markers=True)
    sec.figure("accuracy_curves", plots.curves,
               "Accuracy over the 8 output tokens on the whole train set and the holdout set "
               "after each epoch (as the notebook's evaluate_model).",
               {"train": (eh["epoch"], eh["train_accuracy"]), "holdout": (eh["epoch"], eh["holdout_accuracy"])},
               title="Output-token accuracy after each epoch", xlabel="epoch", ylabel="accuracy", markers=True,
               vlines=ref)
    o = run.config.optimizer
    floor = f"{o.end:g} + " if o.end else ""
    schedule = (f"{o.lr:g} x (epoch+1)/{o.warmup} for {o.warmup} warmup epochs, then {o.lr:g} x ({floor}"
                f"{(o.peak - o.end) / 2:g} (1 + cos(pi (epoch-{o.warmup})/{o.total - o.warmup}))) (with the "
                "default config the notebook's LambdaLR, peaking at 1.3 x 6e-3)"
                if o.schedule == "warmup_cosine" and o.schedule_unit == "epoch" else f"the '{o.schedule}' schedule")
    sec.figure("learning_rate", plots.curves, f"The learning rate of each epoch: {schedule}.",
               {"lr": (th["epoch"], th["lr"])}, title="Learning rate", xlabel="epoch", ylabel="lr", markers=True)
    sec.key_values({
        "train / holdout sequences": f"{summary['n_train']} / {summary['n_holdout']}",
        "first epoch with 100% holdout accuracy (notebook 19)": summary["first_epoch_holdout_accuracy_100"],
        "epochs at 100% holdout accuracy": f"{summary['epochs_at_100_holdout']} of {summary['epochs_trained']}",
        "later epochs below 100%": ", ".join(map(str, summary["epochs_below_100_holdout_after_first_100"])) or "none",
        "first epoch with >= 99% holdout accuracy": summary["first_epoch_holdout_accuracy_99"],
        "final train / holdout accuracy": f"{summary['final_train_accuracy']:.4%} / "
                                          f"{summary['final_holdout_accuracy']:.4%}",
        "final train / holdout loss": f"{summary['final_train_loss']:.3e} / {summary['final_holdout_loss']:.3e}",
    }, caption="Training at a glance")


OUT_LABELS = tuple(f"y{i}" for i in range(rv.N_DIGITS))
IN_LABELS = tuple(f"x{i}" for i in range(rv.N_DIGITS))


def _n_show(run: TrainedRun) -> int:
    return min(int(run.config.analysis.n_examples), len(run.holdout))


def ablation_numbers(run: TrainedRun) -> dict:
    """Holdout accuracy with no weight zeroed and with each of `ABLATIONS` zeroed, overall and
    per output position [1 + A, 8], beside the notebook's."""
    acc = weight_ablations(run.cfg, run.params, run.holdout)  # [1 + A, 8]
    return {"names": ["none", *ABLATIONS], "holdout_accuracy": acc.mean(-1), "by_position": acc,
            "notebook": NOTEBOOK["ablated_holdout_accuracy"]}


def ablation_section(ab: dict, rep: Report) -> None:
    names, overall, acc = ab["names"], ab["holdout_accuracy"], ab["by_position"]
    sec = rep.section("Weight ablations")
    ref = [NOTEBOOK["final_holdout_accuracy"]] + [NOTEBOOK["ablated_holdout_accuracy"].get(n, np.nan)
                                                   for n in ABLATIONS]
    sec.figure("weight_ablations", plots.bars,
               "Holdout accuracy over the output tokens after zeroing each weight matrix "
               "(weights.zero_weights); the notebook did not ablate layer-1 attention W_O. Chance is 25%.",
               list(names), {"toymech": overall, "notebook": ref},
               title="Holdout accuracy with one weight matrix zeroed", ylabel="accuracy")
    sec.figure("weight_ablations_by_position", plots.heatmap,
               "The same accuracies per output token y0..y7: which outputs each component is "
               "needed for.",
               acc, vmin=0, vmax=1, annotate=True, origin_lower=False, xlabel="output token", ylabel="zeroed weight",
               xticks=(list(range(rv.N_DIGITS)), list(OUT_LABELS)), yticks=(list(range(len(names))), list(names)),
               title="Holdout accuracy per output token", width=8, height=4)
    sec.table(["zeroed weight", "holdout accuracy (toymech)", "notebook"],
              [[n, float(a), NOTEBOOK["ablated_holdout_accuracy"].get(n, "—") if n != "none" else 1.0]
               for n, a in zip(names, overall)], caption="Weight ablations")


def copy_route_numbers(ab: dict, att: dict) -> dict:
    """Which attention layer carries the copy of the mirrored input: holdout accuracy with each
    layer's W_O zeroed (from `ablation_numbers`) beside each layer's mean attention weight on the
    mirrored input and how often it is the most-attended key (from `attention_numbers`), per
    layer; 'copying_layer' is the layer whose W_O zeroed costs the most accuracy."""
    acc = dict(zip(ab["names"], ab["holdout_accuracy"]))
    layers = sorted(int(k.split("_")[1]) for k in att)
    zeroed = {layer: float(acc[f"blocks.{layer}.attn.W_O"]) for layer in layers}
    return {"holdout_accuracy_with_W_O_zeroed": zeroed,
            "mean_mirror_weight": {layer: float(att[f"layer_{layer}"]["mirror_weight"][0].mean()) for layer in layers},
            "mirror_is_most_attended": {layer: float(att[f"layer_{layer}"]["mirror_is_argmax"][0].mean())
                                        for layer in layers},
            "copying_layer": min(zeroed, key=zeroed.get),
            "notebook_layer_0_W_O_zeroed": NOTEBOOK["ablated_holdout_accuracy"]["blocks.0.attn.W_O"]}


def copy_route_section(cr: dict, rep: Report) -> None:
    zeroed, mirror, top = cr["holdout_accuracy_with_W_O_zeroed"], cr["mean_mirror_weight"], cr["mirror_is_most_attended"]
    layer = cr["copying_layer"]
    sec = rep.section("Which layer copies the mirrored input")
    sec.text(f"The notebook's model needs layer-0 attention: zeroing its W_O leaves {cr['notebook_layer_0_W_O_zeroed']:.1%} "
             f"holdout accuracy. In this model zeroing layer-0 W_O leaves {zeroed[0]:.1%} and zeroing layer-1 W_O "
             f"{zeroed[1]:.1%}, so the copy runs mostly through layer {layer}: the same task, a different circuit. "
             f"The attention agrees: on average layer 0 puts {mirror[0]:.1%} of an output's attention on the input "
             f"it copies (most-attended for {top[0]:.0%} of outputs), layer 1 {mirror[1]:.1%} "
             f"({top[1]:.0%}). Which layer a 4-dimensional model uses is decided by its initialisation (see Seeds, "
             f"where the run has several); the notebook's layer-0 ablation therefore tests a different component "
             f"here, and the layer-1 ablation is its counterpart.")
    sec.table(["layer", "holdout accuracy, attention W_O zeroed", "notebook", "mean weight on the mirrored input",
               "mirrored input most attended"],
              [[f"layer {lay}", zeroed[lay], cr["notebook_layer_0_W_O_zeroed"] if lay == 0 else "not ablated",
                mirror[lay], top[lay]] for lay in zeroed],
              caption="The copying circuit: ablation and attention side by side")


def final_resid_numbers(run: TrainedRun, pred: np.ndarray, acts: dict) -> dict:
    """The final residual stream at the output positions against the digit embeddings: mean cosine
    by target [4 targets, 4 embeddings], how often the nearest embedding is the target / the
    prediction, and the first examples' cosines."""
    targets = run.holdout[:, 1 + rv.N_DIGITS:]  # [n, 8]
    final = acts["final"][:, rv.OUTPUT_POSITIONS]  # [n, 8, d]
    agree = embedding_agreement(final, np.asarray(run.params["embed"]["W_E"]), {"target": targets, "prediction": pred})
    cos = agree.pop("cosine")
    by_target = np.stack([cos[targets == t].mean(0) for t in range(rv.N_SYMBOLS)])  # [4 targets, 4 embeddings]
    return {"mean_by_target": by_target, **agree, "examples": cos[:_n_show(run)]}


def final_resid_section(fr: dict, targets: np.ndarray, rep: Report) -> None:
    """`targets`: the holdout's output tokens [n, 8] (the first examples are shown)."""
    sec = rep.section("Final residual stream vs the digit embeddings")
    sec.figure("final_resid_cosine", plots.heatmap,
               f"Cosine similarity of the last block's output (resid_post, before the final "
               f"LayerNorm) at the output positions with each digit embedding, averaged over holdout outputs with "
               f"the same target. The nearest embedding is the target for {fr['target']['fraction']:.1%} of "
               f"outputs and the model's prediction for {fr['prediction']['fraction']:.1%}: the unembedding, "
               f"not the embedding, is what the residual has to line up with.",
               fr["mean_by_target"], center=True, annotate=True, origin_lower=False, xlabel="embedding W_E[t]",
               ylabel="target token", xticks=(list(range(4)), TOKENS), yticks=(list(range(4)), TOKENS),
               title="Mean cosine similarity, final residual at output positions", width=6, height=4.5)
    examples = fr["examples"]
    sec.table(["position", *OUT_LABELS],
              [[f"{k} = nearest embedding"] + [float(v) for v in fr[k]["by_position"]]
               for k in ("target", "prediction")] +
              [[f"holdout sample {b}: nearest embedding"] + [int(v) for v in examples[b].argmax(-1)]
               for b in range(len(examples))] +
              [[f"holdout sample {b}: target"] + [int(v) for v in targets[b]] for b in range(len(examples))],
              caption="Per output position (the notebook printed the cosine similarities of two holdout samples)")


def attention_numbers(run: TrainedRun, acts: dict) -> dict:
    """`attention_to_inputs` of every layer's pattern, as {'layer_<l>': ...}."""
    return {f"layer_{layer}": attention_to_inputs(acts[tm.get_act_name("pattern", layer)])
            for layer in range(run.cfg.n_layers)}


def attention_section(att: dict, acts: dict, n_show: int, rep: Report) -> None:
    """`acts`: the captured patterns (the first `n_show` holdout examples are drawn)."""
    sec = rep.section("Attention from outputs to inputs")
    layers = {int(k.split("_")[1]): v for k, v in att.items()}
    ticks = dict(xticks=(list(range(rv.N_DIGITS)), list(IN_LABELS)),
                 yticks=(list(range(rv.N_DIGITS)), list(OUT_LABELS)))
    panels = [layers[layer]["mean"][0] for layer in layers]
    titles = [f"layer {layer}, mean over holdout" for layer in layers]
    for b in range(n_show):
        panels.append(acts["blocks.0.attn.hook_pattern"][b, 0][rv.OUTPUT_POSITIONS][:, rv.INPUT_POSITIONS])
        titles.append(f"layer 0, holdout sample {b}")
    sec.figure("attention_outputs_to_inputs", plots.heatmaps,
               "Attention (head 0) from the position predicting each output y_i (rows) to the "
               "inputs x_j (columns; the rest goes to BOS and earlier outputs). y_i copies x_(7-i), so attention "
               "to the mirrored input is the anti-diagonal, from y0/x7 at the bottom right to y7/x0 at the top left.",
               panels, titles, vmin=0, vmax=1, xlabel="key: input", ylabel="query: predicting", ncols=2, **ticks)
    sec.figure("mirror_attention", plots.bars,
               "For each output, the mean attention weight on the input it copies and the share "
               "of holdout sequences whose most-attended position is that input.",
               list(OUT_LABELS),
               {f"layer {layer}: mean weight": layers[layer]["mirror_weight"][0] for layer in layers} |
               {f"layer {layer}: most-attended": layers[layer]["mirror_is_argmax"][0] for layer in layers},
               title="Attention on the mirrored input x_(7-i)", xlabel="output", ylabel="fraction")
    sec.table(["layer", *OUT_LABELS], [[f"layer {layer}: mean weight on mirror"] + [
        float(v) for v in layers[layer]["mirror_weight"][0]] for layer in layers] + [
        [f"layer {layer}: mirror is most attended"] + [float(v) for v in layers[layer]["mirror_is_argmax"][0]]
        for layer in layers], caption="Mirrored-input attention per output (head 0)")


def mlp0_numbers(run: TrainedRun, acts: dict) -> dict:
    """Which digit embedding the layer-0 MLP output at each output position points to (the
    target, the mirrored input or the current token), its first examples and mean magnitude."""
    fed = run.holdout[:, :-1]
    mlp0 = acts["blocks.0.hook_mlp_out"]  # [n, 16, d]
    agree = embedding_agreement(mlp0[:, rv.OUTPUT_POSITIONS], np.asarray(run.params["embed"]["W_E"]), {
        "target": run.holdout[:, 1 + rv.N_DIGITS:], "mirrored input": fed[:, rv.MIRROR_POSITIONS],
        "current token": fed[:, rv.OUTPUT_POSITIONS]})
    agree.pop("cosine")
    return {**agree, "examples": mlp0[:_n_show(run)], "mean_abs": np.abs(mlp0).mean(0)}


def mlp0_section(m: dict, rep: Report) -> None:
    sec = rep.section("Layer-0 MLP outputs")
    pos_labels = ["BOS", *IN_LABELS] + [f"y{i}" for i in range(rv.N_DIGITS - 1)]
    panels = list(m["examples"]) + [m["mean_abs"]]
    titles = [f"holdout sample {b}" for b in range(len(m["examples"]))] + ["mean |output| over holdout"]
    sec.figure("mlp0_outputs", plots.heatmaps,
               "Layer-0 MLP output (hook_mlp_out, d_model 4) at every position, for holdout "
               "samples (the notebook printed sample 0) and its mean magnitude over the holdout set.",
               panels, titles, center=True, xlabel="residual dimension", ylabel="position (token there)",
               ncols=len(panels), yticks=(list(range(len(pos_labels))), pos_labels), annotate=True, panel=4.2)
    sec.table(["nearest embedding is", "overall", *OUT_LABELS],
              [[k, m[k]["fraction"]] + [float(v) for v in m[k]["by_position"]]
               for k in ("target", "mirrored input", "current token")],
              caption="Which digit embedding the layer-0 MLP output at each output position points to (cosine; "
                      "chance 25%)")


def autoregressive_numbers(run: TrainedRun, pred: np.ndarray) -> dict:
    """Holdout accuracy when the model reads its own outputs: `tm.generate` (greedy) writes
    y0..y7 after each [BOS, x0..x7]. Exact match (all 8 right) and per-token accuracy, beside
    the teacher-forced ones (`pred`: the argmax with the true outputs fed, [n, 8])."""
    targets = run.holdout[:, 1 + rv.N_DIGITS:]  # [n, 8]
    prompts = run.holdout[:, : 1 + rv.N_DIGITS]  # [n, 9]
    generated = np.asarray(tm.generate(run.cfg, run.params, prompts, rv.N_DIGITS))[:, 1 + rv.N_DIGITS:]
    right, forced = generated == targets, pred == targets
    return {"autoregressive_exact_match": float(right.all(-1).mean()), "autoregressive_token_accuracy":
            float(right.mean()), "teacher_forced_exact_match": float(forced.all(-1).mean()),
            "teacher_forced_token_accuracy": float(forced.mean()), "autoregressive_by_position": right.mean(0),
            "teacher_forced_by_position": forced.mean(0)}


def autoregressive_section(ar: dict, rep: Report) -> None:
    sec = rep.section("Generating the outputs")
    sec.table(["holdout accuracy", "exact match (all 8 outputs)", "per output token", *OUT_LABELS],
              [[name, ar[f"{key}_exact_match"], ar[f"{key}_token_accuracy"], *map(float, ar[f"{key}_by_position"])]
               for name, key in (("autoregressive (generate, greedy)", "autoregressive"),
                                 ("teacher-forced (true outputs fed)", "teacher_forced"))],
              caption="The model writing y0..y7 itself (a KV-cached greedy generate from [BOS, x0..x7]) and "
                      "with the true outputs fed. Exact match is the same either way by construction (a sequence "
                      "with every teacher-forced prediction right feeds the generator the true tokens); per token, "
                      "an early mistake changes what the later outputs read.")


def analyze(run: TrainedRun, rep: Report) -> dict:
    """All of study 2 on the trained model's holdout set: each analysis's numbers, then its section."""
    pred, acts = activations(run.cfg, run.params, run.holdout)
    out = {"weight_ablations": ablation_numbers(run)}
    ablation_section(out["weight_ablations"], rep)
    out["final_resid_cosine"] = final_resid_numbers(run, pred, acts)
    final_resid_section(out["final_resid_cosine"], run.holdout[:, 1 + rv.N_DIGITS:], rep)
    out["attention"] = attention_numbers(run, acts)
    attention_section(out["attention"], acts, _n_show(run), rep)
    out["copy_route"] = copy_route_numbers(out["weight_ablations"], out["attention"])
    copy_route_section(out["copy_route"], rep)
    out["mlp0"] = mlp0_numbers(run, acts)
    mlp0_section(out["mlp0"], rep)
    out["autoregressive"] = autoregressive_numbers(run, pred)
    autoregressive_section(out["autoregressive"], rep)
    out["circuit"] = reverse_circuits.circuit_section(reverse_circuits.position_circuit(run.cfg, run.params,
                                                                                      run.holdout), rep)
    common.attention_section(rep, run.cfg, run.params, run.holdout[:, :-1], rv.VOCAB, "holdout sequences")
    return out


def train_and_evaluate(config, workdir) -> dict:
    """Train (or resume) the variant in `config`, run its analyses, write the workdir.

    Returns the results dict also written to workdir/results.json.
    """
    t0 = time.perf_counter()
    wd = common.open_workdir(workdir, config, "reverse")
    run = train_model(config, wd)
    nonfinite = common.write_metrics(wd, "reverse", run.train_history, run.eval_history, METRICS)
    summary = training_summary(run)
    results: dict[str, Any] = {"variant": config.variant, "training": summary}
    rep = Report(f"Reverse and increment ({config.variant} variant)", INTRO, directory=wd.path)
    training_section(run, summary, rep)
    results["analysis"] = analyze(run, rep)
    sweep = seed_sweep(config, wd)
    if sweep is not None:
        results["seed_sweep"] = seed_sweep_numbers(sweep)
        seed_sweep_section(results["seed_sweep"], run, rep)
    results["notebook"] = NOTEBOOK
    return common.finish("reverse", config, wd, rep, results, t0, nonfinite)

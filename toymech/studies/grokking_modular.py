"""Study 3b: grokking modular addition (Nanda et al.'s progress measures).

Analyses of the final model (all p*p inputs, `=` position):
  fourier basis       the orthonormal real Fourier basis of Z_p
  embedding           W_E[:p] in the Fourier basis; norms per component and frequency
  key frequencies     frequencies whose embedding norm is >= `key_frequency_fraction`
                      of the largest (detected, not assumed: they depend on the seed)
  neurons             2-D Fourier transforms of neuron activations over (a, b);
                      norms of all neurons' 2-D Fourier components
  neuron clusters     fraction of each neuron's variance explained by each frequency;
                      a neuron joins a frequency's cluster at >= `neuron_cluster_threshold`
  W_logit             W_out W_U in the Fourier basis over the outputs, overall and per cluster
  logit periodicity   the logits over (a, b, c) fitted by sum_k coeff_k cos(w_k (a + b - c))
and over every parameter snapshot (`toymech.tasks.grokking.grokking_progress`):
  cosine coefficients per frequency, restricted loss (key frequencies only, test
  rows), excluded loss (key frequencies removed, train rows), sum of squared weights,
  Gini of the embedding's and W_logit's Fourier norms, and the three phases detected
  from them by `detect_phases`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from toymech import plots
from toymech.analysis import fourier, progress
from toymech.report import Report
from toymech.tasks import grokking as gk

INTRO = (
    "A 1-layer, 4-head transformer (d_model 128, d_mlp 512, ReLU, no LayerNorm, biases frozen at zero) trained "
    "full batch with AdamW and strong weight decay on a fraction of all pairs (a, b) to output (a + b) mod p from "
    "[a, b, =]. It first memorises the training pairs, then — long after — generalises (grokking). Below: the "
    "training curves; the Fourier-multiplication algorithm read off the final model (key frequencies in the "
    "embedding, neurons clustered by frequency, W_logit and logits periodic in a + b - c); and Nanda et al.'s "
    "progress measures over all snapshots, with the memorisation / circuit formation / cleanup phases detected "
    "from the measures.")

# The reference run of STUDIES.md (TransformerLens grokking demo, p = 113, 25,000 epochs).
NANDA_REFERENCE = {
    "test_loss_peak": 34.0, "test_loss_peak_epoch": 1400,
    "test_loss_at_epoch": {13000: 7.5, 14000: 0.24, 14500: 0.005},
    "final_train_loss": 1e-7, "final_test_loss": 2e-7,
    "phase_boundaries": {"memorisation ends": 1500, "circuit formation ends": 13300, "cleanup ends": 16600},
    "demo_key_frequencies": [17, 25, 32, 47], "paper_key_frequencies": [14, 35, 41, 42, 52],
}

PHASE_NAMES = ("memorisation ends", "circuit formation ends", "cleanup ends")
N_NEURON_EXAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Measures:
    """Progress measures over the snapshots (numpy, leading axis [S]) and what is derived from them."""

    epochs: np.ndarray
    measures: gk.ProgressMeasures
    key_freqs: tuple[int, ...]
    phases: dict[str, int]
    phase_rules: dict[str, str]
    phase_evidence: dict[str, float]  # see detect_phases


def detect_phases(epochs, test_loss, restricted_loss, p: int,
                  cleanup_test_loss: float) -> tuple[dict, dict, dict]:
    """The three phases of grokking, located from the progress measures over snapshots.

    Rules (each boundary is a snapshot epoch; one that is never reached is left out):
      memorisation ends       at the test-loss peak: the training pairs are fitted and
                              the model is at its worst on unseen pairs; from here on
                              it builds the generalising circuit.
      circuit formation ends  at the first snapshot after the peak where the test loss
                              is below log(p), the loss of a uniform guess: the model
                              starts beating chance on unseen pairs, i.e. the
                              generalising circuit now dominates and cleanup starts.
      cleanup ends            at the first snapshot after circuit formation ends where the
                              test loss is below `cleanup_test_loss`: the memorising
                              components are gone.

    Circuit formation should show as the restricted loss (the test loss of the key
    frequencies alone) falling while the test loss is still high; the evidence says
    whether it did: the restricted loss at both ends of the phase and the lowest test
    loss inside it.

    Args:
      epochs: int [S]; test_loss, restricted_loss: [S] measured at those epochs.
      p: the modulus; cleanup_test_loss: the last rule's level.
    Returns:
      ({boundary name: epoch}, {boundary name: the rule as text}, evidence), boundaries
      in time order; evidence is empty until circuit formation has ended.
    """
    epochs = np.asarray(epochs)
    test, restricted = np.asarray(test_loss, float), np.asarray(restricted_loss, float)
    chance = math.log(p)
    below = lambda level, start: next((i for i in range(start, len(test)) if test[i] < level), None)
    peak = int(np.argmax(test))
    formation = below(chance, peak + 1)
    phases, evidence = {PHASE_NAMES[0]: int(epochs[peak])}, {}
    if formation is not None:
        phases[PHASE_NAMES[1]] = int(epochs[formation])
        evidence = {"restricted_loss_at_memorisation_end": float(restricted[peak]),
                    "restricted_loss_at_circuit_formation_end": float(restricted[formation]),
                    "lowest_test_loss_during_circuit_formation": float(test[peak:formation].min()),
                    "uniform_guess_loss": chance}
        cleanup = below(cleanup_test_loss, formation)
        if cleanup is not None:
            phases[PHASE_NAMES[2]] = int(epochs[cleanup])
    rules = {
        PHASE_NAMES[0]: "snapshot of the test-loss peak",
        PHASE_NAMES[1]: f"first snapshot after the test-loss peak with test loss < log(p) = {chance:.3f} "
                        f"(a uniform guess)",
        PHASE_NAMES[2]: f"first later snapshot with test loss < {cleanup_test_loss:g}",
    }
    return phases, rules, evidence


def _np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def key_frequencies(params, p: int, fraction: float) -> tuple[int, ...]:
    """Key frequencies of a model: from the norms of its number embeddings per frequency."""
    norms = fourier.frequency_norms(jnp.asarray(params["embed"]["W_E"][:p]))
    return tuple(int(k) for k in np.flatnonzero(np.asarray(fourier.key_frequencies(norms, fraction))))


def progress_measures(run) -> Measures:
    """Progress measures at every snapshot, with the final model's key frequencies and the phases."""
    if run.snapshots is None or len(run.snapshot_epochs) == 0:
        raise ValueError("the progress measures need parameter snapshots (config.snapshot_every)")
    p, an = run.task.p, run.config.analysis
    keys = key_frequencies(run.params, p, float(an.key_frequency_fraction))
    stacked = jax.tree.map(jnp.asarray, run.snapshots)
    m = _np_tree(gk.grokking_progress(run.cfg, stacked, run.data, keys))
    phases, rules, evidence = detect_phases(run.snapshot_epochs, m.test_loss, m.restricted_loss, p,
                                            float(an.cleanup_test_loss))
    return Measures(np.asarray(run.snapshot_epochs), m, keys, phases, rules, evidence)


@functools.partial(jax.jit, static_argnames=("cfg", "p", "keys"))
def final_model_arrays(cfg, params, p: int, keys: tuple[int, ...]) -> dict:
    """Every array the final-model analyses need, in one compiled program (op-by-op
    dispatch of the same work would compile each small op separately).

    Shapes: embedding_fourier [p, d_model]; component_norms [p]; frequency_norms
    [p//2+1]; logits [p*p, p]; post [p*p, d_mlp]; neuron_fractions [p//2, d_mlp];
    neuron_fourier_2d [p, p, d_mlp]; W_logit_fourier [d_mlp, p] (W_out W_U in the Fourier basis);
    W_logit_component_norms [p]; periodicity_* per key frequency; periodic_logits
    [p*p, p]; scalars otherwise.
    """
    W_E = params["embed"]["W_E"][:p]  # [p, d]
    grid = gk.grid_forward(cfg, params, p)
    acts = grid.post.reshape(p, p, -1)  # [a, b, m]
    W_logit = progress.neuron_logit_map(params)  # [m, p]
    labels = jnp.asarray(gk.labels(gk.AdditionTask(p)))
    comp = fourier.component_norms(W_E)
    per = fourier.logit_periodicity(grid.logits.reshape(p, p, -1), keys)
    approx = per.approximation.reshape(p * p, -1)
    return {
        "embedding_fourier": fourier.fourier_1d(W_E), "component_norms": comp,
        "frequency_norms": fourier.frequency_norms(W_E), "embedding_gini": progress.gini(comp),
        "logits": grid.logits, "post": grid.post,
        "neuron_fractions": fourier.neuron_frequency_fractions(acts), "neuron_fourier_2d": fourier.fourier_2d(acts),
        "W_logit_fourier": fourier.fourier_1d(W_logit, axis=1),
        "W_logit_component_norms": fourier.component_norms(W_logit, axis=1),
        "periodicity_coefficients": per.coefficients, "periodicity_cosine_sims": per.cosine_sims,
        "periodicity_residual_fraction": per.residual_fraction, "periodic_logits": approx,
        "loss_model": gk.cross_entropy(grid.logits, labels), "loss_periodic": gk.cross_entropy(approx, labels),
        "accuracy_periodic": gk.accuracy(approx, labels),
    }


def fourier_ticks(p: int, step: int) -> tuple[list[int], list[str]]:
    """Ticks for an axis of Fourier-basis rows ('Constant', 'cos 1', 'sin 1', ...): every row when
    step is 1, else 'Constant' and the cos row of every (step // 2)-th frequency (its sin row follows)."""
    names = fourier.fourier_basis(p)[1]
    if step <= 1:
        rows = list(range(p))
    else:
        rows = [0] + [fourier.component_index(p, k, "cos") for k in range(1, p // 2 + 1, step // 2)]
    return rows, [names[r] for r in rows]


def embedding_numbers(arr: dict, keys: list[int]) -> dict:
    """How much of the embedding's norm the key frequencies carry (`arr`: `final_model_arrays`)."""
    freq_norms = arr["frequency_norms"]
    return {"frequency_norms": freq_norms, "constant_norm": freq_norms[0],
            "fraction_of_norm_squared_in_key_frequencies":
                float((freq_norms[keys] ** 2).sum() / (freq_norms ** 2).sum()),
            "gini_of_component_norms": float(arr["embedding_gini"])}


def embedding_section(emb: dict, arr: dict, keys: list[int], p: int, an, rep: Report) -> None:
    ticks, tick_step = functools.partial(fourier_ticks, p), _tick_step(p)
    sec = rep.section("Fourier basis and the embedding")
    sec.figure("fourier_basis", plots.heatmap,
               f"The orthonormal real Fourier basis for p = {p}: constant, then cos k and sin k "
               f"for k = 1..{p // 2} (an even p also gets cos(πx)); rows are orthonormal.",
               np.asarray(fourier.fourier_basis(p)[0]), center=True, title=f"Fourier basis of Z_{p}",
               xlabel="input x", ylabel="basis vector", yticks=ticks(tick_step), origin_lower=False)
    sec.figure("embedding_fourier", plots.heatmap,
               "The number embeddings rewritten in the Fourier basis (rows: components, columns: "
               "d_model): after grokking only the few key frequencies' cos/sin rows are non-zero.",
               arr["embedding_fourier"], center=True, xlabel="residual stream dimension", ylabel="Fourier component",
               yticks=ticks(tick_step), origin_lower=False, title="Embedding W_E[:p] in the Fourier basis")
    comp_norms, ks = arr["component_norms"], np.arange(1, p // 2 + 1)
    cos_n = np.array([comp_norms[fourier.component_index(p, k, "cos")] for k in ks])
    sin_n = np.array([comp_norms[fourier.component_index(p, k, "sin")] if (2 * k != p) else 0.0 for k in ks])
    sec.figure("embedding_fourier_norms", plots.bars,
               f"Norm over d_model of each cos/sin component of the embedding. Key frequencies "
               f"(norm >= {float(an.key_frequency_fraction):g} x the largest): {keys}.",
               ks, {"cos": cos_n, "sin": sin_n}, xlabel="frequency k", ylabel="norm",
               title="Norms of the embedding's Fourier components", width=10)
    sec.key_values({"key frequencies": keys,
                    "share of the embedding's squared norm in them": emb["fraction_of_norm_squared_in_key_frequencies"],
                    "Gini of the component norms": emb["gini_of_component_norms"]},
                   caption="Key frequencies (they depend on the seed: the TransformerLens demo found 17, 25, 32, "
                           "47; Nanda et al.'s seed 14, 35, 41, 42, 52)")


def _clusters(arr: dict, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best frequency, its explained fraction, clustered?) per neuron, each [d_mlp]."""
    return tuple(np.asarray(x) for x in fourier.neuron_clusters(arr["neuron_fractions"], threshold))


def neuron_numbers(arr: dict, keys: list[int], threshold: float) -> dict:
    """Neurons clustered by the frequency that explains >= `threshold` of their variance over (a, b)."""
    c_freq, c_frac, c_in = _clusters(arr, threshold)
    counts = {int(k): int(((c_freq == k) & c_in).sum()) for k in np.unique(c_freq[c_in])}
    examples = []
    for k in keys[:N_NEURON_EXAMPLES]:
        members = np.flatnonzero((c_freq == k) & c_in)
        if members.size:
            examples.append(int(members[np.argmax(c_frac[members])]))
    return {"threshold": threshold, "neurons_per_frequency": counts,
            "clustered_neurons": int(c_in.sum()), "neurons": int(len(c_in)),
            "clustered_neurons_on_key_frequencies": int(sum(v for k, v in counts.items() if k in keys)),
            "dead_neurons": int((arr["post"].std(0) == 0).sum()),
            "example_neurons": examples or [0]}


def neuron_sections(nc: dict, arr: dict, keys: list[int], p: int, rep: Report) -> None:
    ticks, tick_step = functools.partial(fourier_ticks, p), _tick_step(p)
    c_freq, c_frac, c_in = _clusters(arr, nc["threshold"])
    f2d, examples = arr["neuron_fourier_2d"], nc["example_neurons"]  # f2d [p, p, m]
    sec = rep.section("Neurons in the 2-D Fourier basis")
    centred_norms = np.linalg.norm(f2d, axis=-1)  # [p, p]
    centred_norms[0, 0] = 0.0  # centring the activations removes only the (constant, constant) term
    sec.figure("neuron_fourier_norms", plots.heatmap,
               "For each pair of Fourier components (of a, of b), the norm over all neurons of "
               "the centred activations' 2-D coefficient: the mass sits on constant x key-frequency and key x "
               "same-key terms, i.e. on cos/sin(w(a+b)) products.",
               centred_norms, xlabel="Fourier component of b", ylabel="Fourier component of a", origin_lower=False,
               xticks=ticks(tick_step), yticks=ticks(tick_step),
               title="Norm over neurons of the 2-D Fourier components", width=7.5, height=6.5)
    sec.figure("neuron_examples_fourier", plots.heatmaps,
               "|2-D Fourier transform| of single neurons' activations over (a, b) (one per key "
               "frequency, the neuron best explained by it): each lights up only its frequency's constant/cos/sin "
               "terms.",
               [np.abs(f2d[:, :, n]) for n in examples],
               [f"neuron {n} (freq {int(c_freq[n])}, {c_frac[n]:.0%})" for n in examples], xlabel="component of b",
               ylabel="component of a", xticks=ticks(tick_step * 2), yticks=ticks(tick_step * 2), ncols=len(examples),
               panel=4.8)
    sec = rep.section("Neuron clusters by frequency")
    order = np.lexsort((-c_frac, c_freq))
    sec.figure("neuron_frequency_fractions", plots.heatmap,
               "Each neuron's fraction of (non-constant) variance over (a, b) explained by each "
               "frequency; neurons sorted by their best frequency: they form clusters on the key frequencies.",
               arr["neuron_fractions"][:, order], vmin=0, vmax=1, xlabel="neuron (sorted by best frequency)",
               ylabel="frequency k",
               yticks=(list(range(0, p // 2, tick_step)), [str(k + 1) for k in range(0, p // 2, tick_step)]),
               title="Fraction of each neuron's variance explained by each frequency", width=10, height=5)
    sec.figure("neuron_max_fraction", plots.curves,
               f"Best single-frequency explained fraction of every neuron, sorted; "
               f"{int(c_in.sum())} of {len(c_in)} neurons are >= {nc['threshold']:g} "
               f"(clustered).",
               {"max over frequencies": (np.arange(len(c_frac)), np.sort(c_frac))}, xlabel="neuron (sorted)",
               ylabel="fraction of variance", title="Best single-frequency fraction per neuron", vlines=None)
    sec.table(["frequency", "neurons in cluster", "key frequency?"],
              [[k, v, "yes" if k in keys else "no"] for k, v in sorted(nc["neurons_per_frequency"].items())],
              caption=f"Clusters: neurons whose best frequency explains >= {nc['threshold']:g} of their variance")


def w_logit_numbers(arr: dict, keys: list[int], p: int) -> dict:
    """W_logit's Fourier-component norms and the key frequencies' share of them."""
    wl_norms = arr["W_logit_component_norms"]  # [p]
    rows = [fourier.component_index(p, k, s) for k in keys for s in ("cos", "sin") if not (s == "sin" and 2 * k == p)]
    return {"component_norms": wl_norms,
            "fraction_of_norm_squared_in_key_frequencies": float((wl_norms[rows] ** 2).sum() / (wl_norms ** 2).sum())}


def w_logit_section(arr: dict, keys: list[int], threshold: float, p: int, rep: Report) -> None:
    c_freq, _, c_in = _clusters(arr, threshold)
    wl_fourier = arr["W_logit_fourier"]  # [m, p]
    sec = rep.section("W_logit in the Fourier basis")
    sec.figure("W_logit_fourier_norms", plots.bars,
               "Norm over neurons of W_logit's coefficients on each Fourier component of the "
               "output: the readout uses the key frequencies' cos and sin.",
               list(fourier.fourier_basis(p)[1]), arr["W_logit_component_norms"],
               xlabel="Fourier component of the output c", ylabel="norm over neurons",
               title="W_logit = W_out W_U in the Fourier basis", width=11, max_ticks=60)
    panels, titles = [], []
    for k in keys:
        members = (c_freq == k) & c_in
        if members.any():
            panels.append(np.linalg.norm(wl_fourier[members], axis=0))
            titles.append(f"frequency {k} cluster ({int(members.sum())} neurons)")
    if panels:
        sec.figure("W_logit_fourier_by_cluster", plots.line_panels,
                   "W_logit restricted to each key frequency's neuron cluster, in the Fourier "
                   "basis: each cluster writes (almost) only its own frequency's cos/sin (components 2k-1, 2k).",
                   np.arange(p), [{"norm": v} for v in panels], titles, xlabel="Fourier component index", ylabel="norm",
                   markers=False)


def periodicity_numbers(arr: dict, keys: list[int]) -> dict:
    """The logits' projection on cos(w_k (a + b - c)) for the key frequencies, against a random baseline."""
    logits = arr["logits"]  # [p*p, p]
    rnd = np.random.default_rng(0).standard_normal(logits.shape)
    sims = arr["periodicity_cosine_sims"]
    return {
        "key_frequencies": keys, "coefficients": arr["periodicity_coefficients"], "cosine_similarities": sims,
        "total_cosine_similarity": float(np.sqrt((sims ** 2).sum())),
        "residual_fraction_of_norm": float(arr["periodicity_residual_fraction"]),
        "random_logits_cosine_similarity_baseline": float((logits * rnd).sum() / np.linalg.norm(rnd)
                                                          / np.linalg.norm(logits)),
        "loss_of_model_logits_all_inputs": float(arr["loss_model"]),
        "loss_of_periodic_approximation_all_inputs": float(arr["loss_periodic"]),
        "accuracy_of_periodic_approximation": float(arr["accuracy_periodic"]),
    }


def periodicity_section(lp: dict, logits: np.ndarray, p: int, rep: Report) -> None:
    sec = rep.section("Logit periodicity")
    sec.text(f"The logits over all (a, b, c) projected on the unit 'cos cubes' cos(w_k (a + b − c)), w_k = 2πk/p, "
             f"for the key frequencies: together they carry a cosine similarity of "
             f"{lp['total_cosine_similarity']:.3f} with the logits (random baseline "
             f"{lp['random_logits_cosine_similarity_baseline']:.3f}); the residual is "
             f"{lp['residual_fraction_of_norm']:.1%} of the norm. The periodic approximation alone has loss "
             f"{lp['loss_of_periodic_approximation_all_inputs']:.3g} and accuracy "
             f"{lp['accuracy_of_periodic_approximation']:.3f} on all inputs (model: "
             f"{lp['loss_of_model_logits_all_inputs']:.3g}).")
    sec.table(["key frequency", "coefficient", "cosine similarity"],
              [[k, c, s] for k, c, s in zip(lp["key_frequencies"], lp["coefficients"], lp["cosine_similarities"])],
              caption="Logits ≈ Σ_k coefficient_k · cos(w_k (a + b − c)) / ||cos cube||")
    a0 = 0
    sec.figure("logits_slice", plots.heatmap,
               f"The logits for a = {a0} over (b, c): stripes along c − b = const, i.e. a "
               f"function of a + b − c, as the cos(w(a + b − c)) form predicts.",
               logits.reshape(p, p, p)[a0], center=True, xlabel="output c", ylabel="b",
               title=f"Logits for a = {a0} over (b, c)")


def progress_numbers(meas: Measures) -> dict:
    """The progress measures over the snapshots and the detected phases, as results."""
    e, m, cos = meas.epochs, meas.measures, meas.measures.cos_coefficients  # cos [S, p//2]
    return {
        "snapshot_epochs": e, "train_loss": m.train_loss, "test_loss": m.test_loss,
        "restricted_loss": m.restricted_loss, "excluded_loss": m.excluded_loss,
        "sum_squared_weights": m.sum_squared_weights, "gini_embedding": m.gini_embedding,
        "gini_logit": m.gini_logit,
        "cos_coefficients_key_frequencies": {str(k): cos[:, k - 1] for k in meas.key_freqs},
        "phases": meas.phases, "phase_rules": meas.phase_rules, "phase_evidence": meas.phase_evidence,
    }


def progress_section(meas: Measures, p: int, nanda: bool, rep: Report):
    """The measures' curves and the phase table; returns the section (the nanda comparison goes there)."""
    e, m, keys = meas.epochs, meas.measures, list(meas.key_freqs)
    sec = rep.section("Progress measures over training")
    sec.text("Every snapshot's measures, computed in one jitted call (toymech.tasks.grokking.grokking_progress). "
             "Restricted loss: test loss of the model with its neuron activations reduced to the mean plus their "
             "components along cos/sin(w_k(a+b)) for the key frequencies of the final model (logit bias-corrected "
             "as in the notebook). Excluded loss: train loss with those components removed. Phase boundaries "
             "(dashed) are detected from the measures: "
             + "; ".join(f"{k}: {v}" for k, v in meas.phase_rules.items()) + ".")
    sec.figure("progress_losses", plots.curves,
               "Restricted loss falls well before the test loss (the generalising circuit forms "
               "during the plateau) while the excluded loss rises (the model comes to depend on the key "
               "frequencies); phase boundaries dashed.",
               {"train loss": (e, m.train_loss), "test loss": (e, m.test_loss),
                "restricted loss (test)": (e, m.restricted_loss), "excluded loss (train)": (e, m.excluded_loss)},
               log_y=True, vlines=meas.phases, xlabel="epoch", ylabel="loss (log scale)",
               title="Train, test, restricted and excluded loss")
    cos = m.cos_coefficients  # [S, p//2]
    sec.figure("progress_cos_coefficients", plots.curves,
               "Coefficient of the logits on each unit cos(w_k(a+b−c)) cube over training: the "
               "key frequencies (coloured) grow through circuit formation; all others (grey) stay near zero.",
               {f"freq {k}": (e, cos[:, k - 1]) for k in range(1, p // 2 + 1)}, highlight=[f"freq {k}" for k in keys],
               vlines=meas.phases, xlabel="epoch", ylabel="coefficient",
               title="Logit cosine coefficients per frequency (key frequencies bold)")
    sec.figure("progress_weight_norm", plots.curves,
               "Sum of squared weights: weight decay shrinks it throughout, fastest in cleanup "
               "when the memorising components are removed.",
               {"sum of squared weights": (e, m.sum_squared_weights)}, vlines=meas.phases, xlabel="epoch",
               ylabel="Σ w²", title="Total weight norm")
    sec.figure("progress_gini", plots.curves,
               "Gini coefficient of the Fourier-component norms of W_E and of W_logit: it rises "
               "as the model concentrates on a few frequencies.",
               {"embedding (Fourier components)": (e, m.gini_embedding),
                "W_logit (Fourier components)": (e, m.gini_logit)},
               vlines=meas.phases, xlabel="epoch", ylabel="Gini coefficient", title="Sparsity in the Fourier basis")
    rows = [[name, meas.phases.get(name, "not reached"), meas.phase_rules[name]]
            + ([NANDA_REFERENCE["phase_boundaries"][name]] if nanda else []) for name in PHASE_NAMES]
    sec.table(["boundary", "epoch", "rule"] + (["reference run (drawn by hand)"] if nanda else []), rows,
              caption="Phase boundaries detected from the measures")
    ev = meas.phase_evidence
    if ev:
        held = ev["lowest_test_loss_during_circuit_formation"] >= ev["uniform_guess_loss"]
        sec.text(f"During circuit formation the restricted loss fell from {ev['restricted_loss_at_memorisation_end']:.3g} "
                 f"to {ev['restricted_loss_at_circuit_formation_end']:.3g} while the test loss stayed "
                 f"{'above' if held else 'not always above'} a uniform guess's {ev['uniform_guess_loss']:.3f} "
                 f"(lowest {ev['lowest_test_loss_during_circuit_formation']:.3g}).")
    return sec


# ---------------------------------------------------------------- the demo's curves over training


@functools.partial(jax.jit, static_argnames=("cfg", "p", "keys"))
def _periodicity_over_snapshots(cfg, stacked: dict, p: int, keys: tuple[int, ...]):
    """Total cosine similarity and residual fraction of the logits to their key-frequency fit
    cos(w_k(a+b-c)), at every snapshot stacked along the leading axis: ([S], [S]). One snapshot at
    a time (lax.map), so memory stays that of one [p*p, p] logit grid."""
    def one(params):
        per = fourier.logit_periodicity(gk.grid_forward(cfg, params, p).logits.reshape(p, p, -1), keys)
        return jnp.sqrt(jnp.sum(per.cosine_sims ** 2)), per.residual_fraction

    return jax.lax.map(one, stacked)


def training_curve_numbers(run, meas: Measures) -> dict:
    """The demo's curves over the snapshots: the logits' total cosine similarity to, and residual
    from, their fit on the final model's key frequencies; the restricted / test loss ratio."""
    cos, resid = _periodicity_over_snapshots(run.cfg, jax.tree.map(jnp.asarray, run.snapshots), run.task.p,
                                             tuple(meas.key_freqs))
    m = meas.measures
    return {"snapshot_epochs": meas.epochs, "logit_key_frequency_cosine_similarity": np.asarray(cos),
            "logit_key_frequency_residual_fraction": np.asarray(resid),
            "restricted_over_test_loss": np.asarray(m.restricted_loss) / np.asarray(m.test_loss)}


def training_curve_section(tc: dict, meas: Measures, rep: Report) -> None:
    e = tc["snapshot_epochs"]
    sec = rep.section("Logits against the key-frequency fit, over training")
    sec.figure("progress_logit_fit", plots.curves,
               f"At every snapshot, the logits over all p² inputs against their fit by cos(w_k(a+b−c)) on the "
               f"final model's key frequencies {list(meas.key_freqs)} (the demo's curves): the total cosine "
               f"similarity rises and the residual (|logits − fit| / |logits|) falls as the circuit forms.",
               {"cosine similarity": (e, tc["logit_key_frequency_cosine_similarity"]),
                "residual fraction": (e, tc["logit_key_frequency_residual_fraction"])},
               vlines=meas.phases, xlabel="epoch", ylabel="fraction", title="Logits vs the key-frequency fit")
    sec.figure("progress_restricted_test_ratio", plots.curves,
               "Restricted loss divided by test loss at every snapshot: far below 1 while the test loss is "
               "still high means the key-frequency circuit already generalises inside the memorising model.",
               {"restricted / test loss": (e, tc["restricted_over_test_loss"])}, log_y=True, vlines=meas.phases,
               xlabel="epoch", ylabel="ratio (log scale)", title="Restricted loss / test loss")


def cluster_control_numbers(arr: dict, threshold: float, seed: int = 0) -> dict:
    """A random-direction control for the neuron clusters: the same frequency-fraction test on
    Gaussian activations of the final model's shape [p, p, d_mlp] (numpy seed `seed`): how many
    would cluster, and the mean best fraction, against the model's."""
    p = int(round(math.sqrt(arr["post"].shape[0])))
    rand = np.random.default_rng(seed).standard_normal((p, p, arr["post"].shape[1])).astype(np.float32)
    fr = np.asarray(fourier.neuron_frequency_fractions(jnp.asarray(rand)))  # [p//2, m]
    _, model_frac, model_in = _clusters(arr, threshold)
    return {"threshold": threshold, "model_clustered_neurons": int(model_in.sum()),
            "random_clustered_neurons": int((fr.max(0) >= threshold).sum()),
            "model_mean_best_fraction": float(model_frac.mean()), "random_mean_best_fraction": float(fr.max(0).mean()),
            "neurons": int(len(model_in))}


def cluster_control_section(cc: dict, rep: Report) -> None:
    sec = rep.section("Neuron clusters against a random control")
    sec.key_values({
        f"neurons with one frequency explaining >= {cc['threshold']} of their variance": (
            f"model {cc['model_clustered_neurons']} of {cc['neurons']}, random activations "
            f"{cc['random_clustered_neurons']}"),
        "mean best single-frequency fraction": f"model {cc['model_mean_best_fraction']:.3f}, random "
                                              f"{cc['random_mean_best_fraction']:.3f}",
    }, caption="The cluster test on Gaussian activations of the same shape: what clustering by chance looks like")


def _tick_step(p: int) -> int:
    return max(1, p // 24)


def analyze(run, meas: Measures, rep: Report) -> dict:
    """All of study 3b on a trained run: each analysis's numbers, then its section."""
    p, an, keys = run.task.p, run.config.analysis, list(meas.key_freqs)
    arr = _np_tree(final_model_arrays(run.cfg, run.params, p, tuple(keys)))
    threshold = float(an.neuron_cluster_threshold)
    out: dict = {"embedding": embedding_numbers(arr, keys), "key_frequencies": keys}
    embedding_section(out["embedding"], arr, keys, p, an, rep)
    out["neuron_clusters"] = neuron_numbers(arr, keys, threshold)
    neuron_sections(out["neuron_clusters"], arr, keys, p, rep)
    out["W_logit"] = w_logit_numbers(arr, keys, p)
    w_logit_section(arr, keys, threshold, p, rep)
    out["logit_periodicity"] = periodicity_numbers(arr, keys)
    periodicity_section(out["logit_periodicity"], arr["logits"], p, rep)
    out["neuron_cluster_control"] = cluster_control_numbers(arr, threshold)
    cluster_control_section(out["neuron_cluster_control"], rep)
    out["progress"] = progress_numbers(meas)
    sec = progress_section(meas, p, run.config.variant == "nanda", rep)
    out["training_curves"] = training_curve_numbers(run, meas)
    training_curve_section(out["training_curves"], meas, rep)
    if run.config.variant == "nanda":
        out["reference_comparison"] = _nanda_comparison(run, meas, keys, sec)
    return out


def _nanda_comparison(run, meas: Measures, keys, sec) -> dict:
    """Our nanda-variant run next to the reference run of STUDIES.md."""
    eh = run.eval_history
    at = lambda epoch: float(eh["loss"][int(np.argmin(np.abs(eh["epoch"] - epoch)))])
    ref = NANDA_REFERENCE
    rows = [["peak test loss", float(np.max(eh["loss"])), ref["test_loss_peak"]],
            ["epoch of the peak", int(eh["epoch"][int(np.argmax(eh["loss"]))]), ref["test_loss_peak_epoch"]]]
    rows += [[f"test loss at epoch {k}", at(k), v] for k, v in ref["test_loss_at_epoch"].items()]
    rows += [["final train loss", float(run.train_history["loss"][-1]), ref["final_train_loss"]],
             ["final test loss", float(eh["loss"][-1]), ref["final_test_loss"]],
             ["key frequencies", keys, ref["demo_key_frequencies"]]]
    sec.table(["quantity", "this run", "reference run"], rows,
              caption="This run vs the reference run (STUDIES.md; its split and init came from torch, so the "
                      "epochs can shift and the key frequencies differ)")
    return {r[0]: {"ours": r[1], "reference": r[2]} for r in rows}

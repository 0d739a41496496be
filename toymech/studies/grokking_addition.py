"""Study 3a: how a 1-layer transformer adds two digits (the notebook's own analyses).

Every analysis of STUDIES.md 3a, run on all 100 inputs (a, b) in 0..9 at the
`=` position, each producing numbers (results.json) and figures (report):

  embedding      PCA of W_E[:10]: scree, PC1/PC2/PC3 against the digit (PC1 linear,
                 PC2 parabolic), PC1-vs-PC2 scatter
  attention      attention from '=' to a, b and '=' per head; symmetry a <-> b
  probe          linear probe MLP post-activations -> a+b (held-out R²)
  correlations   Pearson r of every neuron with a+b; top neurons' pre/post-ReLU maps
  features       which PC carries the linear, parabola and parity features of the digit
                 (data-driven: the one-to-one assignment of features to PCs with the
                 largest summed R²); the notebook's run had PC1 linear, PC2 parabola,
                 a run of ours may order them differently
  neuron_fits    per-neuron fits of pre-activations on [lin(a), lin(b), par(a), par(b)],
                 the scores on the linear and the parabola PCs (the notebook's
                 [PC1(a), PC1(b), PC2(a), PC2(b)] by meaning): linear, degree-2
                 polynomial, symmetric 5-feature; post-ReLU degree 2
  feature_ablation / pc2_ablation
                 real interventions at hook_embed (positions a, b), each digit's
                 embedding replaced by the mean plus its parts on a set of PCs: by
                 meaning (keep the linear PC: the notebook's test, keep the linear
                 feature and remove the parabola), and by index (keep PC1: the
                 notebook's ablation as written); accuracy, failure and error maps,
                 logit differences, fits of the ablated predictions (linear,
                 quadratic, error on the removed feature)
  skip_ablation  resid_post replaced by mlp_out (patched), accuracy and loss
  simulation     logits simulated as W_L ReLU(Poly2(PCs)) and W_L Poly2(post)
  logit_fourier  rfft of each input's logits, top-k reconstruction; W_E and W_L
                 Fourier norms
  W_L_pca        PCA of the neuron->logit columns of W_L = W_out W_U (all, and live only)
  logit_fits     degree-2 fits of each logit on the features; symmetric refit; worst logits
  neuron level   (the notebook's, on the by-meaning ablation) activation and pre-activation
                 deltas and their fits on the removed PC; line fits of pre/post-ReLU
                 activations on a + b, full and ablated; the neurons that flip at (0, 0)
                 and their logit-change profile; top contributors at (0, 0); W_L
                 statistics over the 100 key neurons; rfft of W_L's columns; mean Poly2
                 coefficients by correlation group; SVD of W_E against a random control
  differences    measured: what attention to '=' does (patched away), dead neurons
                 (count, epoch of death from the parameter snapshots), W_L's PCA on live
                 neurons, which logits fit worst

The notebook's numbers come from its own trained weights; `NOTEBOOK` lists them
and the report puts ours beside them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm
from toymech import interventions as iv
from toymech import plots
from toymech.analysis import fourier, linalg, probes
from toymech.report import Report
from toymech.tasks import grokking as gk

INTRO = (
    "A 1-layer, 4-head transformer (d_model 128, d_mlp 512, ReLU, no LayerNorm, biases frozen at zero) "
    "trained full batch with AdamW on 72% of the 100 sums a + b of two digits, read from [a, b, =]. "
    "Below: the training curves, then the notebook's analyses of the trained model, from the "
    "embedding (the notebook found a 2-D manifold: PC1 linear in the digit, PC2 parabolic) through the MLP "
    "(pre-activations as degree-2 polynomials of the embedding PCs) to the readout W_L, with our numbers next to "
    "the notebook's and the large differences explained at the end.")

# The notebook's printed / stated numbers (seed 002 of shared/seeds).
NOTEBOOK = {
    "embedding_pc1_variance_ratio": 0.73,
    "embedding_pc2_variance_ratio": 0.25,
    "embedding_pc1_pc2_variance_ratio": 0.994,
    "pc2_ablation_accuracy_before": 1.00,
    "pc2_ablation_accuracy_after": 0.42,
    "pc2_ablation_max_abs_error": 3,
    "ablated_prediction_linear_fit_r2": 0.93,
    "skip_ablation_accuracy_after": 1.00,
    "neurons_with_sum_correlation_above_0.9": 130,  # "more than 130"
    "pre_relu_poly2_mean_r2": 0.998,
    "pre_relu_linear_mean_r2": 0.75,
    "pre_relu_symmetric_mean_r2": 0.98,
    "post_relu_poly2_mean_r2": 0.975,
    "simulated_logits_relu_poly2_r2": 0.988,
    "simulated_logits_poly2_post_r2": 0.966,
    "W_L_top2_pc_variance_ratio": 0.983,
    "logit_poly2_mean_r2": 0.975,
    "logit_poly2_max_r2": 0.9906,
}

EMBED, POST, PRE = "hook_embed", "blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre"
PATTERN, MLP_OUT, RESID_POST = "blocks.0.attn.hook_pattern", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"
TOP_NEURONS = 3
TOP_K_FREQS = 6  # the notebook's top-k Fourier reconstruction of one input's logits
NEAR_CONSTANT = 1e-9  # a neuron whose activation has std below this is left out of fits (as the notebook)


def _np(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def _grid(v, p) -> np.ndarray:
    """Per-input values (row a * p + b) as an [a, b] grid."""
    return _np(v).reshape(p, p)


def _final(cfg, params, tokens, intervention=None):
    logits, acts = tm.apply(cfg, params, tokens, intervention=intervention, capture=(PRE, POST))
    return _np(logits[:, -1]), _np(acts[PRE][:, -1]), _np(acts[POST][:, -1])


def _overall_r2(actual: np.ndarray, simulated: np.ndarray) -> float:
    """1 - SS_res / SS_tot over all entries (the notebook's overall R² of simulated logits)."""
    return float(1 - np.sum((actual - simulated) ** 2) / np.sum((actual - actual.mean()) ** 2))


def pc_kept_embeddings(W_E: np.ndarray, keep) -> np.ndarray:
    """The digit embeddings W_E [p, d] with only the PCA mean and their parts on the PCs in
    `keep` (0-based indices): [p, d]. keep=(0,) is the notebook's "PC2 ablation" (mean + PC1
    part, which also drops PCs 3+); keeping every PC but one removes that one only."""
    emb = linalg.pca(jnp.asarray(W_E))
    mean, comps, scores = _np(emb.mean), _np(emb.components), _np(emb.scores)  # [d], [k, d], [p, k]
    keep = list(keep)
    return mean + scores[:, keep] @ comps[keep]


def embedding_patch(tokens: np.ndarray, table: np.ndarray) -> iv.Intervention:
    """Patch hook_embed at the a and b positions with `table[token]` ('=' untouched).

    tokens: int [n, 3]; table: [p, d] replacement embeddings of the digits.
    """
    value = np.zeros((len(tokens), tokens.shape[1], table.shape[1]), np.float32)  # [n, pos, d]
    value[:, :2] = table[tokens[:, :2]]
    return iv.patch(EMBED, value, pos=np.array([True, True, False]))


@dataclasses.dataclass(frozen=True)
class Grid:
    """The trained model on all p*p inputs (row a * p + b) at '=': what every analysis reads.

    tokens int [n, 3]; a, b, target int [n]; logits [n, v]; pre, post [n, m] (MLP);
    W_L [m, v] = W_out W_U; W_E [p, d] (the digits); scores [p, k], ratio [k]: the PCA of W_E;
    feature_pc {'linear', 'parabola', 'parity': 0-based PC} (`feature_pcs`); X4 [n, 4] the
    features by meaning [lin(a), lin(b), par(a), par(b)], the scores on the linear and
    parabola PCs (the notebook's [PC1(a), PC1(b), PC2(a), PC2(b)], whose PC1 was linear and
    PC2 the parabola); X4_by_index [n, 4] the scores on PC1 and PC2 whatever they encode;
    sym [n, 5] the symmetric degree-2 features of the sums s1 = lin(a)+lin(b),
    s2 = par(a)+par(b).
    """

    p: int
    cfg: Any
    params: dict
    tokens: np.ndarray
    a: np.ndarray
    b: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    pre: np.ndarray
    post: np.ndarray
    W_L: np.ndarray
    W_E: np.ndarray
    scores: np.ndarray
    ratio: np.ndarray
    feature_pc: dict
    X4: np.ndarray
    X4_by_index: np.ndarray
    sym: np.ndarray


FEATURES4 = ("lin_a", "lin_b", "par_a", "par_b")


def _operand_features(scores: np.ndarray, a: np.ndarray, b: np.ndarray, pc1: int, pc2: int) -> np.ndarray:
    """[score_pc1(a), score_pc1(b), score_pc2(a), score_pc2(b)]: [n, 4]."""
    return np.stack([scores[a, pc1], scores[b, pc1], scores[a, pc2], scores[b, pc2]], axis=1)


def grid_of(run) -> Grid:
    p, cfg, params = run.task.p, run.cfg, run.params
    tokens = gk.all_inputs(run.task)  # [p*p, 3]
    a, b = tokens[:, 0], tokens[:, 1]
    logits, pre, post = _final(cfg, params, tokens)  # [n, v], [n, m], [n, m]
    W_E = _np(params["embed"]["W_E"][:p])  # [p, d]
    emb = linalg.pca(jnp.asarray(W_E))
    scores = _np(emb.scores)
    feature_pc = feature_pcs(scores, p, min(4, scores.shape[1]))
    X4 = _operand_features(scores, a, b, feature_pc["linear"], feature_pc["parabola"])  # lin_a, lin_b, par_a, par_b
    sym = _np(probes.symmetric_features(jnp.asarray(X4[:, [0, 2]]), jnp.asarray(X4[:, [1, 3]]), 2))  # [n, 5]
    return Grid(p, cfg, params, tokens, a, b, gk.labels(run.task), logits, pre, post,
                _np(params["blocks_0"]["mlp"]["W_out"] @ params["unembed"]["W_U"]), W_E, scores,
                _np(emb.explained_variance_ratio), feature_pc, X4, _operand_features(scores, a, b, 0, 1), sym)


# ---------------------------------------------------------------- embedding PCA


FEATURE_FORMULAS = {"linear": "digit", "parabola": "(digit - 4.5)^2", "parity": "(-1)^digit"}


def _digit_features(p: int) -> dict[str, np.ndarray]:
    """Candidate features of the digit a PC may encode, by name (`FEATURE_FORMULAS`; PCA orders
    directions by variance only, and a run may, e.g., also encode parity)."""
    digits = np.arange(p, dtype=np.float32)
    return {"linear": digits, "parabola": (digits - digits.mean()) ** 2, "parity": (-1.0) ** digits}


def pc_feature_r2(scores: np.ndarray, p: int, n_pc: int = 4) -> np.ndarray:
    """R² of a line fit of each of the first `n_pc` PCs' scores [p, k] on each digit feature
    (`_digit_features` order): [features, n_pc]."""
    feat = np.stack(list(_digit_features(p).values()))  # [f, p]
    return _np(probes.fit_line(jnp.asarray(feat[:, None, :]), jnp.asarray(scores[:, :n_pc].T[None, :, :])).r2)


def feature_pcs(scores: np.ndarray, p: int, n_pc: int = 4) -> dict[str, int]:
    """{feature: 0-based PC index}: which PC carries each digit feature, one PC per feature, the
    assignment maximising the summed R² of `pc_feature_r2` (brute force over the PCs)."""
    r2 = pc_feature_r2(scores, p, n_pc)  # [f, pc]
    names = list(_digit_features(p))
    best = max(itertools.permutations(range(r2.shape[1]), len(names)),
               key=lambda pcs: sum(r2[f, pc] for f, pc in enumerate(pcs)))
    return dict(zip(names, best))


def embedding_numbers(g: Grid) -> dict:
    """PCA of the digit embeddings: variance shares, PC1 vs the digit (line), PC2 (parabola),
    and the R² of a line fit of each PC on each candidate digit feature."""
    scores, ratio = g.scores, g.ratio
    features = _digit_features(g.p)
    digits = features["linear"]
    pc1_line = probes.fit_line(jnp.asarray(digits), jnp.asarray(scores[:, 0]))
    _, pc2_quad_r2 = probes.polynomial_fit(jnp.asarray(digits[:, None]), jnp.asarray(scores[:, 1]), 2)
    n_pc = min(4, scores.shape[1])
    r2 = pc_feature_r2(scores, g.p, n_pc)  # [f, pc]
    centred_sq = features["parabola"]
    _, plane_r2 = probes.polynomial_fit(jnp.asarray(scores[:, :2]), jnp.asarray(np.stack([digits, centred_sq], 1)),
                                        1)
    plane_r2 = _np(plane_r2)
    return {
        "explained_variance_ratio": ratio[:10],
        "pc1_variance_ratio": ratio[0], "pc2_variance_ratio": ratio[1], "pc1_pc2_variance_ratio": ratio[:2].sum(),
        "pc1_vs_digit_linear_fit": {"slope": pc1_line.slope, "intercept": pc1_line.intercept, "r2": pc1_line.r2},
        "pc2_vs_digit_quadratic_fit_r2": pc2_quad_r2,
        "digit_from_pc1_pc2_r2": plane_r2[0], "centred_digit_squared_from_pc1_pc2_r2": plane_r2[1],
        "pc_feature_r2": {f"PC{i + 1}": dict(zip(features, r2[:, i])) for i in range(n_pc)},
        "feature_pc": {f: f"PC{i + 1}" for f, i in g.feature_pc.items()},
        "feature_pc_r2": {f: r2[k, i] for k, (f, i) in enumerate(g.feature_pc.items())},
    }


def embedding_section(e: dict, g: Grid, rep: Report) -> None:
    scores, ratio, p = g.scores, g.ratio, g.p
    digits = _digit_features(p)["linear"]
    sec = rep.section("Embedding PCA")
    sec.text("PCA of the ten digit embeddings W_E[0..9] (rows as samples, centred). The notebook finds a 2-D "
             "manifold: PC1 linear in the digit, PC2 a parabola.")
    sec.figure("embedding_scree", plots.scree, f"Scree plot of the digit embeddings: PC1 explains {ratio[0]:.1%}, PC2 "
               f"{ratio[1]:.1%}, together {ratio[:2].sum():.1%} of the variance.",
               ratio, title="Embedding PCA: explained variance")
    sec.figure("embedding_pcs_vs_digit", plots.line_panels,
               f"Each digit's score on PC1, PC2, PC3 (notebook: PC1 linear, PC2 parabolic). "
               f"Here: line fit of PC1 on the digit R² = {float(e['pc1_vs_digit_linear_fit']['r2']):.3f}; quadratic "
               f"fit of PC2 R² = {float(e['pc2_vs_digit_quadratic_fit_r2']):.3f}.",
               digits, [{f"PC{i + 1}": scores[:, i]} for i in range(3)],
               [f"PC{i + 1} score vs digit" for i in range(3)], xlabel="digit", ylabel="score", ncols=3)
    features = list(_digit_features(p))
    sec.table(["PC", "variance share"] + [f"R² with {FEATURE_FORMULAS[k]} ({k})" for k in features],
              [[pc, ratio[i]] + [r[k] for k in features] for i, (pc, r) in enumerate(e["pc_feature_r2"].items())],
              caption="What each embedding PC encodes: R² of a line fit of its scores on features of the digit")
    sec.text("Features by meaning (each feature on the PC that fits it best, one PC per feature): " + "; ".join(
        f"{f} on {pc} (R² {float(e['feature_pc_r2'][f]):.3f})" for f, pc in e["feature_pc"].items())
        + ". The notebook's run had the linear feature on PC1 and the parabola on PC2; the fits and the "
          "by-meaning ablation below use the linear and parabola PCs wherever they fall.")
    sec.figure("embedding_pc1_pc2", plots.scatter,
               f"The ten digit embeddings on the PC1-PC2 plane (notebook: an arc, a line along "
               f"PC1 and a parabola along PC2). Whichever way PCA orients the axes in this plane, the digit is a "
               f"linear function of the two scores with R² = {e['digit_from_pc1_pc2_r2']:.3f} and (digit − 4.5)² "
               f"with R² = {e['centred_digit_squared_from_pc1_pc2_r2']:.3f}.",
               scores[:, 0], scores[:, 1], c=digits, annotate=range(p), xlabel="PC1 score", ylabel="PC2 score",
               clabel="digit", title="Digit embeddings on PC1 and PC2", equal_aspect=True)


# ---------------------------------------------------------------- attention


def attention_from_equals(g: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention of the '=' query to a, b and '=': [n, head] each."""
    _, acts = tm.apply(g.cfg, g.params, g.tokens, capture=(PATTERN,))
    pattern = _np(acts[PATTERN])  # [n, h, q, k]
    return pattern[:, :, 2, 0], pattern[:, :, 2, 1], pattern[:, :, 2, 2]


def attention_numbers(g: Grid) -> dict:
    """Mean attention from '=' to a, b, '=' per head, and how far a head is from symmetric in a, b."""
    to_a, to_b, to_eq = attention_from_equals(g)
    swapped = (g.b * g.p + g.a)  # row of (b, a)
    asym = np.abs(to_a - to_b[swapped]).max(axis=0)  # [h] max_ab |attn(=->a | a,b) - attn(=->b | b,a)|
    return {"mean_attention_to_a_per_head": to_a.mean(0), "mean_attention_to_b_per_head": to_b.mean(0),
            "mean_attention_to_equals_per_head": to_eq.mean(0), "max_abs_swap_asymmetry_per_head": asym}


def attention_section(att: dict, g: Grid, rep: Report) -> None:
    to_a, to_b, _ = attention_from_equals(g)
    sec = rep.section("Attention from '=' to a and b")
    sec.table(["head", "mean attn to a", "mean attn to b", "mean attn to '='",
               "max |attn(=→a | a,b) − attn(=→b | b,a)|"],
              [[h] + [att[k][h] for k in ("mean_attention_to_a_per_head", "mean_attention_to_b_per_head",
                                          "mean_attention_to_equals_per_head", "max_abs_swap_asymmetry_per_head")]
               for h in range(g.cfg.n_heads)],
              caption="Attention of the '=' query, averaged over all 100 inputs (notebook: a and b get the same "
                      "share to within tenths of a percent; two heads give '=' < 1%, one ~2%, one ~12%).")
    ms, titles = [], []
    for h in range(g.cfg.n_heads):
        ms += [_grid(to_a[:, h], g.p), _grid(to_b[:, h], g.p)]
        titles += [f"head {h}: '=' → a", f"head {h}: '=' → b"]
    sec.figure("attention_to_a_b", plots.heatmaps,
               "Attention from '=' to a and to b for every input (a vertical, b horizontal), per "
               "head. Symmetry in a and b shows as the '→ b' map being the transpose of the '→ a' map.",
               ms, titles, xlabel="b", ylabel="a", vmin=0, vmax=1, ncols=4)


# ---------------------------------------------------------------- probe and correlations


def sum_correlations(g: Grid) -> np.ndarray:
    """Pearson r of every neuron's post-ReLU activation with a + b: [m]."""
    return _np(probes.pearson_corr(jnp.asarray(g.post), jnp.asarray(g.target, jnp.float32)))


def probe_numbers(g: Grid) -> tuple[dict, dict]:
    """(probe, correlations): a least-squares probe post-ReLU -> a + b held out on 30% of the
    inputs, and the neurons' correlations with a + b."""
    pr = probes.probe(jnp.asarray(g.post), jnp.asarray(g.target, jnp.float32), alpha=0.0, key=jax.random.key(42),
                      test_size=0.3)
    corr = sum_correlations(g)
    top = np.argsort(-np.abs(corr))[:TOP_NEURONS]
    probe = {"mlp_post_to_sum_heldout_r2": pr.r2, "mlp_post_to_sum_heldout_mse": pr.mse,
             "mlp_post_to_sum_train_r2": pr.train_r2}
    correlations = {
        "neurons_with_r_above_0.9": int((corr > 0.9).sum()),
        "neurons_with_abs_r_above_0.9": int((np.abs(corr) > 0.9).sum()),
        "neurons_with_r_below_-0.9": int((corr < -0.9).sum()),
        "dead_neurons_on_all_inputs": int((g.post.std(0) < NEAR_CONSTANT).sum()),
        "top_neurons_by_abs_r": top, "top_neurons_r": corr[top],
    }
    return probe, correlations


def probe_section(probe: dict, correlations: dict, g: Grid, rep: Report) -> None:
    corr, p, top = sum_correlations(g), g.p, correlations["top_neurons_by_abs_r"]
    sec = rep.section("MLP: linear probe and neuron-sum correlations")
    sec.text(f"A least-squares linear probe from the 512 post-ReLU activations at '=' to a + b, fitted on 70 "
             f"of the 100 inputs, has held-out R² = {float(probe['mlp_post_to_sum_heldout_r2']):.4f} (notebook: "
             f"'almost perfectly accurate'). {correlations['neurons_with_r_above_0.9']} neurons correlate with "
             f"a + b at r > 0.9 (notebook: more than 130): the sum is represented in a distributed way.")
    sec.figure("neuron_sum_correlations", plots.histogram,
               "Histogram of the 512 neurons' Pearson correlation with a + b (post-ReLU, at '=').",
               corr, bins=50, title="Pearson r of each neuron's activation with a + b", xlabel="r")
    by_r = np.argsort(corr)
    sec.figure("W_L_sorted_by_correlation", plots.heatmap,
               "The neuron→logit map W_L = W_out·W_U with neurons (columns) sorted by their "
               "correlation with a + b, logits 0..19 bottom to top.",
               g.W_L[by_r].T, center=True, title="W_L (neuron → logit), neurons sorted by r",
               xlabel="neuron (sorted by r)", ylabel="logit", width=9, height=4)
    by_sum = np.argsort(g.target, kind="stable")
    sec.figure("activations_sorted", plots.heatmap,
               "Post-ReLU activations of all neurons (sorted by r) on all inputs (sorted by a + b).",
               g.post[by_sum][:, by_r], title="MLP activations: inputs sorted by a+b, neurons by r",
               xlabel="neuron (sorted by r)", ylabel="input (sorted by a + b)", width=9, height=4.5)
    ms = [_grid(g.pre[:, n], p) for n in top] + [_grid(g.post[:, n], p) for n in top]
    titles = [f"neuron {n} pre-ReLU" for n in top] + [f"neuron {n} post-ReLU (r={corr[n]:.3f})" for n in top]
    sec.figure("top_neurons_pre_post", plots.heatmaps,
               f"Pre-ReLU (top row) and post-ReLU (bottom row) activation over (a, b) of the "
               f"{TOP_NEURONS} neurons most correlated with a + b: a ramp in a + b cut at zero by the ReLU.",
               ms, titles, xlabel="b", ylabel="a", annotate=True, ncols=TOP_NEURONS, fmt="{:.1f}", panel=4.2)


# ---------------------------------------------------------------- per-neuron fits on the PC features


@dataclasses.dataclass(frozen=True)
class NeuronFits:
    """Per-neuron R² [m] of each fit of the MLP activations on the PC features, which neurons
    were fitted (live: non-constant), and the degree-2 fits the simulated logits reuse."""

    linear_r2: np.ndarray
    poly2_r2: np.ndarray
    symmetric_r2: np.ndarray
    symmetric8_r2: np.ndarray
    post_poly2_r2: np.ndarray
    poly2_by_index_r2: np.ndarray
    live: np.ndarray
    live_post: np.ndarray
    linear_coef: np.ndarray  # [4, m]
    poly2_fit: Any
    post_poly2_fit: Any


def neuron_fits(g: Grid) -> NeuronFits:
    X4, pre, post = jnp.asarray(g.X4), jnp.asarray(g.pre), jnp.asarray(g.post)
    r2 = lambda fit, X, y: _np(probes.r2_score(y, probes.predict(fit, jnp.asarray(X)), multioutput="raw_values"))
    lin = probes.fit_ols(X4, pre)
    poly_fit, poly_r2 = probes.polynomial_fit(X4, pre, 2)
    la, lb, qa, qb = g.X4.T  # linear and parabola scores of a and b
    sym8 = np.stack([la + lb, qa + qb, la ** 2 + lb ** 2, qa ** 2 + qb ** 2, la * lb, qa * qb,
                     la * qa + lb * qb, la * qb + lb * qa], 1)  # every symmetric degree-2 term
    post_fit, post_r2 = probes.polynomial_fit(X4, post, 2)
    _, by_index_r2 = probes.polynomial_fit(jnp.asarray(g.X4_by_index), pre, 2)
    return NeuronFits(r2(lin, g.X4, pre), _np(poly_r2), r2(probes.fit_ols(jnp.asarray(g.sym), pre), g.sym, pre),
                      r2(probes.fit_ols(jnp.asarray(sym8), pre), sym8, pre), _np(post_r2), _np(by_index_r2),
                      g.pre.std(0) > NEAR_CONSTANT, g.post.std(0) > NEAR_CONSTANT, _np(lin.coef), poly_fit, post_fit)


def neuron_fit_numbers(f: NeuronFits, top_neuron: int) -> dict:
    """Summary statistics of each fit's R² over the fitted neurons."""
    stats = lambda r, m: {"mean": r[m].mean(), "median": np.median(r[m]), "min": r[m].min(),
                          "neurons_above_0.95": int((r[m] > 0.95).sum()),
                          "neurons_above_0.99": int((r[m] > 0.99).sum()), "neurons_fitted": int(m.sum())}
    return {
        "features": FEATURES4,
        "pre_relu_linear_r2": stats(f.linear_r2, f.live), "pre_relu_poly2_r2": stats(f.poly2_r2, f.live),
        "pre_relu_symmetric_poly2_r2": stats(f.symmetric_r2, f.live),
        "pre_relu_all_symmetric_degree2_terms_r2": stats(f.symmetric8_r2, f.live),
        "post_relu_poly2_r2": stats(f.post_poly2_r2, f.live_post),
        "pre_relu_poly2_on_pc1_pc2_by_index_r2": stats(f.poly2_by_index_r2, f.live),
        "top_neuron_linear_coefficients": dict(zip(FEATURES4, f.linear_coef[:, top_neuron])),
    }


def neuron_fit_section(nf: dict, f: NeuronFits, rep: Report) -> None:
    sec = rep.section("Neuron pre-activations as polynomials of the embedding PCs")
    sec.text("Each neuron's pre-activation at '=' over the 100 inputs, regressed on the features "
             "[lin(a), lin(b), par(a), par(b)]: the digits' scores on the linear and on the parabola PC of the "
             "embedding, the features the notebook's [PC1(a), PC1(b), PC2(a), PC2(b)] were in its run. Fits: "
             "linear; all degree-2 monomials (15 columns with the intercept); the symmetric degree-2 features of "
             "the sums s1 = lin(a)+lin(b), s2 = par(a)+par(b) (s1, s2, s1², s1·s2, s2²); and the post-ReLU "
             "activation on the degree-2 features. R² on all 100 inputs (the notebook's protocol). The last row "
             "fits the same degree-2 model on PC1 and PC2 by index, whatever they encode here.")
    sec.figure("neuron_fit_r2", plots.histogram,
               "Distribution over neurons of the R² of each fit of the activation on the PC "
               "features: the degree-2 fit is near-perfect, the linear one is not.",
               {"linear": f.linear_r2[f.live], "degree 2": f.poly2_r2[f.live], "symmetric degree 2":
                f.symmetric_r2[f.live], "post-ReLU degree 2": f.post_poly2_r2[f.live_post]},
               bins=40, title="Per-neuron R² of the fits", xlabel="R²")
    sec.table(["fit", "mean R²", "median R²", "min R²", "neurons > 0.99", "neurons fitted"],
              [[name, s["mean"], s["median"], s["min"], s["neurons_above_0.99"], s["neurons_fitted"]]
               for name, s in (("pre-ReLU linear", nf["pre_relu_linear_r2"]),
                               ("pre-ReLU degree 2", nf["pre_relu_poly2_r2"]),
                               ("pre-ReLU symmetric: 5 features of the sums", nf["pre_relu_symmetric_poly2_r2"]),
                               ("pre-ReLU symmetric: all 8 symmetric degree-2 terms",
                                nf["pre_relu_all_symmetric_degree2_terms_r2"]),
                               ("post-ReLU degree 2", nf["post_relu_poly2_r2"]),
                               ("pre-ReLU degree 2 on PC1, PC2 by index", nf["pre_relu_poly2_on_pc1_pc2_by_index_r2"]))],
              caption="Per-neuron fits of MLP activations on the embedding PC features")


# ---------------------------------------------------------------- embedding ablations (real interventions)


@dataclasses.dataclass(frozen=True)
class EmbeddingAblation:
    """The model with each digit's embedding at hook_embed (positions a, b) replaced by the PCA
    mean plus its parts on the PCs `kept` (0-based): logits [n, v], predictions [n], MLP pre- and
    post-activations [n, m] at '='. `removed` is the PC whose removal the ablation tests (its
    scores are the error fit's features)."""

    name: str
    kept: tuple
    removed: int
    logits: np.ndarray
    pred: np.ndarray
    pre: np.ndarray
    post: np.ndarray


def ablation_plan(g: Grid) -> dict[str, tuple[tuple, int]]:
    """{name: (PCs kept, PC removed)} of the embedding ablations: by meaning (from `g.feature_pc`)
    and by index (the notebook's as written). The first is the notebook's test by meaning."""
    lin, par, parity = (g.feature_pc[f] for f in ("linear", "parabola", "parity"))
    every = range(g.scores.shape[1])
    all_but = lambda pc: tuple(i for i in every if i != pc)
    return {
        f"by meaning: keep the linear PC (PC{lin + 1}) only": ((lin,), par),
        f"by meaning: remove the parabola PC (PC{par + 1}) only": (all_but(par), par),
        f"by meaning: keep the linear and parity PCs (PC{lin + 1}, PC{parity + 1})": ((lin, parity), par),
        "by index: keep PC1 only (the notebook's ablation as written)": ((0,), 1),
        "by index: remove PC2 only": (all_but(1), 1),
    }


def embedding_ablation(g: Grid, name: str, kept, removed: int) -> EmbeddingAblation:
    table = pc_kept_embeddings(g.W_E, kept)
    logits, pre, post = _final(g.cfg, g.params, g.tokens, embedding_patch(g.tokens, table))
    return EmbeddingAblation(name, tuple(int(k) for k in kept), int(removed), logits, logits.argmax(-1), pre, post)


def embedding_ablations(g: Grid) -> dict[str, EmbeddingAblation]:
    """Every ablation of `ablation_plan`, by name."""
    return {name: embedding_ablation(g, name, kept, removed) for name, (kept, removed) in ablation_plan(g).items()}


def ablation_table_numbers(g: Grid, abls: dict[str, EmbeddingAblation]) -> dict:
    """{name: {'kept_pcs', 'accuracy', 'max_abs_error'}} for every ablation."""
    return {name: {"kept_pcs": [f"PC{k + 1}" for k in ab.kept], "accuracy": float((ab.pred == g.target).mean()),
                   "max_abs_error": int(np.abs(ab.pred - g.target).max())} for name, ab in abls.items()}


def ablation_detail_numbers(g: Grid, abl: EmbeddingAblation) -> dict:
    """Accuracy before/after, the failures, and fits of the ablated predictions (on a + b, on
    a and b, and of the error on the removed PC's scores of a and b)."""
    target, a, b = g.target, g.a, g.b
    abl_pred = abl.pred
    err = abl_pred - target
    failed = err != 0
    rows = np.arange(len(target))
    diff_true = g.logits[rows, target] - abl.logits[rows, target]
    line = probes.fit_line(jnp.asarray(target, jnp.float32), jnp.asarray(abl_pred, jnp.float32))
    ab = np.stack([a, b], 1).astype(np.float32)
    _, ab_lin_r2 = probes.polynomial_fit(jnp.asarray(ab), jnp.asarray(abl_pred, jnp.float32), 1)
    req = np.stack([a + b, a ** 2, b ** 2], 1).astype(np.float32)
    req_fit = probes.fit_ols(jnp.asarray(req), jnp.asarray(abl_pred, jnp.float32))
    req_r2 = probes.r2_score(jnp.asarray(abl_pred, jnp.float32), probes.predict(req_fit, jnp.asarray(req)))
    _, ab_quad_r2 = probes.polynomial_fit(jnp.asarray(ab), jnp.asarray(abl_pred, jnp.float32), 2)
    X_removed = np.stack([g.scores[a, abl.removed], g.scores[b, abl.removed]], 1)  # [n, 2]
    _, err_lin_r2 = probes.polynomial_fit(jnp.asarray(X_removed), jnp.asarray(-err, jnp.float32), 1)
    _, err_quad_r2 = probes.polynomial_fit(jnp.asarray(X_removed), jnp.asarray(-err, jnp.float32), 2)
    return {
        "description": f"hook_embed at positions a, b patched with the PCA mean + the parts on "
                       f"{', '.join(f'PC{k + 1}' for k in abl.kept)} of each digit's embedding ({abl.name})",
        "kept_pcs": [f"PC{k + 1}" for k in abl.kept], "removed_pc_of_error_fit": f"PC{abl.removed + 1}",
        "accuracy_before": float((g.logits.argmax(-1) == target).mean()),
        "accuracy_after": float((abl_pred == target).mean()), "failures": int(failed.sum()),
        "failing_inputs_a_b_pred": [[int(a[i]), int(b[i]), int(abl_pred[i])] for i in np.flatnonzero(failed)],
        "max_abs_prediction_error": int(np.abs(err).max()),
        "correct_logit_difference_original_minus_ablated": {
            "mean": diff_true.mean(), "min": diff_true.min(), "max": diff_true.max()},
        "ablated_prediction_vs_sum_linear_fit": {"slope": line.slope, "intercept": line.intercept, "r2": line.r2},
        "ablated_prediction_vs_a_b_linear_r2": ab_lin_r2,
        "ablated_prediction_vs_sum_a2_b2_r2": req_r2, "ablated_prediction_vs_a_b_poly2_r2": ab_quad_r2,
        "error_vs_removed_pc_linear_r2": err_lin_r2, "error_vs_removed_pc_poly2_r2": err_quad_r2,
    }


def ablation_table_section(t: dict, g: Grid, rep: Report) -> None:
    sec = rep.section("Embedding ablations: by meaning and by index")
    f = g.feature_pc
    sec.text(f"The notebook's 'PC2 ablation' keeps the mean and the PC1 part of each digit's embedding. In its run "
             f"PC1 was the linear feature and PC2 the parabola, so it tested whether the model can add with the "
             f"linear feature alone, the parabola removed. In this run the linear feature is PC{f['linear'] + 1}, "
             f"the parabola PC{f['parabola'] + 1} and parity PC{f['parity'] + 1} (see Embedding PCA), so the test "
             f"by meaning keeps the linear PC; the ablation by index (keep PC1) is shown beside it. Real "
             f"interventions at hook_embed, positions a and b, on all 100 inputs.")
    sec.table(["ablation", "PCs kept", "accuracy", "max |error|"],
              [[name, ", ".join(v["kept_pcs"]), v["accuracy"], v["max_abs_error"]] for name, v in t.items()],
              caption="Accuracy with each digit embedding reduced to the mean plus the kept PCs (notebook: keep "
                      "PC1 = the linear feature, 1.00 → 0.42, errors of at most 3)")


def ablation_detail_section(n: dict, g: Grid, abl: EmbeddingAblation, rep: Report, title: str, slug: str) -> None:
    p, target = g.p, g.target
    acc_before, acc_after = n["accuracy_before"], n["accuracy_after"]
    err = abl.pred - target
    rows = np.arange(len(target))
    diff_true = g.logits[rows, target] - abl.logits[rows, target]
    line = n["ablated_prediction_vs_sum_linear_fit"]
    removed = n["removed_pc_of_error_fit"]
    sec = rep.section(title)
    sec.text(f"{n['description']}. Accuracy on all 100 inputs goes {acc_before:.2f} → {acc_after:.2f} (the "
             f"notebook's 'PC2 ablation', which kept its linear PC1: 1.00 → 0.42).")
    sec.figure(f"{slug}_failures", plots.heatmaps,
               "Where the ablated model fails (left), by how much its prediction is off "
               "(middle), and how much the removed parts raised the correct logit (right), over (a, b).",
               [_grid((err != 0).astype(float), p), _grid(err.astype(float), p), _grid(diff_true, p)],
               ["failures after the ablation (1 = wrong)", "ablated prediction − true sum",
                "correct-logit difference (original − ablated)"],
               xlabel="b", ylabel="a", annotate=True, ncols=3, fmt="{:.0f}", panel=4.4)
    sec.figure(f"{slug}_prediction_fit", plots.scatter,
               f"The ablated model's predictions against a + b with the least-squares line "
               f"(slope {float(line['slope']):.3f}, intercept {float(line['intercept']):.3f}; the notebook "
               f"hypothesised 2/3 and 3).",
               target, abl.pred, diagonal=True,
               fits={f"line fit (R²={float(line['r2']):.3f})": (
                   [0, 2 * p - 2], [float(line["intercept"]), float(line["intercept"] + line["slope"] * (2 * p - 2))])},
               xlabel="true sum a + b", ylabel="ablated model's prediction",
               title="Ablated predictions vs the true sum")
    sec.key_values({
        "accuracy before / after": f"{acc_before:.2f} / {acc_after:.2f}",
        "failures": n["failures"],
        "max |prediction error|": n["max_abs_prediction_error"],
        "prediction ~ a + b: R²": float(line["r2"]),
        "prediction ~ a, b (linear): R²": float(n["ablated_prediction_vs_a_b_linear_r2"]),
        "prediction ~ (a+b), a², b²: R²": float(n["ablated_prediction_vs_sum_a2_b2_r2"]),
        "prediction ~ degree-2 polynomial of (a, b): R²": float(n["ablated_prediction_vs_a_b_poly2_r2"]),
        f"error ~ {removed}(a), {removed}(b) linear / degree 2: R²":
            f"{float(n['error_vs_removed_pc_linear_r2']):.3f} / {float(n['error_vs_removed_pc_poly2_r2']):.3f}",
        "mean correct-logit difference (original − ablated)":
            float(n["correct_logit_difference_original_minus_ablated"]["mean"]),
    }, caption=f"{title}: accuracy and fits of the ablated predictions")


# ---------------------------------------------------------------- skip-connection ablation


def _before_after(g: Grid, intervention: iv.Intervention) -> dict:
    """Accuracy and loss at '=' on all inputs without and with `intervention`."""
    logits, _ = tm.apply(g.cfg, g.params, g.tokens, intervention=intervention)
    logits = _np(logits[:, -1])
    y = jnp.asarray(g.target)
    return {"accuracy_before": float((g.logits.argmax(-1) == g.target).mean()),
            "accuracy_after": float((logits.argmax(-1) == g.target).mean()),
            "loss_before": gk.cross_entropy(jnp.asarray(g.logits), y), "loss_after": gk.cross_entropy(jnp.asarray(logits), y)}


def skip_ablation_numbers(g: Grid) -> dict:
    """Accuracy and loss with resid_post replaced by the MLP output alone."""
    _, acts = tm.apply(g.cfg, g.params, g.tokens, capture=(MLP_OUT,))
    return _before_after(g, iv.patch(RESID_POST, acts[MLP_OUT]))


def skip_ablation_section(skip: dict, rep: Report) -> None:
    sec = rep.section("Skip-connection ablation")
    sec.text("blocks.0.hook_resid_post patched with the MLP output alone (the embedding and attention parts of "
             "the residual stream removed before the unembedding).")
    sec.key_values({"accuracy before / after": f"{skip['accuracy_before']:.2f} / {skip['accuracy_after']:.2f}",
                    "loss before / after": f"{float(skip['loss_before']):.3e} / {float(skip['loss_after']):.3e}"},
                   caption="The readout needs only the MLP output (notebook: no accuracy lost, loss up but small)")


# ---------------------------------------------------------------- simulated logits


def simulated_logits(g: Grid, f: NeuronFits) -> tuple[np.ndarray, np.ndarray]:
    """Logits rebuilt from the fits: W_L ReLU(Poly2(PCs)) and W_L Poly2(post), [n, v] each."""
    feats = probes.polynomial_features(jnp.asarray(g.X4), 2)
    z_sim = _np(probes.predict(f.poly2_fit, feats))  # [n, m]
    return np.maximum(z_sim, 0) @ g.W_L, _np(probes.predict(f.post_poly2_fit, feats)) @ g.W_L


def simulation_numbers(g: Grid, sim_relu: np.ndarray, sim_post: np.ndarray) -> dict:
    return {"relu_of_poly2_pre_r2": _overall_r2(g.logits, sim_relu),
            "poly2_of_post_r2": _overall_r2(g.logits, sim_post),
            "relu_of_poly2_pre_accuracy": float((sim_relu.argmax(-1) == g.target).mean()),
            "poly2_of_post_accuracy": float((sim_post.argmax(-1) == g.target).mean())}


def simulation_section(s: dict, g: Grid, sim_relu: np.ndarray, sim_post: np.ndarray, rep: Report) -> None:
    sec = rep.section("Simulated logits")
    sec.text(f"Logits rebuilt from the fits alone: W_L·ReLU(Poly2(PCs)) (each neuron's pre-activation replaced by "
             f"its degree-2 fit, then ReLU and W_L) gives overall R² = {s['relu_of_poly2_pre_r2']:.4f} against the "
             f"real logits and accuracy {s['relu_of_poly2_pre_accuracy']:.2f}; W_L·Poly2(post) gives "
             f"R² = {s['poly2_of_post_r2']:.4f}. (The real logits also carry the residual stream's direct path, "
             f"which these omit, as in the notebook.)")
    i00, i44 = 0, 4 * g.p + 4
    sec.figure("simulated_logits", plots.line_panels,
               "The model's logits for inputs (0, 0) and (4, 4) next to the two simulations.",
               np.arange(g.logits.shape[1]),
               [{"model": g.logits[i], "W_L·ReLU(Poly2)": sim_relu[i], "W_L·Poly2(post)": sim_post[i]}
                for i in (i00, i44)],
               ["input (0, 0)", "input (4, 4)"], xlabel="logit", ylabel="value")


# ---------------------------------------------------------------- Fourier views


def topk_variance_explained(logits: np.ndarray) -> np.ndarray:
    """Variance of each input's logits explained by the constant plus its top-k rfft frequencies,
    for k = 1..v//2: [K, n]."""
    return np.stack([_np(fourier.rfft_top_k(jnp.asarray(logits), k).variance_explained)
                     for k in range(1, logits.shape[1] // 2 + 1)])


def logit_fourier_numbers(g: Grid) -> dict:
    """Top-k rfft reconstructions of each input's logits, and W_E's and W_L's rfft norms."""
    logits, i00, i44 = g.logits, 0, 4 * g.p + 4
    ve = topk_variance_explained(logits)  # [K, n]
    ks = list(range(1, len(ve) + 1))
    top6 = fourier.rfft_top_k(jnp.asarray(logits), TOP_K_FREQS)
    mag00, _ = fourier.rfft_magnitude_phase(jnp.asarray(logits[i00]))
    return {
        "mean_variance_explained_by_top_k_frequencies": dict(zip(map(str, ks), ve.mean(1))),
        "variance_explained_top6_input_0_0": ve[TOP_K_FREQS - 1, i00],
        "variance_explained_top6_input_4_4": ve[TOP_K_FREQS - 1, i44],
        "accuracy_of_top6_reconstruction": float((_np(top6.reconstruction).argmax(-1) == g.target).mean()),
        "W_E_rfft_norm_per_frequency": np.linalg.norm(np.abs(np.fft.rfft(g.W_E, axis=0)), axis=1),  # [p//2+1]
        "W_L_rfft_norm_per_frequency": np.linalg.norm(np.abs(np.fft.rfft(g.W_L, axis=1)), axis=0),  # [v//2+1]
        "logits_0_0_rfft_magnitude": _np(mag00),
    }


def logit_fourier_section(lf: dict, g: Grid, rep: Report) -> None:
    ve, i00, i44 = topk_variance_explained(g.logits), 0, 4 * g.p + 4
    ks = list(range(1, len(ve) + 1))
    we_norm, wl_norm = lf["W_E_rfft_norm_per_frequency"], lf["W_L_rfft_norm_per_frequency"]
    sec = rep.section("Fourier analysis of the logits")
    sec.text(f"Each input's 20 logits, as a signal over the output index, reconstructed from the constant plus "
             f"its k largest rfft frequencies. With k = {TOP_K_FREQS} the reconstruction explains "
             f"{ve[TOP_K_FREQS - 1].mean():.1%} of the variance on average and its arg-max is right for "
             f"{lf['accuracy_of_top6_reconstruction']:.0%} of inputs (notebook: 6 frequencies needed for the right "
             f"answer at (0, 0)).")
    sec.figure("logit_fourier_topk", plots.curves,
               "Variance of the logits explained by the constant plus the top-k rfft "
               "frequencies, against k.",
               {"mean over inputs": (ks, ve.mean(1)), "input (0, 0)": (ks, ve[:, i00]),
                "input (4, 4)": (ks, ve[:, i44])},
               markers=True, xlabel="k (non-constant frequencies kept)", ylabel="variance explained",
               title="Top-k Fourier reconstruction of the logits")
    sec.figure("fourier_norms_W_E", plots.bars,
               "Norm over d_model of the rfft of the digit embeddings along the digit axis, per "
               "frequency (Nanda et al.'s Figure 3 view): low frequencies dominate.",
               list(range(len(we_norm))), we_norm, xlabel="frequency index", ylabel="norm",
               title="W_E (digits) in the Fourier basis")
    sec.figure("fourier_norms_W_L", plots.bars,
               "Norm over neurons of the rfft of W_L along the 20 logits, per frequency: the "
               "readout lives on the lowest output frequencies.",
               list(range(len(wl_norm))), wl_norm, xlabel="frequency index", ylabel="norm",
               title="W_L (logits) in the Fourier basis")


# ---------------------------------------------------------------- PCA of W_L


def _sinusoids(n_out: int) -> dict[str, np.ndarray]:
    """Low-frequency sinusoids over the logits, and the alternating (-1)^k (a parity readout)."""
    k_idx = np.arange(n_out)
    return {f"{fn} {k}": f(2 * np.pi * k * k_idx / n_out) for k in (1, 2) for fn, f in (("cos", np.cos),
                                                                                        ("sin", np.sin))} | {
        "alternating (-1)^k": (-1.0) ** k_idx}


def w_l_pca(g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """PCA of W_L's neuron columns (samples = neurons [m, v]): (explained variance ratios [v],
    components [v, v])."""
    wl = linalg.pca(jnp.asarray(g.W_L))
    return _np(wl.explained_variance_ratio), _np(wl.components)


def w_l_pca_numbers(g: Grid, live: np.ndarray) -> dict:
    """PCA of W_L's neuron columns, how well its top PCs align with low-frequency sinusoids, and
    the top-2 share over the `live` neurons' columns only (bool [m])."""
    wl_ratio, wl_comps = w_l_pca(g)
    live_ratio = _np(linalg.pca(jnp.asarray(g.W_L[live])).explained_variance_ratio)
    basis = _sinusoids(g.W_L.shape[1])
    sims = {i: {name: float(abs(wl_comps[i] @ v) / np.linalg.norm(v)) for name, v in basis.items()}
            for i in range(4)}
    return {"explained_variance_ratio": wl_ratio[:10], "top2_variance_ratio": wl_ratio[:2].sum(),
            "top2_variance_ratio_live_neurons": live_ratio[:2].sum(), "live_neurons": int(live.sum()),
            "abs_cosine_of_pcs_with_sinusoids": {f"PC{i + 1}": s for i, s in sims.items()}}


def w_l_pca_section(w: dict, g: Grid, rep: Report) -> None:
    (wl_ratio, wl_comps), sims = w_l_pca(g), w["abs_cosine_of_pcs_with_sinusoids"]
    sec = rep.section("PCA of W_L")
    sec.text(f"PCA of the 512 neuron→logit vectors (columns of W_L): the top two components explain "
             f"{wl_ratio[:2].sum():.1%} of the variance (notebook 98.3%); over the {w['live_neurons']} live "
             f"neurons' columns alone, {float(w['top2_variance_ratio_live_neurons']):.1%}.")
    sec.figure("W_L_scree", plots.scree, "Scree plot of the PCA of W_L's neuron columns.",
               wl_ratio, title="W_L columns: explained variance")
    sec.figure("W_L_pcs", plots.line_panels,
               "The first four principal components of W_L's columns over the 20 logits, with "
               "the sinusoid (frequency 1 or 2 of period 20, or the alternating (-1)^k) each is most aligned with.",
               np.arange(g.W_L.shape[1]), [{f"PC{i + 1}": wl_comps[i]} for i in range(4)],
               [f"PC{i + 1} ({wl_ratio[i]:.1%}); best |cos| with "
                f"{max(s, key=s.get)} = {max(s.values()):.2f}" for i, s in enumerate(sims.values())],
               xlabel="logit", ylabel="component")


# ---------------------------------------------------------------- per-logit fits


def logit_fit_numbers(g: Grid) -> dict:
    """Each logit fitted by a degree-2 polynomial of the PC features; the best one refit on the
    symmetric features."""
    lfit, logit_r2 = probes.polynomial_fit(jnp.asarray(g.X4), jnp.asarray(g.logits), 2)
    logit_r2 = _np(logit_r2)
    best = int(np.argmax(logit_r2))
    sym_best = probes.fit_ols(jnp.asarray(g.sym), jnp.asarray(g.logits[:, best]))
    sym_best_r2 = probes.r2_score(jnp.asarray(g.logits[:, best]), probes.predict(sym_best, jnp.asarray(g.sym)))
    names15 = probes.polynomial_feature_names(FEATURES4, 2)
    worst = np.argsort(logit_r2)[:3]
    answers = np.bincount(g.target, minlength=len(logit_r2))
    return {"worst_logits": worst, "worst_logits_r2": logit_r2[worst],
            "worst_logits_inputs_with_that_answer": answers[worst], "poly2_r2_per_logit": logit_r2, "mean_r2": logit_r2.mean(), "min_r2": logit_r2.min(),
            "max_r2": logit_r2.max(), "best_logit": best,
            "best_logit_coefficients": dict(zip(names15, _np(lfit.coef)[:, best])),
            "best_logit_symmetric_r2": sym_best_r2}


def logit_fit_section(lf: dict, rep: Report) -> None:
    logit_r2, best = lf["poly2_r2_per_logit"], lf["best_logit"]
    sec = rep.section("Per-logit polynomial fits")
    sec.figure("logit_fit_r2", plots.bars,
               f"R² of each output logit fitted by a degree-2 polynomial of [lin(a), lin(b), "
               f"par(a), par(b)] over the 100 inputs (best: logit {best}, R² = {logit_r2[best]:.4f}; its "
               f"symmetric 5-feature refit: R² = {float(lf['best_logit_symmetric_r2']):.4f}).",
               list(range(len(logit_r2))), logit_r2, highlight=[best], xlabel="logit", ylabel="R²",
               title="Each logit ~ degree-2 polynomial of the PC features")


# ---------------------------------------------------------------- neuron-level analyses of the ablation


def _r2_stats(r2: np.ndarray) -> dict:
    return {"mean": float(np.mean(r2)), "median": float(np.median(r2)), "neurons_above_0.9": int((r2 > 0.9).sum()),
            "neurons_above_0.99": int((r2 > 0.99).sum()), "neurons_fitted": int(r2.size)}


def activation_delta_numbers(g: Grid, abl: EmbeddingAblation, corr: np.ndarray) -> dict:
    """How the ablation moves each neuron: post- and pre-activation deltas (full − ablated) [n, m]
    averaged over the failing inputs, the neurons moved most, and per-neuron fits of the
    pre-activation delta on the removed PC's scores [PC(a), PC(b)] (linear and degree 2)."""
    d_post, d_pre = g.post - abl.post, g.pre - abl.pre  # [n, m]
    failed = abl.pred != g.target
    fail = failed if failed.any() else np.ones_like(failed)
    mean_abs = np.abs(d_post[fail]).mean(0)  # [m]
    top = np.argsort(-mean_abs)[:5]
    moved = d_pre.std(0) > NEAR_CONSTANT
    X = np.stack([g.scores[g.a, abl.removed], g.scores[g.b, abl.removed]], 1)  # [n, 2]
    _, lin_r2 = probes.polynomial_fit(jnp.asarray(X), jnp.asarray(d_pre[:, moved]), 1)
    _, quad_r2 = probes.polynomial_fit(jnp.asarray(X), jnp.asarray(d_pre[:, moved]), 2)
    return {"failures": int(failed.sum()), "removed_pc": f"PC{abl.removed + 1}",
            "mean_abs_post_delta_on_failures": mean_abs, "mean_pre_delta_on_failures": d_pre[fail].mean(0),
            "top_neurons_by_mean_abs_post_delta": top, "their_post_delta": mean_abs[top], "their_r": corr[top],
            "pre_delta_vs_removed_pc_linear_r2": _r2_stats(_np(lin_r2)),
            "pre_delta_vs_removed_pc_poly2_r2": _r2_stats(_np(quad_r2))}


def activation_delta_section(d: dict, corr: np.ndarray, rep: Report) -> None:
    by_r = np.argsort(corr)
    sec = rep.section("How the ablation moves the neurons")
    sec.text(f"Deltas full − ablated (the by-meaning ablation) over the {d['failures']} inputs it gets wrong "
             f"(all inputs when none fails). Neurons moved most (mean |Δ post-ReLU|): " + ", ".join(
                 f"{int(n)} ({float(v):.3f}, r = {float(r):.2f})" for n, v, r in zip(
                     d["top_neurons_by_mean_abs_post_delta"], d["their_post_delta"], d["their_r"])) + ".")
    sec.figure("ablation_pre_delta_by_neuron", plots.bars,
               "Mean pre-activation delta (full − ablated) on the failing inputs per neuron, "
               "neurons sorted by their correlation with a + b (the notebook's view).",
               list(range(len(by_r))), d["mean_pre_delta_on_failures"][by_r], xlabel="neuron (sorted by r)",
               ylabel="mean Δz", title="Pre-activation change under the ablation")
    lin, quad = d["pre_delta_vs_removed_pc_linear_r2"], d["pre_delta_vs_removed_pc_poly2_r2"]
    sec.table(["fit of Δz on the removed PC's scores", "mean R²", "median R²", "neurons > 0.9", "neurons fitted"],
              [[f"linear in {d['removed_pc']}(a), {d['removed_pc']}(b)", lin["mean"], lin["median"],
                lin["neurons_above_0.9"], lin["neurons_fitted"]],
               [f"degree 2 in {d['removed_pc']}(a), {d['removed_pc']}(b)", quad["mean"], quad["median"],
                quad["neurons_above_0.9"], quad["neurons_fitted"]]],
              caption="How much of each neuron's pre-activation change the removed feature explains (notebook: "
                      "well fitted by a linear/quadratic function of PC2(a), PC2(b))")


def sum_fit_numbers(g: Grid, abl: EmbeddingAblation) -> dict:
    """Per-neuron line fits of the pre- and post-ReLU activations on a + b, in the full and the
    ablated model (R² statistics over the neurons whose activation varies), and the mean drop of
    R² from pre to post."""
    s = jnp.asarray(g.target, jnp.float32)
    out = {}
    for model, pre, post in (("full", g.pre, g.post), ("ablated", abl.pre, abl.post)):
        live = post.std(0) > NEAR_CONSTANT
        r_pre = _np(probes.fit_line(s, jnp.asarray(pre[:, live].T)).r2)  # [live]
        r_post = _np(probes.fit_line(s, jnp.asarray(post[:, live].T)).r2)
        out[model] = {"pre_relu": _r2_stats(r_pre), "post_relu": _r2_stats(r_post),
                      "mean_r2_drop_pre_to_post": float(np.mean(r_pre - r_post))}
    return out


def sum_fit_section(sf: dict, rep: Report) -> None:
    sec = rep.section("Activations as lines in a + b, full and ablated")
    sec.table(["model", "activation", "mean R²", "median R²", "neurons > 0.99", "neurons fitted",
               "mean R² drop pre → post"],
              [[m, act, v[act]["mean"], v[act]["median"], v[act]["neurons_above_0.99"], v[act]["neurons_fitted"],
                v["mean_r2_drop_pre_to_post"] if act == "post_relu" else ""]
               for m, v in sf.items() for act in ("pre_relu", "post_relu")],
              caption="Each neuron's activation fitted by a line in a + b (the notebook: ReLU lowers the linear "
                      "fit by a similar amount in the full and the ablated model)")


def flip_numbers(g: Grid, abl: EmbeddingAblation, a: int = 0, b: int = 0) -> dict:
    """Neurons whose ReLU state differs between the full and the ablated model on input (a, b),
    and what they do to the logits: Σ over each group of W_L[n] (post_full − post_ablated)."""
    i = a * g.p + b
    on_full, on_abl = g.pre[i] > 0, abl.pre[i] > 0
    groups = {"on_in_full_off_in_ablated": np.flatnonzero(on_full & ~on_abl),
              "off_in_full_on_in_ablated": np.flatnonzero(~on_full & on_abl)}
    d_post = g.post[i] - abl.post[i]  # [m]
    correct, ablated_pred = int(g.target[i]), int(abl.pred[i])
    out = {"input": [a, b], "correct_logit": correct, "ablated_prediction": ablated_pred,
           "logit_change_full_minus_ablated": g.logits[i] - abl.logits[i]}
    for name, idx in groups.items():
        change = d_post[idx] @ g.W_L[idx]  # [v]
        out[name] = {"neurons": idx, "count": int(len(idx)), "logit_change": change,
                     "mean_W_L_at_correct": float(g.W_L[idx, correct].mean()) if len(idx) else None,
                     "mean_W_L_at_ablated_prediction": float(g.W_L[idx, ablated_pred].mean()) if len(idx) else None}
    out["flipped_logit_change"] = sum(out[name]["logit_change"] for name in groups)
    return out


def flip_section(fl: dict, rep: Report) -> None:
    a, b = fl["input"]
    on, off = fl["on_in_full_off_in_ablated"], fl["off_in_full_on_in_ablated"]
    c, q = fl["correct_logit"], fl["ablated_prediction"]
    sec = rep.section(f"Neurons that flip at ({a}, {b})")
    sec.text(f"At input ({a}, {b}) (answer {c}; the ablated model says {q}), {on['count'] + off['count']} neurons "
             f"change ReLU state between the full and the ablated model: {on['count']} fire in the full model "
             f"and not in the ablated one, {off['count']} the other way (notebook: 25, of which 24 fire only in "
             f"the full model; its labels 'ON→OFF' read from the ablated model to the full one). Their "
             f"contribution to logit {c} minus logit {q}: "
             f"{float(fl['flipped_logit_change'][c] - fl['flipped_logit_change'][q]):+.3f}, of a total change of "
             f"{float(fl['logit_change_full_minus_ablated'][c] - fl['logit_change_full_minus_ablated'][q]):+.3f}.")
    v = len(fl["logit_change_full_minus_ablated"])
    sec.figure("flip_logit_change", plots.bars,
               f"Logit change (full − ablated) at ({a}, {b}): from the neurons that fire only in the full "
               f"model, from those that fire only in the ablated one, and in total.",
               list(range(v)), {"fire only in full": on["logit_change"], "fire only in ablated": off["logit_change"],
                                "total": fl["logit_change_full_minus_ablated"]},
               xlabel="logit", ylabel="Δ logit", title=f"Logit change profile at ({a}, {b})")


def top_contributor_numbers(g: Grid, corr: np.ndarray, a: int = 0, b: int = 0, k: int = 10) -> dict:
    """The neurons contributing most to the logits at input (a, b): contribution post[n] W_L[n, j],
    ranked by its total |.| over the logits."""
    i = a * g.p + b
    contrib = g.post[i][:, None] * g.W_L  # [m, v]
    total = np.abs(contrib).sum(1)
    top = np.argsort(-total)[:k]
    return {"input": [a, b], "neurons": top, "total_abs_contribution": total[top], "r": corr[top],
            "contribution_to_correct_logit": contrib[top, int(g.target[i])],
            "share_of_total_abs_contribution": float(total[top].sum() / total.sum())}


def top_contributor_section(tc: dict, rep: Report) -> None:
    a, b = tc["input"]
    sec = rep.section(f"Top contributing neurons at ({a}, {b})")
    sec.table(["neuron", "Σ_j |post · W_L[n, j]|", "to the correct logit", "r with a + b"],
              [[int(n), float(t), float(c), float(r)] for n, t, c, r in zip(
                  tc["neurons"], tc["total_abs_contribution"], tc["contribution_to_correct_logit"], tc["r"])],
              caption=f"The {len(tc['neurons'])} largest contributors hold "
                      f"{tc['share_of_total_abs_contribution']:.0%} of the total |contribution|")


KEY_NEURONS = 100  # the notebook's W_L statistics over its top 100 sum-correlated neurons
SPARSE_FRACTION = 0.01  # a W_L weight below this x the largest |weight| (per logit) counts as ~0, as the notebook


def w_l_key_neuron_numbers(g: Grid, corr: np.ndarray) -> dict:
    """Per logit, statistics of W_L over the KEY_NEURONS neurons most correlated with a + b (|r|):
    share of positive weights, share of ~0 weights, mean, std, max |w|: each [v]."""
    key = np.argsort(-np.abs(corr))[:KEY_NEURONS]
    w = g.W_L[key]  # [k, v]
    max_abs = np.abs(w).max(0)
    return {"key_neurons": key, "positivity_ratio": (w > 0).mean(0),
            "sparsity_ratio": (np.abs(w) < SPARSE_FRACTION * max_abs).mean(0),
            "mean": w.mean(0), "std": w.std(0), "max_abs": max_abs}


def w_l_key_neuron_section(k: dict, rep: Report) -> None:
    sec = rep.section("W_L over the key neurons")
    sec.table(["logit", "positive share", f"share < {SPARSE_FRACTION:g} max", "mean", "std", "max |w|"],
              [[j, *(float(k[f][j]) for f in ("positivity_ratio", "sparsity_ratio", "mean", "std", "max_abs"))]
               for j in range(len(k["mean"]))],
              caption=f"W_L = W_out·W_U over the {KEY_NEURONS} neurons most correlated with a + b, per logit")


def w_l_dft_numbers(g: Grid, live: np.ndarray) -> dict:
    """rfft of each live neuron's W_L column along the logits: magnitudes normalised per neuron
    (mean over neurons [f]) and how many neurons peak at each non-constant frequency [f]."""
    mags = np.abs(np.fft.rfft(g.W_L[live], axis=1))  # [live, f]
    norm = mags / np.maximum(mags.max(1, keepdims=True), NEAR_CONSTANT)
    peak = 1 + mags[:, 1:].argmax(1)
    return {"mean_normalised_magnitude": norm.mean(0),
            "neurons_peaking_at_frequency": np.bincount(peak, minlength=mags.shape[1]), "neurons": int(live.sum())}


def w_l_dft_section(d: dict, rep: Report) -> None:
    f = list(range(len(d["mean_normalised_magnitude"])))
    sec = rep.section("Fourier transform of W_L's columns")
    sec.figure("W_L_column_dft", plots.bars,
               f"Over the {d['neurons']} live neurons: the mean rfft magnitude of each W_L column along the 20 "
               f"logits (normalised per neuron to its largest), and the share of neurons whose largest "
               f"non-constant frequency is each (notebook: frequencies 1, 2, 3 dominate).",
               f, {"mean normalised magnitude": d["mean_normalised_magnitude"],
                   "share of neurons peaking here": d["neurons_peaking_at_frequency"] / max(d["neurons"], 1)},
               xlabel="frequency index", ylabel="value", title="W_L columns in the Fourier basis")


CORRELATION_GROUPS = {"r >= 0.9": (0.9, np.inf), "0.5 <= r < 0.9": (0.5, 0.9), "-0.5 <= r < 0.5": (-0.5, 0.5),
                      "-0.9 <= r < -0.5": (-0.9, -0.5), "r < -0.9": (-np.inf, -0.9)}


def coefficient_group_numbers(f: NeuronFits, corr: np.ndarray) -> dict:
    """Mean degree-2 coefficients of the pre-activation fits (on FEATURES4) per correlation group
    of neurons (live ones): {group: {'neurons', 'mean_coefficients': {name: value}}}."""
    names = probes.polynomial_feature_names(FEATURES4, 2)
    coef = _np(f.poly2_fit.coef)  # [features, m]
    out = {}
    for group, (lo, hi) in CORRELATION_GROUPS.items():
        m = f.live & (corr >= lo) & (corr < hi)
        out[group] = {"neurons": int(m.sum()),
                      "mean_coefficients": dict(zip(names, coef[:, m].mean(1) if m.any() else np.full(len(names), np.nan)))}
    return out


def coefficient_group_section(cg: dict, rep: Report) -> None:
    groups = [k for k, v in cg.items() if v["neurons"]]
    names = list(next(iter(cg.values()))["mean_coefficients"])
    sec = rep.section("Polynomial coefficients by neuron group")
    sec.figure("coefficient_groups", plots.heatmap,
               "Mean coefficient of each degree-2 term of the pre-activation fit on [lin(a), lin(b), par(a), "
               "par(b)], per group of neurons by their correlation r with a + b (rows; neuron counts in the "
               "labels).",
               np.array([[cg[k]["mean_coefficients"][n] for n in names] for k in groups]), center=True,
               annotate=True, origin_lower=False, xticks=(list(range(len(names))), names),
               yticks=(list(range(len(groups))), [f"{k} ({cg[k]['neurons']})" for k in groups]),
               title="Mean Poly2 coefficients by correlation group", width=12, height=4)


def w_e_svd_numbers(g: Grid, seed: int = 0) -> dict:
    """Singular values of the whole W_E [d_vocab, d] (uncentred, as the demo) against a Gaussian
    matrix of the same shape and Frobenius norm (numpy seed `seed`): normalised singular values and
    the share of the squared ones in the top 2."""
    W = _np(g.params["embed"]["W_E"])
    rand = np.random.default_rng(seed).standard_normal(W.shape)
    rand *= np.linalg.norm(W) / np.linalg.norm(rand)
    out = {}
    for name, m in (("W_E", W), ("random", rand)):
        s = _np(linalg.svd(jnp.asarray(m, jnp.float32)).s)
        out[name] = {"singular_values": s, "top2_share_of_squared": float((s[:2] ** 2).sum() / (s ** 2).sum())}
    return out


def w_e_svd_section(sv: dict, rep: Report) -> None:
    sec = rep.section("SVD of W_E with a random control")
    sec.figure("W_E_svd", plots.curves,
               f"Singular values of W_E (all {len(sv['W_E']['singular_values'])} tokens, uncentred) and of a "
               f"Gaussian matrix of the same shape and norm: the top two hold "
               f"{sv['W_E']['top2_share_of_squared']:.0%} of W_E's squared singular values against "
               f"{sv['random']['top2_share_of_squared']:.0%} for the control.",
               {k: (list(range(1, len(v["singular_values"]) + 1)), v["singular_values"]) for k, v in sv.items()},
               markers=True, xlabel="index", ylabel="singular value", title="W_E against a random matrix")


# ---------------------------------------------------------------- the differences from the notebook, measured


def equals_attention_numbers(g: Grid) -> dict:
    """What the '=' query's attention to '=' itself does: accuracy and loss before and after that
    attention is removed (each head's weights on a and b renormalised to sum to 1, a real patch of the pattern)."""
    _, acts = tm.apply(g.cfg, g.params, g.tokens, capture=(PATTERN,))
    pattern = _np(acts[PATTERN])  # [n, h, q, k]
    edited = pattern.copy()
    ab = pattern[:, :, 2, :2]
    edited[:, :, 2, :2] = ab / ab.sum(-1, keepdims=True)
    edited[:, :, 2, 2] = 0.0
    return _before_after(g, iv.patch(PATTERN, edited))


def dead_neuron_numbers(run, g: Grid) -> dict:
    """Neurons that never fire (post-ReLU 0 on all 100 inputs) at the end, and when they died:
    the same test at init and at every parameter snapshot. `death_epoch` [dead] is the first
    checked epoch after which the neuron never fired again (0: dead from init)."""
    dead_end = g.post.max(0) <= 0  # [m]
    config = run.config
    init = tm.init_params(g.cfg, jax.random.key(int(config.model_seed)))
    snaps = [] if run.snapshots is None else [jax.tree.map(lambda x, s=s: x[s], run.snapshots)
                                              for s in range(len(run.snapshot_epochs))]
    epochs = [0] + [int(e) for e in run.snapshot_epochs[:len(snaps)]]
    stacked = [init] + snaps
    alive = np.stack([_final(g.cfg, params, g.tokens)[2].max(0) > 0 for params in stacked])  # [S + 1, m]
    alive = np.concatenate([alive, ~dead_end[None]])  # the final model closes the record
    epochs.append(int(run.train_history["epoch"][-1]))
    last_alive = np.array([np.flatnonzero(alive[:, n]).max() if alive[:, n].any() else -1 for n in range(alive.shape[1])])
    idx = np.flatnonzero(dead_end)
    death = np.array([epochs[last_alive[n] + 1] for n in idx], int)
    return {"dead_neurons": int(dead_end.sum()), "neurons": int(dead_end.size), "dead_at_init": int((~alive[0]).sum()),
            "checked_epochs": epochs, "alive_per_checked_epoch": alive.sum(1), "death_epoch": death,
            "median_death_epoch": float(np.median(death)) if len(death) else None,
            "W_L_column_norm_dead_vs_live": [float(np.linalg.norm(g.W_L[dead_end], axis=1).mean()) if dead_end.any()
                                             else None, float(np.linalg.norm(g.W_L[~dead_end], axis=1).mean())]}


def dead_neuron_section(dn: dict, rep: Report) -> None:
    sec = rep.section("Dead neurons")
    sec.text(f"{dn['dead_neurons']} of {dn['neurons']} neurons never fire on any of the 100 inputs in the final "
             f"model ({dn['dead_at_init']} were already silent at init); median epoch of death "
             f"{dn['median_death_epoch']}. A dead neuron gets no gradient, so weight decay shrinks its weights: "
             f"mean |W_L column| {dn['W_L_column_norm_dead_vs_live'][0]} for dead neurons against "
             f"{dn['W_L_column_norm_dead_vs_live'][1]:.3g} for live ones. The notebook prints no count of dead "
             f"neurons, so whether its run had them cannot be read from it; its 'more than 130 neurons with "
             f"r > 0.9' needs at least 130 live ones.")
    sec.figure("live_neurons_over_training", plots.curves,
               "Neurons that fire on at least one of the 100 inputs, at init, at every parameter snapshot and "
               "at the end of training.",
               {"live neurons": (dn["checked_epochs"], dn["alive_per_checked_epoch"])}, markers=True,
               xlabel="epoch", ylabel="live neurons", title="Live MLP neurons over training")


def equals_attention_section(ea: dict, att: dict, rep: Report) -> None:
    sec = rep.section("Attention to '=' measured")
    share = ", ".join(f"{float(v):.1%}" for v in att["mean_attention_to_equals_per_head"])
    sec.text(f"The '=' query gives '=' itself {share} of its attention (heads 0-3; notebook <1%, <1%, ~2%, "
             f"~12%). '=' is the same token at the same position in every input, so what it contributes is one "
             f"fixed value vector scaled by that weight. Removing it (each head's weights on a and b renormalised "
             f"to 1, a patch of the pattern) gives accuracy {ea['accuracy_after']:.2f} "
             f"(before {ea['accuracy_before']:.2f}) and loss {float(ea['loss_after']):.3g} "
             f"(before {float(ea['loss_before']):.3g}): this run spends more attention on '=', and the numbers "
             f"say how much of its computation rests on that.")



# ---------------------------------------------------------------- side by side with the notebook

# How close a number must be to the notebook's to count as agreeing, by kind of quantity.
AGREEMENT_TOLERANCE = {"variance share": 0.05, "accuracy": 0.1, "R²": 0.02, "line R²": 0.05, "error": 1,
                       "count": 0.25}


def ours_vs_notebook(out: dict) -> dict[str, tuple]:
    """{quantity: (ours, the notebook's, kind)} for every number the notebook printed; `kind`
    keys AGREEMENT_TOLERANCE. Fits are on the features by meaning (the notebook's PC1, PC2 were
    the linear and parabola features); both ablations are listed."""
    e, nf, sim = out["embedding_pca"], out["neuron_fits"], out["simulated_logits"]
    fab, pc2 = out["feature_ablation"], out["pc2_ablation"]
    ratio = e["explained_variance_ratio"]
    share = lambda f: ratio[int(e["feature_pc"][f][2:]) - 1]
    rows = {
        "embedding PC1 variance ratio": (e["pc1_variance_ratio"], NOTEBOOK["embedding_pc1_variance_ratio"],
                                         "variance share"),
        "embedding PC2 variance ratio": (e["pc2_variance_ratio"], NOTEBOOK["embedding_pc2_variance_ratio"],
                                         "variance share"),
        "embedding PC1+PC2 variance ratio": (e["pc1_pc2_variance_ratio"],
                                             NOTEBOOK["embedding_pc1_pc2_variance_ratio"], "variance share"),
        "embedding: variance share of the linear PC (notebook's PC1)": (
            share("linear"), NOTEBOOK["embedding_pc1_variance_ratio"], "variance share"),
        "embedding: variance share of the parabola PC (notebook's PC2)": (
            share("parabola"), NOTEBOOK["embedding_pc2_variance_ratio"], "variance share"),
        "neurons with r(a+b) > 0.9": (out["correlations"]["neurons_with_r_above_0.9"],
                                      NOTEBOOK["neurons_with_sum_correlation_above_0.9"], "count"),
        "pre-ReLU ~ Poly2(lin, par): mean R²": (nf["pre_relu_poly2_r2"]["mean"], NOTEBOOK["pre_relu_poly2_mean_r2"],
                                                "R²"),
        "pre-ReLU ~ linear(lin, par): mean R²": (nf["pre_relu_linear_r2"]["mean"],
                                                 NOTEBOOK["pre_relu_linear_mean_r2"], "R²"),
        "pre-ReLU ~ symmetric Poly2(lin, par): mean R²": (nf["pre_relu_symmetric_poly2_r2"]["mean"],
                                                          NOTEBOOK["pre_relu_symmetric_mean_r2"], "R²"),
        "post-ReLU ~ Poly2(lin, par): mean R²": (nf["post_relu_poly2_r2"]["mean"],
                                                 NOTEBOOK["post_relu_poly2_mean_r2"], "R²"),
        "accuracy before the ablations": (pc2["accuracy_before"], NOTEBOOK["pc2_ablation_accuracy_before"],
                                          "accuracy"),
    }
    for label, ab in (("keep-linear ablation (by meaning)", fab), ("PC2 ablation by index (keep PC1)", pc2)):
        rows[f"{label}: accuracy after"] = (ab["accuracy_after"], NOTEBOOK["pc2_ablation_accuracy_after"], "accuracy")
        rows[f"{label}: max |prediction error|"] = (ab["max_abs_prediction_error"],
                                                    NOTEBOOK["pc2_ablation_max_abs_error"], "error")
        rows[f"{label}: ablated prediction ~ a+b, line R²"] = (
            ab["ablated_prediction_vs_sum_linear_fit"]["r2"], NOTEBOOK["ablated_prediction_linear_fit_r2"], "line R²")
    rows |= {
        "skip-connection ablation: accuracy after": (out["skip_ablation"]["accuracy_after"],
                                                     NOTEBOOK["skip_ablation_accuracy_after"], "accuracy"),
        "simulated logits W_L·ReLU(Poly2): R²": (sim["relu_of_poly2_pre_r2"],
                                                 NOTEBOOK["simulated_logits_relu_poly2_r2"], "R²"),
        "simulated logits W_L·Poly2(post): R²": (sim["poly2_of_post_r2"], NOTEBOOK["simulated_logits_poly2_post_r2"],
                                                 "R²"),
        "W_L columns: top-2 PC variance": (out["W_L_pca"]["top2_variance_ratio"],
                                           NOTEBOOK["W_L_top2_pc_variance_ratio"], "variance share"),
        "logit ~ Poly2(lin, par): mean R²": (out["logit_fits"]["mean_r2"], NOTEBOOK["logit_poly2_mean_r2"], "R²"),
        "logit ~ Poly2(lin, par): max R²": (out["logit_fits"]["max_r2"], NOTEBOOK["logit_poly2_max_r2"], "R²"),
    }
    return rows


def agrees(ours: float, notebook: float, kind: str) -> bool:
    """|ours − notebook| within AGREEMENT_TOLERANCE[kind] (relative for counts)."""
    tol = AGREEMENT_TOLERANCE[kind]
    return abs(float(ours) - notebook) <= (tol * notebook if kind == "count" else tol)


def comparison_numbers(out: dict) -> dict:
    """{quantity: {'ours', 'notebook', 'kind', 'agrees'}} (see `ours_vs_notebook`, `agrees`)."""
    return {k: {"ours": o, "notebook": nb, "kind": kind, "agrees": agrees(o, nb, kind)}
            for k, (o, nb, kind) in ours_vs_notebook(out).items()}


def comparison_section(out: dict, rep: Report) -> None:
    cmp = out["ours_vs_notebook"]
    same = [k for k, v in cmp.items() if v["agrees"]]
    differ = [k for k, v in cmp.items() if not v["agrees"]]
    sec = rep.section("Our numbers next to the notebook's")
    sec.text("The notebook's numbers come from its own training run (PyTorch init and data split, which we "
             "cannot reproduce bit for bit); ours from this run. A number agrees when it is within "
             + ", ".join(f"{v:g} ({k}{', relative' if k == 'count' else ''})" for k, v in
                         AGREEMENT_TOLERANCE.items())
             + f" of the notebook's. Agreeing here ({len(same)} of {len(cmp)}): " + ("; ".join(same) or "none")
             + f". Differing ({len(differ)}): " + ("; ".join(differ) or "none") + ".")
    sec.table(["quantity", "ours", "notebook", "agrees"],
              [[k, float(v["ours"]), v["notebook"], "yes" if v["agrees"] else "no"] for k, v in cmp.items()],
              caption="Ours vs the notebook")
    for line in _explain_differences(out):
        sec.text(line, note=True)


def analyze(run, rep: Report) -> dict:
    """All of study 3a on a trained run: each analysis's numbers, then its section."""
    g = grid_of(run)
    out: dict = {"embedding_pca": embedding_numbers(g)}
    embedding_section(out["embedding_pca"], g, rep)
    out["W_E_svd"] = w_e_svd_numbers(g)
    w_e_svd_section(out["W_E_svd"], rep)
    out["attention"] = attention_numbers(g)
    attention_section(out["attention"], g, rep)
    out["attention_to_equals"] = equals_attention_numbers(g)
    equals_attention_section(out["attention_to_equals"], out["attention"], rep)
    out["probe"], out["correlations"] = probe_numbers(g)
    probe_section(out["probe"], out["correlations"], g, rep)
    corr = sum_correlations(g)
    out["dead_neurons"] = dead_neuron_numbers(run, g)
    dead_neuron_section(out["dead_neurons"], rep)
    fits = neuron_fits(g)
    out["neuron_fits"] = neuron_fit_numbers(fits, int(out["correlations"]["top_neurons_by_abs_r"][0]))
    neuron_fit_section(out["neuron_fits"], fits, rep)
    out["coefficient_groups"] = coefficient_group_numbers(fits, corr)
    coefficient_group_section(out["coefficient_groups"], rep)
    abls = embedding_ablations(g)
    out["embedding_ablations"] = ablation_table_numbers(g, abls)
    ablation_table_section(out["embedding_ablations"], g, rep)
    by_meaning, by_index = abls[next(iter(abls))], abls["by index: keep PC1 only (the notebook's ablation as written)"]
    out["feature_ablation"] = ablation_detail_numbers(g, by_meaning)
    ablation_detail_section(out["feature_ablation"], g, by_meaning, rep,
                            "Keep-linear ablation (by meaning, the notebook's test)", "feature_ablation")
    out["pc2_ablation"] = ablation_detail_numbers(g, by_index)
    ablation_detail_section(out["pc2_ablation"], g, by_index, rep,
                            "PC2 ablation by index (keep PC1, the notebook's code)", "pc2_ablation")
    out["activation_deltas"] = activation_delta_numbers(g, by_meaning, corr)
    activation_delta_section(out["activation_deltas"], corr, rep)
    out["sum_fits"] = sum_fit_numbers(g, by_meaning)
    sum_fit_section(out["sum_fits"], rep)
    out["flips_at_0_0"] = flip_numbers(g, by_meaning)
    flip_section(out["flips_at_0_0"], rep)
    out["top_contributors_at_0_0"] = top_contributor_numbers(g, corr)
    top_contributor_section(out["top_contributors_at_0_0"], rep)
    out["skip_ablation"] = skip_ablation_numbers(g)
    skip_ablation_section(out["skip_ablation"], rep)
    sim_relu, sim_post = simulated_logits(g, fits)
    out["simulated_logits"] = simulation_numbers(g, sim_relu, sim_post)
    simulation_section(out["simulated_logits"], g, sim_relu, sim_post, rep)
    out["logit_fourier"] = logit_fourier_numbers(g)
    logit_fourier_section(out["logit_fourier"], g, rep)
    out["W_L_key_neurons"] = w_l_key_neuron_numbers(g, corr)
    w_l_key_neuron_section(out["W_L_key_neurons"], rep)
    out["W_L_column_dft"] = w_l_dft_numbers(g, fits.live_post)
    w_l_dft_section(out["W_L_column_dft"], rep)
    out["W_L_pca"] = w_l_pca_numbers(g, fits.live_post)
    w_l_pca_section(out["W_L_pca"], g, rep)
    out["logit_fits"] = logit_fit_numbers(g)
    logit_fit_section(out["logit_fits"], rep)
    out["ours_vs_notebook"] = comparison_numbers(out)
    comparison_section(out, rep)
    return out


def _explain_differences(out: dict) -> list[str]:
    """Why our numbers differ from the notebook's where they differ (text for the report), each
    reason a measured number of this run."""
    e, lines = out["embedding_pca"], []
    fp, fr = e["feature_pc"], e["feature_pc_r2"]
    ratio = e["explained_variance_ratio"]
    if fp["linear"] != "PC1" or fp["parabola"] != "PC2":
        lines.append(
            f"Embedding: the notebook's run had the linear feature on PC1 (73% of the variance) and the parabola "
            f"on PC2 (25%). Here the linear feature is {fp['linear']} (R² {float(fr['linear']):.3f}), the parabola "
            f"{fp['parabola']} (R² {float(fr['parabola']):.3f}) and parity {fp['parity']} (R² "
            f"{float(fr['parity']):.3f}); variance shares {', '.join(f'{float(v):.1%}' for v in ratio[:4])}. Which "
            f"features an embedding uses, and in which order of variance, is decided by the run's initialisation "
            f"and data split (the notebook's torch seeds cannot be reproduced here). The fits and the by-meaning "
            f"ablation therefore use the linear and parabola PCs, not PC1 and PC2.")
    fab, pc2 = out["feature_ablation"], out["pc2_ablation"]
    table = out["embedding_ablations"]
    acc = float(fab["accuracy_after"])
    verdict = ("so here too the linear feature alone is not enough to add" if acc < 0.9 else
               "so, unlike the notebook's, this model adds nearly correctly from the linear feature alone")
    lines.append(
        f"Ablations: keeping only the mean and the linear PC ({fp['linear']}) of each digit leaves accuracy "
        f"{acc:.2f} (notebook, whose PC1 was linear: 0.42; largest error here {fab['max_abs_prediction_error']}, "
        f"notebook 3), {verdict}. Keeping PC1 by index leaves {float(pc2['accuracy_after']):.2f}. Every ablation: "
        + "; ".join(f"{k}: {v['accuracy']:.2f}" for k, v in table.items()) + ".")
    names = list(table)  # ablation_plan's order: keep linear, remove parabola, keep linear + parity, ...
    no_parabola, lin_parity = table[names[1]]["accuracy"], table[names[2]]["accuracy"]
    if no_parabola >= 0.9 and lin_parity >= 0.9:
        lines.append(
            f"Which second feature the model needs: removing only the parabola PC ({fp['parabola']}) leaves "
            f"{no_parabola:.2f}, and the linear and parity PCs alone leave {lin_parity:.2f}. So this model does not "
            f"need the parabola: with the linear feature, parity suffices. The notebook's finding 'PC2 is causally "
            f"needed' holds here for parity ({fp['parity']}), not for the parabola; the neuron fits agree (below).")
    elif no_parabola < 0.9:
        lines.append(f"Which second feature the model needs: removing only the parabola PC ({fp['parabola']}) "
                     f"leaves {no_parabola:.2f}, so, as in the notebook, the parabola is needed.")
    c = out["correlations"]
    if c["neurons_with_r_above_0.9"] < NOTEBOOK["neurons_with_sum_correlation_above_0.9"] / 2:
        lines.append(
            f"Neuron-sum correlations: {c['neurons_with_r_above_0.9']} neurons exceed r = 0.9 here (notebook: more "
            f"than 130), with {out['dead_neurons']['dead_neurons']} of {out['dead_neurons']['neurons']} neurons "
            f"dead; the sum is still linearly decodable from the whole layer (probe R² "
            f"{float(out['probe']['mlp_post_to_sum_heldout_r2']):.3f}).")
    nf = out["neuron_fits"]
    sym, sym8 = float(nf["pre_relu_symmetric_poly2_r2"]["mean"]), float(nf["pre_relu_all_symmetric_degree2_terms_r2"]["mean"])
    if abs(sym - NOTEBOOK["pre_relu_symmetric_mean_r2"]) > AGREEMENT_TOLERANCE["R²"]:
        lines.append(
            f"Symmetric fit: the notebook's five features of the sums s1 = lin(a)+lin(b), s2 = par(a)+par(b) "
            f"(s1, s2, s1², s2², s1·s2) reach mean R² {sym:.3f} here (notebook 0.98); all eight symmetric "
            f"degree-2 terms (which also free lin(a)² + lin(b)² from lin(a)·lin(b)) reach {sym8:.3f} and the full "
            f"degree-2 fit {float(nf['pre_relu_poly2_r2']['mean']):.3f}.")
    by_index = float(nf["pre_relu_poly2_on_pc1_pc2_by_index_r2"]["mean"])
    lines.append(f"Features of the fits: the degree-2 fit of the pre-activations on the linear and parabola PCs (the "
                 f"notebook's features by meaning) has mean R² {float(nf['pre_relu_poly2_r2']['mean']):.3f} "
                 f"(notebook 0.998); on PC1 and PC2 by index ({', '.join(f for f, pc in fp.items() if pc in ('PC1', 'PC2'))} here) "
                 f"{by_index:.3f}.")
    w = out["W_L_pca"]
    alt = {pc: float(v["alternating (-1)^k"]) for pc, v in w["abs_cosine_of_pcs_with_sinusoids"].items()}
    pc_alt = max(alt, key=alt.get)
    lines.append(
        f"W_L: its top two PCs hold {float(w['top2_variance_ratio']):.1%} of the variance of all 512 columns "
        f"(notebook 98.3%) and {float(w['top2_variance_ratio_live_neurons']):.1%} over the "
        f"{w['live_neurons']} live neurons' columns alone, so dead neurons do not explain the gap. {pc_alt} of "
        f"W_L ({float(w['explained_variance_ratio'][int(pc_alt[2:]) - 1]):.1%} of the variance) has |cos| "
        f"{alt[pc_alt]:.2f} with the alternating pattern (-1)^k over the logits, the readout of the sum's parity; "
        f"{int(out['W_L_column_dft']['neurons_peaking_at_frequency'][-1])} live neurons' W_L columns peak at that "
        f"frequency (index {len(out['W_L_column_dft']['neurons_peaking_at_frequency']) - 1}).")
    lf = out["logit_fits"]
    lines.append(
        "Per-logit fits: the worst-fitted logits are " + ", ".join(
            f"{int(k)} (R² {float(r):.3f}, the answer for {int(n)} of the 100 inputs)" for k, r, n in zip(
                lf["worst_logits"], lf["worst_logits_r2"], lf["worst_logits_inputs_with_that_answer"]))
        + "; the notebook printed only the mean (0.975) and the best (0.9906).")
    return lines

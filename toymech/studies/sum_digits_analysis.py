"""Study 4 analyses: how a 2-layer attention-only model adds two 4-digit numbers.

Every function works on a processed model (`toymech.weights.process_weights`:
LayerNorm folded, writing weights and W_U centred, value biases folded) and
the evaluation sequences; `analyze` runs them all and writes the report
sections. The numbers go to results.json under the same names.

  unembed_structure   W_U over the ten digits: the significant residual
                      dimensions, its rfft over digits (one dominant frequency,
                      2π/10), their phases, W_UᵀW_U and its phases, the SVD and
                      the digits on the top two singular directions (a circle)
  ablation_scores     loss and correctness of each sum digit of each sequence
                      with each head (z) or each head's Q/K/V zero- or
                      mean-ablated: one compiled sweep per kind
                      (`toymech.analysis.sweeps`), summarised overall, per digit
                      and per carry split; `qkv_on_subsets` repeats the Q/K/V
                      ones on the carry / no-carry sequences alone (the
                      notebook's method: means over the subset)
  layer0_qk           layer-0 attention scores of the mean queries against the
                      positional embeddings and the tokens, the attention that
                      position alone gives, and the "corresponding digit" mass
  logit_attribution   direct logit attribution of embed, pos_embed and each
                      head, and of each path layer-0 component -> layer-1 head,
                      to the correct digit; also read in Fourier space (the
                      frequency-1 coefficient of each component's digit logits,
                      projected on the correct digit's phase)
  layer1_ov           W_E OV0[h0] OV1[h1] W_U on single digits and on summed
                      digit pairs, and the phases of their frequency-1 parts
  carry_attention     layer-1 attention from each output position, split by
                      whether that digit receives a carry

Phase convention. A logit vector over the digits peaked at digit d,
l_j ∝ cos(2π(j - d)/10), has rfft bin 1 ∝ exp(-2πi d/10): its phase is
-2πd/10. `digit_phase(d)` gives it and `decode_phase` inverts it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toymech as tm
from toymech import plots
from toymech.analysis import attribution, circuits, fourier, linalg, sweeps, views
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.tasks import sum_digits as sd

N_DIGIT_TOKENS = 10
DIGIT_LABELS = [str(d) for d in range(N_DIGIT_TOKENS)]
OUT_LABELS = [f"c{i + 1}" for i in range(sd.N_DIGITS)]  # the sum's digits, most significant first
QKV = ("q", "k", "v")

# The notebook's findings (seeds/003), as text, to set beside ours.
NOTEBOOK_FINDINGS = {
    "significant W_U dimensions": "19, 25, 26, 37",
    "W_U dominant frequency": "2π/10 (bin 1) in every significant dimension",
    "most critical heads (mean ablation)": "H0.1 and H0.2; H0.0 the least",
    "layer-0 queries": "mean-ablating them does not change the loss",
    "corresponding-digit heads": "H0.0: c1; H0.1: c1, c3, c4; H0.2: c2, c3, c4",
    "layer-1 keys on non-carry sequences": "mean-ablating them does not change the loss",
    "layer-1 OV on digit pairs": "H0.0 -> H1.*: every pair to a similar direction; H0.1 -> H1.*: three clusters "
                                 "(both digits < 5, one, none); H0.2 -> H1.*: the most expressive",
    "carry counts (c_i != a_i + b_i) in the 1,000 sequences": "any 826, none 174, c1 515, c2 715, c3 689",
}


def head_labels(cfg: ModelConfig, layers=None) -> list[str]:
    """'H{layer}.{head}' for every head of `layers` (default all)."""
    layers = range(cfg.n_layers) if layers is None else layers
    return [f"H{l}.{h}" for l in layers for h in range(cfg.n_heads)]


def wrap_angle(x):
    """Angles mapped to [-π, π)."""
    return (np.asarray(x) + np.pi) % (2 * np.pi) - np.pi


def digit_phase(d):
    """The rfft bin-1 phase of a logit vector peaked at digit d: -2πd/10 (wrapped)."""
    return wrap_angle(-2 * np.pi * np.asarray(d) / N_DIGIT_TOKENS)


def decode_phase(phase):
    """The digit whose `digit_phase` is nearest to `phase`."""
    return np.rint(-np.asarray(phase) * N_DIGIT_TOKENS / (2 * np.pi)).astype(int) % N_DIGIT_TOKENS


def _cyclic_steps(angles) -> np.ndarray:
    """Wrapped differences angle[i+1] - angle[i] around the cycle (last -> first): [n]."""
    angles = np.asarray(angles)
    return wrap_angle(np.roll(angles, -1, axis=-1) - angles)


def _freq1(x, axis=-1) -> np.ndarray:
    """rfft bin 1 (complex) of x along `axis` (host-side numpy)."""
    return np.fft.rfft(np.asarray(x, np.float64), axis=axis).take(1, axis=axis)


# Host-side statistics run as compiled programs (one compilation per input shape,
# instead of one per eager jnp operation).
_split_stats = jax.jit(views.split_stats, static_argnames="ddof")
_attention_stats = jax.jit(views.attention_stats, static_argnames=("query_pos", "ddof"))


def capture_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """What `analyze` captures: the attribution sites plus the layer-0 queries."""
    return attribution.capture_sites(cfg) + (tm.get_act_name("q", 0),)


# =============================================================================== W_U


@jax.jit
def _unembed_arrays(W):
    """rfft magnitude and phase over digits [d, 6] each, SVD u [d, 10] and s
    [10], and each row's variance kept by its top frequency [d], of W [d, 10]."""
    mag, phase = fourier.rfft_magnitude_phase(W, axis=1)
    svd = linalg.svd(W)
    return mag, phase, svd.u, svd.s, fourier.rfft_top_k(W, 1, axis=1).variance_explained


def unembed_structure(params: dict, significant_fraction: float) -> dict:
    """W_U restricted to the digit logits, W [d_model, 10], read as angles.

    significant dims: rows whose variation over the digits (norm after removing
      the row mean) is >= `significant_fraction` of the largest;
    rfft over digits: magnitude/phase [d_model, 6]; the share of the
      non-constant power at each frequency 1..5, overall and per significant dim;
    W_UᵀW_U [10, 10], and the bin-1 phase of each of its rows (one per digit)
      with the steps between consecutive digits;
    SVD W = U S Vᵀ: singular values, the share of ||W||² in the top two, the
      top two left singular vectors [d_model, 2], and each digit's coordinates
      on them [10, 2] with their radii and the angle steps between digits.
    """
    W = np.asarray(params["unembed"]["W_U"])[:, :N_DIGIT_TOKENS]  # [d, 10]
    mag, phase, u, s, top1 = map(np.asarray, _unembed_arrays(jnp.asarray(W)))
    varying = np.linalg.norm(W - W.mean(1, keepdims=True), axis=1)  # [d]
    sig = np.flatnonzero(varying >= significant_fraction * varying.max())
    power = mag[:, 1:] ** 2  # [d, 5]
    gram = W.T @ W  # [10, 10]
    gram_phase = np.angle(_freq1(gram, axis=1))  # [10]
    coords = W.T @ u[:, :2]  # [10, 2]
    angles = np.arctan2(coords[:, 1], coords[:, 0])
    radius = np.linalg.norm(coords, axis=1)
    return {
        "W_U_digits": W,
        "significant_dims": sig,
        "row_variation_norm": varying,
        "rfft_magnitude": mag,
        "rfft_phase": phase,
        "power_fraction_by_frequency": power.sum(0) / power.sum(),
        "significant_dims_power_fraction_frequency_1": power[sig, 0] / power[sig].sum(1),
        "significant_dims_dominant_frequency": 1 + np.argmax(power[sig], axis=1),
        "significant_dims_frequency_1_phase": phase[sig, 1],
        "significant_dims_frequency_1_magnitude": mag[sig, 1],
        "significant_dims_variance_explained_by_top_frequency": top1[sig],
        "gram": gram,
        "gram_frequency_1_phase": gram_phase,
        "gram_phase_steps": _cyclic_steps(gram_phase),
        "singular_values": s,
        "top2_singular_fraction": float((s[:2] ** 2).sum() / (s ** 2).sum()),
        "top2_left_singular_vectors": u[:, :2],
        "digit_coordinates": coords,
        "digit_radius": radius,
        "digit_radius_cv": float(radius.std() / radius.mean()),
        "digit_angle_steps": _cyclic_steps(angles),
    }


def _complex_scatter(path, z, labels, title, xlabel="Re (cos part)", ylabel="Im (sin part)"):
    z = np.asarray(z)
    return plots.scatter(path, z.real, z.imag, annotate=labels, title=title, xlabel=xlabel, ylabel=ylabel,
                         equal_aspect=True)


def unembed_section(u: dict, rep: Report) -> dict:
    """Figures and table of `unembed_structure`; returns its numbers for results.json."""
    sec = rep.section("The unembedding: digits as angles")
    sig = [int(d) for d in u["significant_dims"]]
    W = u["W_U_digits"]
    digit_ticks = (list(range(N_DIGIT_TOKENS)), DIGIT_LABELS)
    sec.figure("W_U", plots.heatmap, f"W_U over the ten digit logits: only dimensions {sig} vary over the digits, each "
               "like a cosine of the digit.",
               W, center=True, title="W_U (digit logits)", xlabel="digit", ylabel="d_model", xticks=digit_ticks,
               origin_lower=False, width=5, height=6)
    sec.figure("W_U_rfft_magnitude", plots.heatmap,
               "Magnitude of the rfft over digits of each significant W_U row: bin 1 "
               "(frequency 2π/10) dominates.",
               u["rfft_magnitude"][sig], annotate=True, title="|rfft of W_U rows over digits|",
               xlabel="frequency bin (k · 2π/10)", ylabel="dimension",
               yticks=(list(range(len(sig))), [f"dim {d}" for d in sig]), origin_lower=False, width=6, height=3.5)
    z = u["significant_dims_frequency_1_magnitude"] * np.exp(1j * u["significant_dims_frequency_1_phase"])
    sec.figure("W_U_phases", _complex_scatter,
               "Bin-1 coefficient of each significant dimension in the complex plane: the angle is "
               "the dimension's phase, the radius its amplitude.",
               z, [f"dim {d}" for d in sig], "Frequency-1 coefficient of each significant W_U row")
    sec.figure("W_U_gram", plots.heatmap,
               "Dot products between the digit directions of W_U: each digit is closest to itself, "
               "then to its neighbours, on a cycle of ten.",
               u["gram"], center=True, title="W_Uᵀ W_U (digits)", xlabel="digit", ylabel="digit", xticks=digit_ticks,
               yticks=digit_ticks, origin_lower=False)
    gram_z = np.exp(1j * u["gram_frequency_1_phase"])
    sec.figure("W_U_gram_phases", _complex_scatter,
               "Each digit as the bin-1 phase of its row of W_UᵀW_U (unit radius): the digits go "
               "round the circle in order.",
               gram_z, DIGIT_LABELS, "Phase of bin 1 of each row of W_UᵀW_U")
    sec.figure("W_U_singular_values", plots.bars,
               f"Singular values of W_U: the top two hold {u['top2_singular_fraction']:.1%} of "
               "its squared norm.",
               list(range(1, len(u["singular_values"]) + 1)), u["singular_values"],
               title="Singular values of W_U (digits)", xlabel="index", ylabel="value")
    top2 = u["top2_left_singular_vectors"]
    x = np.arange(len(top2))
    sec.figure("W_U_singular_vectors", plots.curves,
               "The top two singular directions of W_U live on the significant dimensions.",
               {"u1": (x, top2[:, 0]), "u2": (x, top2[:, 1])}, title="Top two left singular vectors of W_U",
               xlabel="d_model", ylabel="value", markers=True)
    c = u["digit_coordinates"]
    sec.figure("W_U_digit_circle", plots.scatter,
               "Each digit's column of W_U projected on the top two singular directions: a circle, "
               "digits in order.",
               c[:, 0], c[:, 1], annotate=DIGIT_LABELS, title="Digit directions on the top two singular directions",
               xlabel="u1", ylabel="u2", equal_aspect=True)
    steps = np.degrees(u["digit_angle_steps"])
    sec.key_values({
        "significant dimensions (variation over digits >= fraction of the largest)": sig,
        "share of W_U's non-constant power at frequency 1 (2π/10)": float(u["power_fraction_by_frequency"][0]),
        "dominant frequency of each significant dimension": u["significant_dims_dominant_frequency"].tolist(),
        "phase of each significant dimension (rad)": np.round(u["significant_dims_frequency_1_phase"], 3).tolist(),
        "share of the top two singular values in ||W_U||²": u["top2_singular_fraction"],
        "digit circle: radius std / mean": u["digit_radius_cv"],
        "digit circle: angle step between consecutive digits (deg), mean ± std":
            f"{steps.mean():.1f} ± {steps.std():.1f} (a regular 10-gon: ±36)",
        "W_UᵀW_U phase step between consecutive digits (deg), mean ± std":
            f"{np.degrees(u['gram_phase_steps']).mean():.1f} ± {np.degrees(u['gram_phase_steps']).std():.1f}",
    }, caption="W_U in numbers")
    keep = ("significant_dims", "power_fraction_by_frequency", "significant_dims_power_fraction_frequency_1",
            "significant_dims_dominant_frequency", "significant_dims_frequency_1_phase",
            "significant_dims_frequency_1_magnitude", "significant_dims_variance_explained_by_top_frequency",
            "gram_frequency_1_phase", "gram_phase_steps", "singular_values", "top2_singular_fraction",
            "digit_coordinates", "digit_radius", "digit_radius_cv", "digit_angle_steps")
    return {k: u[k] for k in keep}


# =============================================================================== ablations


def ablation_scores(cfg: ModelConfig, params: dict, tokens, *, site, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(values [*targets, batch, 4, 2], baseline [batch, 4, 2]): per sequence and
    sum digit, (loss, correct) with each target ablated, from one compiled
    `ablation_sweep` (targets [n_layers, n_heads], with a leading [3] for
    site=('q', 'k', 'v')). Mean ablation uses the mean over `tokens`."""
    metric = sweeps.Metric(sd.token_scores, (jnp.asarray(tokens),))
    r = sweeps.ablation_sweep(cfg, params, tokens, metric, site=site, kind=kind)
    return np.asarray(r.values), np.asarray(r.baseline)


def _split_means(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Means of x [..., batch] over the examples where mask [batch] is True and
    where it is False: [2, ...] (NaN for an empty group)."""
    return np.asarray(_split_stats(np.moveaxis(x, -1, 0), mask).mean)


def summarize_ablation(values: np.ndarray, baseline: np.ndarray, carry: np.ndarray) -> dict:
    """Loss increase and accuracy after ablation, overall, per digit, and per
    digit split by carry-in (index 0: the digit receives a carry, 1: it does
    not) and by whether the sequence has any carry (same order).

    values [*targets, b, 4, 2], baseline [b, 4, 2] (from `ablation_scores`),
    carry bool [b, 4] (`sd.carry_in`).
    """
    loss, correct = values[..., 0], values[..., 1]  # [*t, b, 4]
    base_loss, base_correct = baseline[..., 0], baseline[..., 1]
    per_digit_carry = np.stack([_split_means(loss[..., i] - base_loss[:, i], carry[:, i])
                                for i in range(sd.N_DIGITS)], axis=-1)  # [2, *t, 4]
    any_carry = carry.any(1)
    return {
        "baseline_loss": float(base_loss.mean()),
        "baseline_accuracy": float(base_correct.mean()),
        "loss_increase": loss.mean((-2, -1)) - base_loss.mean(),
        "accuracy": correct.mean((-2, -1)),
        "loss_increase_per_digit": loss.mean(-2) - base_loss.mean(0),
        "accuracy_per_digit": correct.mean(-2),
        "loss_increase_per_digit_carry_split": np.moveaxis(per_digit_carry, 0, -2),  # [*t, 2, 4]
        "loss_increase_sequence_carry_split": np.moveaxis(
            _split_means((loss - base_loss).mean(-1), any_carry), 0, -1),  # [*t, 2]
        "carry_split_order": ["carry", "no carry"],
    }


def ablation_section(cfg: ModelConfig, heads: dict, qkv: dict, subsets: dict, rep: Report) -> None:
    """Figures and tables of the head ({'zero', 'mean'}) and Q/K/V summaries (`summarize_ablation`), and of
    the Q/K/V ablations on carry subsets (`qkv_on_subsets`)."""
    labels = head_labels(cfg)
    sec = rep.section("Head ablations")
    layer_ticks = (list(range(cfg.n_layers)), [f"layer {l}" for l in range(cfg.n_layers)])
    head_ticks = (list(range(cfg.n_heads)), [str(h) for h in range(cfg.n_heads)])
    sec.figure("head_ablation", plots.heatmaps,
               "Mean cross-entropy increase over the four sum digits when each head's output is "
               "zeroed or replaced by its mean over the sequences (at each position).",
               [heads["zero"]["loss_increase"], heads["mean"]["loss_increase"]], ["zero ablation", "mean ablation"],
               suptitle="Loss increase when one head is ablated", xlabel="head", ylabel="layer", annotate=True,
               xticks=head_ticks, yticks=layer_ticks)
    x = np.arange(sd.N_DIGITS)
    panels = [{lab: heads[kind]["loss_increase_per_digit"].reshape(-1, sd.N_DIGITS)[i]
               for i, lab in enumerate(labels)} for kind in ("zero", "mean")]
    sec.figure("head_ablation_per_digit", plots.line_panels,
               "Loss increase per sum digit (c1 = thousands ... c4 = units) for each ablated head.",
               x, panels, ["zero ablation", "mean ablation"], xlabel="sum digit (0 = c1, thousands)",
               ylabel="loss increase")
    rows = []
    for kind in ("zero", "mean"):
        inc, acc = heads[kind]["loss_increase"].reshape(-1), heads[kind]["accuracy"].reshape(-1)
        rows += [[kind, lab, float(inc[i]), float(acc[i])] for i, lab in enumerate(labels)]
    sec.table(["ablation", "head", "loss increase", "per-digit accuracy after"], rows,
              caption=f"Head ablations (unablated: loss {heads['mean']['baseline_loss']:.4f}, "
                      f"accuracy {heads['mean']['baseline_accuracy']:.4f})")

    sec = rep.section("Q/K/V ablations")
    m = qkv["loss_increase"].reshape(len(QKV), -1)  # [3, layers * heads]
    sec.figure("qkv_ablation", plots.heatmap,
               "Loss increase when one head's queries, keys or values are replaced by their mean "
               "over the sequences (at each position).",
               m, annotate=True, title="Loss increase, mean-ablated Q/K/V", xlabel="head", ylabel="activation",
               xticks=(list(range(len(labels))), labels), yticks=(list(range(len(QKV))), [s.upper() for s in QKV]),
               origin_lower=False, height=3.5)
    split = qkv["loss_increase_sequence_carry_split"].reshape(len(QKV), -1, 2)  # [3, heads, 2]
    panels = [split[..., 0], split[..., 1]]
    titles = ["carry; mean over all", "no carry; mean over all"]
    for name, values in subsets.items():
        if values is not None:
            panels.append(values.reshape(len(QKV), -1))
            titles.append(f"{name}; mean over them")
    sec.figure("qkv_ablation_carry_split", plots.heatmaps,
               "Q/K/V mean ablations scored on sequences where some digit receives a carry and on "
               "those where none does; top: the mean replacing an activation is over all sequences; "
               "bottom (the notebook's method): over the scored sequences only.",
               panels, titles, suptitle="Loss increase, mean-ablated Q/K/V, on sequences with and without a carry",
               xlabel="head", ylabel="activation", annotate=True, xticks=(list(range(len(labels))), labels),
               yticks=(list(range(len(QKV))), [s.upper() for s in QKV]), ncols=2, panel=4.5)


def qkv_on_subsets(cfg: ModelConfig, params: dict, tokens: np.ndarray, carry: np.ndarray) -> dict:
    """The notebook's Q/K/V mean ablations by carry: run separately on the
    sequences with any carry and on those without, each mean taken over that
    subset. {'carry': loss increase [3, n_layers, n_heads], 'no carry': ...};
    None for a subset of fewer than two sequences."""
    any_carry = carry.any(1)
    out = {}
    for name, mask in (("carry", any_carry), ("no carry", ~any_carry)):
        if mask.sum() < 2:
            out[name] = None
            continue
        values, base = ablation_scores(cfg, params, tokens[mask], site=QKV, kind="mean")
        out[name] = values[..., 0].mean((-2, -1)) - base[..., 0].mean()
    return out


# =============================================================================== layer-0 QK


@functools.partial(jax.jit, static_argnums=0)
def _layer0_qk_arrays(cfg: ModelConfig, params: dict, acts: dict):
    """(scores [h, 14, 14 + d_vocab] of the mean queries against W_pos and W_E,
    positional pattern [h, 14, 14]): see `layer0_qk`."""
    mean_q = acts[tm.get_act_name("q", 0)].mean(0)  # [p, h, e]
    scale = acts["blocks.0.ln1.hook_scale"].mean(0)  # [p, 1]
    W_pos, W_E = params["pos_embed"]["W_pos"], params["embed"]["W_E"]
    center = lambda x: x - x.mean(-1, keepdims=True)
    full = circuits.qk_scores(cfg, params, 0, mean_q, center(jnp.concatenate([W_pos, W_E])) / scale.mean())
    mean_resid = center(W_pos + acts["hook_embed"].mean(0)) / scale  # [p, d]
    scores = circuits.qk_scores(cfg, params, 0, mean_q, mean_resid)  # [h, q, k]
    causal = jnp.tril(jnp.ones(scores.shape[-2:], bool))
    return full, jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)


def layer0_qk(cfg: ModelConfig, params: dict, acts: dict, threshold: float) -> dict:
    """Layer-0 attention with the mean queries (they barely depend on the input).

    full_scores [h, 14, 14 + d_vocab]: mean hook_q against W_pos and W_E,
      divided by the mean ln1 scale (query-key pairs a causal model cannot form
      are NaN);
    positional_pattern [h, 14, 14]: softmax over the causal keys of the mean
      queries against the mean residual at each position (W_pos plus the
      average token embedding there, centred and divided by the mean ln1 scale
      there) -- the attention that position alone gives;
    mean_pattern [h, 14, 14]: the model's actual attention, averaged;
    corresponding_digit_mass [h, 4]: attention from the position predicting
      c_i (9 + i) to a_i and b_i (positions i and 5 + i), positional pattern;
    next_digit_mass [h, 3]: the same to a_{i+1} and b_{i+1} (the digits a
      carry into c_i comes from);
    corresponding_digit_heads: for each head, the digits whose mass is >=
      `threshold`.
    """
    full, pattern = map(np.array, _layer0_qk_arrays(cfg, params, acts))
    n = sd.SEQ_LEN
    full[:, :, :n] = np.where(np.tril(np.ones((n, n), bool)), full[:, :, :n], np.nan)
    q = sd.OUTPUT_POSITIONS
    cd = pattern[:, q, sd.A_POSITIONS] + pattern[:, q, sd.B_POSITIONS]  # [h, 4]
    nxt = pattern[:, q[:-1], sd.A_POSITIONS[1:]] + pattern[:, q[:-1], sd.B_POSITIONS[1:]]  # [h, 3]
    mean_pattern = np.asarray(acts["blocks.0.attn.hook_pattern"].mean(0))
    rows = slice(sd.OUTPUT_POSITIONS[0], sd.OUTPUT_POSITIONS[-1] + 1)
    return {
        "full_scores": full,
        "positional_pattern": pattern,
        "mean_pattern": mean_pattern,
        "positional_vs_mean_pattern_max_abs_diff_at_outputs": float(
            np.abs(pattern[:, rows] - mean_pattern[:, rows]).max()),
        "corresponding_digit_mass": cd,
        "corresponding_digit_mass_mean_pattern": mean_pattern[:, q, sd.A_POSITIONS]
                                                 + mean_pattern[:, q, sd.B_POSITIONS],
        "next_digit_mass": nxt,
        "corresponding_digit_heads": {f"H0.{h}": [OUT_LABELS[i] for i in np.flatnonzero(cd[h] >= threshold)]
                                      for h in range(cfg.n_heads)},
        "threshold": threshold,
    }


def qk_section(cfg: ModelConfig, qk: dict, rep: Report) -> None:
    """Figures and tables of `layer0_qk`."""
    sec = rep.section("Layer-0 QK circuits")
    n = sd.SEQ_LEN
    titles = [f"H0.{h}" for h in range(cfg.n_heads)]
    pos_ticks = (list(range(n)), [str(p) for p in range(n)])
    key_ticks = (list(range(n + sd.D_VOCAB)), [f"p{p}" for p in range(n)] + list(sd.VOCAB))
    sec.figure("qk_layer0_full", plots.heatmaps,
               "Attention scores of the mean layer-0 query at each position against each positional "
               "embedding and each token embedding (scaled by the mean LayerNorm scale); blank: "
               "keys after the query.",
               list(qk["full_scores"]), titles, center=True,
               suptitle="Layer-0 scores: mean queries vs positions (p0..p13) and tokens",
               xlabel="key: position embedding | token embedding", ylabel="query position", xticks=key_ticks,
               yticks=pos_ticks, ncols=1, panel=5.5)
    sec.figure("qk_layer0_positional", plots.heatmaps,
               "Softmax of the mean queries against the mean residual at each position: position "
               "alone makes the output positions 9..12 attend to the corresponding digits of a and b.",
               list(qk["positional_pattern"]), titles, vmin=0, vmax=1,
               suptitle="Layer-0 attention given by position alone", xlabel="key position", ylabel="query position",
               xticks=pos_ticks, yticks=pos_ticks, ncols=3, panel=4.2)
    sec.figure("qk_layer0_mean_pattern", plots.heatmaps,
               "The model's actual layer-0 attention averaged over the evaluation sequences, to "
               "compare with the positional prediction above.",
               list(qk["mean_pattern"]), titles, vmin=0, vmax=1, suptitle="Layer-0 attention, mean over the sequences",
               xlabel="key position", ylabel="query position", xticks=pos_ticks, yticks=pos_ticks, ncols=3, panel=4.2)
    rows = [[f"H0.{h}"] + [float(v) for v in qk["corresponding_digit_mass"][h]]
            + [", ".join(qk["corresponding_digit_heads"][f"H0.{h}"]) or "none"] for h in range(cfg.n_heads)]
    sec.table(["head"] + [f"{c}: to a_i, b_i" for c in OUT_LABELS] + [f"digits with mass >= {qk['threshold']}"],
              rows, caption="Corresponding-digit attention (positional pattern) from the position predicting each "
                            "sum digit")
    rows = [[f"H0.{h}"] + [float(v) for v in qk["next_digit_mass"][h]] for h in range(cfg.n_heads)]
    sec.table(["head"] + [f"{c}: to a_(i+1), b_(i+1)" for c in OUT_LABELS[:-1]], rows,
              caption="Attention to the next digits to the right (where a carry comes from)")
    sec.text(f"Largest difference between the positional and the mean actual attention at the output positions: "
             f"{qk['positional_vs_mean_pattern_max_abs_diff_at_outputs']:.3f}.")


# =============================================================================== DLA


def _correct_fourier(dla_digits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The frequency-1 coefficient of each digit-logit vector, rotated so that
    the correct digit's phase is 0: [..., b, 4] complex (real part > 0: pushes
    toward the correct digit). dla_digits [..., b, 4, 10], targets [b, 4]."""
    return _freq1(dla_digits) * np.exp(-1j * digit_phase(targets))


@functools.partial(jax.jit, static_argnums=0)
def _dla_stacks(cfg: ModelConfig, params: dict, acts: dict):
    """DLA [n, b, 4, v] at the output positions of the simple and of the path
    decomposition (see `logit_attribution`), as ResidStacks."""
    simple = attribution.decompose_resid(cfg, params, acts, None, by_head=True)
    source = attribution.decompose_resid(cfg, params, acts, 1, by_head=True)
    paths = attribution.path_stack(cfg, params, acts, source, 1)
    both = attribution.ResidStack(jnp.concatenate([source.stack, paths.stack]), source.labels + paths.labels)
    dla = lambda stack: attribution.ResidStack(
        attribution.direct_logit_attribution(cfg, params, acts, stack)[:, :, sd.OUTPUT_POSITIONS], stack.labels)
    return dla(simple), dla(both)


def logit_attribution(cfg: ModelConfig, params: dict, acts: dict, logits, tokens) -> dict:
    """Direct logit attribution to the correct sum digit at the output positions.

    simple: components embed, pos_embed, each head (L{l}H{h}) and the summed
      b_O of the final residual (`decompose_resid(..., by_head=True)`);
    paths: the layer-1 input's components (embed, pos_embed, L0H*, b_O) with
      their direct effect, then each one's path through each layer-1 head
      (`path_stack`), labels '{source}->L1H{h}'.
    For each: correct-digit DLA mean and std over sequences [n, 4]; in Fourier
    space, the frequency-1 coefficient of the component's ten digit logits,
    rotated by the correct digit's phase: mean real part ("aligned", pushes
    toward the correct digit), mean magnitude, and their ratio [n, 4].
    Also: the share of (sequence, digit) pairs whose total digit logits'
    bin-1 phase decodes to the correct digit.
    """
    targets = np.asarray(tokens)[:, sd.TARGET_POSITIONS]  # [b, 4]
    out = {}
    for name, dla in zip(("simple", "paths"), _dla_stacks(cfg, params, acts)):
        labels, dla = dla.labels, np.asarray(dla.stack)  # [n, b, 4, v]
        index = np.broadcast_to(targets[None, :, :, None], dla.shape[:-1] + (1,))
        correct = np.take_along_axis(dla, index, axis=-1)[..., 0]  # [n, b, 4]
        z = _correct_fourier(dla[..., :N_DIGIT_TOKENS], targets)  # [n, b, 4]
        out[name] = {
            "labels": list(labels),
            "correct_dla_mean": correct.mean(1), "correct_dla_std": correct.std(1, ddof=1),
            "fourier_aligned_mean": z.real.mean(1), "fourier_magnitude_mean": np.abs(z).mean(1),
            "fourier_alignment": z.real.mean(1) / np.abs(z).mean(1),
        }
    digit_logits = np.asarray(logits)[:, sd.OUTPUT_POSITIONS, :N_DIGIT_TOKENS]  # [b, 4, 10]
    decoded = decode_phase(np.angle(_freq1(digit_logits)))
    out["frequency_1_decode_accuracy"] = float((decoded == targets).mean())
    out["frequency_1_decode_accuracy_per_digit"] = (decoded == targets).mean(0)
    out["logits_rotated_frequency_1"] = _correct_fourier(digit_logits, targets)  # [b, 4] (for the figure)
    return out


def dla_section(dla: dict, rep: Report) -> dict:
    """Figures of `logit_attribution`; returns its numbers for results.json."""
    sec = rep.section("Direct logit attribution")
    s, p = dla["simple"], dla["paths"]
    sec.figure("dla_simple", plots.bars,
               "Mean direct contribution of each component to the correct sum digit's logit, per "
               "digit: the layer-1 heads write most of it.",
               s["labels"], {c: s["correct_dla_mean"][:, i] for i, c in enumerate(OUT_LABELS)},
               title="Direct logit attribution to the correct digit (mean)", xlabel="component", ylabel="logit")
    sec.figure("dla_simple_std", plots.bars, "Standard deviation over sequences of the same attributions.",
               s["labels"], {c: s["correct_dla_std"][:, i] for i, c in enumerate(OUT_LABELS)},
               title="Direct logit attribution to the correct digit (std over sequences)", xlabel="component",
               ylabel="logit")
    digit_ticks = (list(range(sd.N_DIGITS)), OUT_LABELS)
    path_ticks = (list(range(len(p["labels"]))), p["labels"])
    sec.figure("dla_paths", plots.heatmaps,
               "Left: mean DLA of each layer-1 input component directly and through each layer-1 "
               "head. Right: mean frequency-1 push toward the correct digit over its mean magnitude "
               "(1 = always aimed at the correct digit).",
               [p["correct_dla_mean"], p["fourier_alignment"]],
               ["mean DLA to the correct digit", "Fourier alignment with the correct digit"],
               suptitle="Direct logit attribution by path (layer-0 component -> layer-1 head)", xlabel="sum digit",
               center=True, xticks=digit_ticks, yticks=path_ticks, annotate=True, ncols=2, panel=6.5)
    sec.text("A path's LayerNorm scale is layer 1's (the one its head reads through), so the paths through a head "
             "add up to that head's output exactly; the notebook divided by layer 0's scale instead.")
    sec.figure("dla_fourier_simple", plots.heatmap,
               "For each component: mean real part of its digit logits' bin-1 coefficient, rotated "
               "so the correct digit is at angle 0, over the mean magnitude.",
               s["fourier_alignment"], center=True, annotate=True,
               title="Fourier alignment of each component's digit logits", xlabel="sum digit", xticks=digit_ticks,
               yticks=(list(range(len(s["labels"]))), s["labels"]), origin_lower=False)
    z = dla["logits_rotated_frequency_1"].reshape(-1)
    sec.figure("dla_logits_fourier", plots.scatter,
               "The model's digit logits in Fourier space, one point per sequence and digit, "
               "rotated so the correct digit lies on the positive x axis.",
               z.real, z.imag, c=np.tile(np.arange(sd.N_DIGITS), len(z) // sd.N_DIGITS), clabel="sum digit (0 = c1)",
               title="Bin-1 coefficient of the digit logits, correct digit at angle 0",
               xlabel="toward the correct digit", ylabel="orthogonal", equal_aspect=True)
    sec.key_values({"share of predictions whose bin-1 phase decodes to the correct digit":
                    dla["frequency_1_decode_accuracy"]}, caption="Frequency 1 alone")
    return {k: v for k, v in dla.items() if k != "logits_rotated_frequency_1"}


# =============================================================================== layer-1 OV


@functools.partial(jax.jit, static_argnums=0)
def _ov_chains(cfg: ModelConfig, params: dict):
    """W_E OV0[h0] OV1[h1] W_U on single digits [h0, h1, 10, 10] and on
    W_E[i] + W_E[j] (row 10 i + j) [h0, h1, 100, 10]."""
    W_E = params["embed"]["W_E"][:N_DIGIT_TOKENS]
    W_U = params["unembed"]["W_U"][:, :N_DIGIT_TOKENS]
    chain = circuits.ov_circuit(cfg, params, 0)[:, None] @ circuits.ov_circuit(cfg, params, 1)[None] @ W_U
    i, j = np.divmod(np.arange(N_DIGIT_TOKENS ** 2), N_DIGIT_TOKENS)
    return (W_E @ chain).AB, ((W_E[i] + W_E[j]) @ chain).AB


def circular_spread(phase, axis=-1):
    """1 - |mean exp(i phase)| along `axis`: 0 when every phase is the same, up to 1."""
    return 1 - np.abs(np.exp(1j * np.asarray(phase)).mean(axis))


def spread_explained(phase, groups) -> np.ndarray:
    """Share of the circular spread of phase [..., n] that a grouping groups [n]
    accounts for: 1 - (size-weighted mean spread within groups) / (total spread);
    NaN where the phases hardly spread at all (total < 1e-3)."""
    phase, groups = np.asarray(phase), np.asarray(groups)
    total = circular_spread(phase)
    within = sum(np.mean(groups == g) * circular_spread(phase[..., groups == g]) for g in np.unique(groups))
    return np.where(total > 1e-3, 1 - within / np.maximum(total, 1e-3), np.nan)


def layer1_ov(cfg: ModelConfig, params: dict) -> dict:
    """W_E OV0[h0] OV1[h1] W_U on the digits: single digits [h0, h1, 10, 10]
    and summed digit pairs (W_E[i] + W_E[j], row 10 i + j) [h0, h1, 100, 10],
    read through the bin-1 phase of each output row.

    single: the phase per digit, its spread (`circular_spread`) and its winding
      number over the digits 0 -> 9 -> 0 (1: the phase turns once with the digit);
    pairs: the phase per pair, its spread, and how much of the spread the sum
      digit (i + j) mod 10, and the number of digits >= 5 in the pair (0, 1, 2:
      the notebook's three clusters), account for (`spread_explained`).
    """
    single, pairs = map(np.asarray, _ov_chains(cfg, params))
    i, j = np.divmod(np.arange(N_DIGIT_TOKENS ** 2), N_DIGIT_TOKENS)
    single_phase = np.angle(_freq1(single))  # [h0, h1, 10]
    pair_phase = np.angle(_freq1(pairs))  # [h0, h1, 100]
    return {
        "single": single, "pairs": pairs,
        "single_frequency_1_phase": single_phase,
        "single_frequency_1_magnitude": np.abs(_freq1(single)),
        "single_phase_spread": circular_spread(single_phase),
        "single_phase_winding": np.rint(_cyclic_steps(single_phase).sum(-1) / (2 * np.pi)).astype(int),
        "pair_frequency_1_phase": pair_phase,
        "pair_phase_spread": circular_spread(pair_phase),
        "pair_spread_explained_by_sum_digit": spread_explained(pair_phase, (i + j) % N_DIGIT_TOKENS),
        "pair_spread_explained_by_digits_at_least_5": spread_explained(pair_phase, (i >= 5).astype(int) + (j >= 5)),
    }


def ov_section(cfg: ModelConfig, ov: dict, rep: Report) -> dict:
    """Figures and table of `layer1_ov`; returns its phase numbers for results.json."""
    sec = rep.section("Layer-1 OV circuits")
    H = cfg.n_heads
    titles = [f"0.{a} -> 1.{b}" for a in range(H) for b in range(H)]
    digit_ticks = (list(range(N_DIGIT_TOKENS)), DIGIT_LABELS)
    sec.figure("ov_digits", plots.heatmaps,
               "Logits written by each layer-0 head -> layer-1 head OV chain when fed a digit's "
               "embedding.",
               list(ov["single"].reshape(-1, 10, 10)), titles, center=True,
               suptitle="W_E OV0[h0] OV1[h1] W_U on the digits", xlabel="output logit", ylabel="input digit",
               xticks=digit_ticks, yticks=digit_ticks, ncols=H, panel=3.3)
    sec.figure("ov_digits_phase", plots.heatmap,
               "Phase (rad, cyclic colours) of the frequency-1 part of each chain's output logits "
               "for each input digit.",
               ov["single_frequency_1_phase"].reshape(-1, 10), cmap="twilight", vmin=-np.pi, vmax=np.pi,
               title="Bin-1 phase of each chain's output, per digit", xlabel="input digit", xticks=digit_ticks,
               yticks=(list(range(len(titles))), titles), origin_lower=False)
    grid = ov["pair_frequency_1_phase"].reshape(H * H, N_DIGIT_TOKENS, N_DIGIT_TOKENS)
    sec.figure("ov_pairs_phase", plots.heatmaps,
               "Phase of the frequency-1 output of each chain fed the sum of two digit embeddings: "
               "anti-diagonal stripes mean the phase tracks i + j.",
               list(grid), titles, cmap="twilight", vmin=-np.pi, vmax=np.pi,
               suptitle="Bin-1 phase of the chain's output on W_E[i] + W_E[j]", xlabel="j", ylabel="i",
               xticks=digit_ticks, yticks=digit_ticks, ncols=H, panel=3.3)
    flat = lambda name: ov[name].reshape(-1)
    rows = [[t, float(flat("single_phase_spread")[k]), int(flat("single_phase_winding")[k]),
             float(flat("pair_phase_spread")[k]), float(flat("pair_spread_explained_by_sum_digit")[k]),
             float(flat("pair_spread_explained_by_digits_at_least_5")[k])] for k, t in enumerate(titles)]
    sec.table(["chain", "digit phase spread (0: constant)", "winding over digits",
               "pair phase spread", "share explained by (i+j) mod 10", "share explained by # digits >= 5"], rows,
              caption="Phases of the OV chains (spread: 1 - |mean exp(i phase)|)")
    return {k: v for k, v in ov.items() if k not in ("single", "pairs")}


# =============================================================================== carries


def carry_attention(acts: dict, carry: np.ndarray) -> dict:
    """Layer-1 attention from the position predicting each sum digit (9 + i),
    split by whether c_i receives a carry (`attention_stats`): mean, std
    [4, 2 (carry, no carry), h, 14] and counts [4, 2]; c4 never does, so
    its 'carry' group is empty (NaN); max_abs_difference [3, h]: the largest
    |carry - no carry| difference over keys for c1..c3."""
    pattern = acts["blocks.1.attn.hook_pattern"]
    stats = [_attention_stats(pattern, int(q), carry[:, i]) for i, q in enumerate(sd.OUTPUT_POSITIONS)]
    mean = np.stack([np.asarray(s.mean) for s in stats])
    return {"mean": mean, "std": np.stack([np.asarray(s.std) for s in stats]),
            "count": np.stack([np.asarray(s.count) for s in stats]),
            "max_abs_difference": np.abs(mean[:-1, 0] - mean[:-1, 1]).max(-1)}  # [3, h] (c1..c3)


def carry_section(cfg: ModelConfig, tokens: np.ndarray, carry: np.ndarray, base: np.ndarray, heads: dict,
                  att: dict, rep: Report) -> dict:
    """Counts, accuracy, ablations and layer-1 attention by carry. base: unablated
    (loss, correct) [b, 4, 2]."""
    sec = rep.section("Carry vs no carry")
    notebook_split = sd.digit_differs_from_pair_sum(tokens)
    counts = {
        "digits receiving a carry (c1..c4)": carry.sum(0),
        "sequences with any carry / none": [int(carry.any(1).sum()), int((~carry.any(1)).sum())],
        "notebook split c_i != a_i + b_i (c1..c4)": notebook_split.sum(0),
        "notebook split: sequences with any / none": [int(notebook_split.any(1).sum()),
                                                      int((~notebook_split.any(1)).sum())],
    }
    acc = np.stack([_split_means(base[:, i, 1], carry[:, i]) for i in range(sd.N_DIGITS)], -1)  # [2, 4]
    loss = np.stack([_split_means(base[:, i, 0], carry[:, i]) for i in range(sd.N_DIGITS)], -1)
    sec.key_values({k: np.asarray(v).tolist() for k, v in counts.items()}, caption="How many carries")
    sec.table(["digit", "accuracy (carry)", "accuracy (no carry)", "loss (carry)", "loss (no carry)"],
              [[OUT_LABELS[i], float(acc[0, i]), float(acc[1, i]), float(loss[0, i]), float(loss[1, i])]
               for i in range(sd.N_DIGITS)], caption="The model on digits that receive a carry and on the rest")
    labels = head_labels(cfg)
    digit_ticks = (list(range(sd.N_DIGITS)), OUT_LABELS)
    m = heads["mean"]["loss_increase_per_digit_carry_split"].reshape(len(labels), 2, sd.N_DIGITS)
    sec.figure("carry_head_ablation", plots.heatmaps,
               "Loss increase of each sum digit when a head is mean-ablated, over the sequences "
               "where that digit receives a carry and where it does not (c4 never does).",
               [m[:, 0], m[:, 1]], ["digits receiving a carry", "digits without a carry"],
               suptitle="Loss increase per digit, mean-ablated heads, by carry", xlabel="sum digit", ylabel="head",
               annotate=True, xticks=digit_ticks, yticks=(list(range(len(labels))), labels), panel=4.2)
    H = cfg.n_heads
    head_ticks = (list(range(H)), [f"H1.{h}" for h in range(H)])
    pos_ticks = (list(range(sd.SEQ_LEN)), [str(p) for p in range(sd.SEQ_LEN)])
    panels, titles = [], []
    for i in range(sd.N_DIGITS - 1):
        panels += [att["mean"][i, 0], att["mean"][i, 1], att["mean"][i, 0] - att["mean"][i, 1]]
        titles += [f"{OUT_LABELS[i]}: carry", f"{OUT_LABELS[i]}: no carry", f"{OUT_LABELS[i]}: difference"]
    sec.figure("carry_layer1_attention", plots.heatmaps,
               "Mean layer-1 attention (per head, to each key position) from positions 9, 10, 11 "
               "when the digit they predict receives a carry, when it does not, and the difference.",
               panels, titles, center=True,
               suptitle="Layer-1 attention from the position predicting each digit, by carry", xlabel="key position",
               ylabel="head", xticks=pos_ticks, yticks=head_ticks, ncols=3, panel=4.0)
    rows = [[OUT_LABELS[i], f"H1.{h}", float(att["max_abs_difference"][i, h]),
             int(np.nanargmax(np.abs(att["mean"][i, 0, h] - att["mean"][i, 1, h])))]
            for i in range(sd.N_DIGITS - 1) for h in range(H)]
    sec.table(["digit", "head", "largest |carry - no carry| attention difference", "at key position"], rows,
              caption="Where carries change the layer-1 attention")
    return {"counts": counts, "accuracy_by_carry": acc, "loss_by_carry": loss,
            "split_order": ["carry", "no carry"], "layer1_attention": att}


# =============================================================================== all


def _fmt(values) -> str:
    """'0.12/0.34/0.56' for a short vector (NaN as 'n/a')."""
    return "/".join("n/a" if np.isnan(v) else f"{v:.2f}" for v in np.asarray(values, float))


def notebook_comparison(cfg: ModelConfig, u: dict, heads: dict, qkv: dict, subsets: dict, qk: dict, ov: dict,
                        carry_out: dict) -> dict:
    """Our measurement of each of the notebook's findings (NOTEBOOK_FINDINGS), as text."""
    labels = head_labels(cfg)
    mean_inc = heads["mean"]["loss_increase"].reshape(-1)
    order = [labels[k] for k in np.argsort(-mean_inc)]
    q0 = qkv["loss_increase"][0, 0]
    k1 = {name: (v[1, 1] if v is not None else np.full(cfg.n_heads, np.nan)) for name, v in subsets.items()}
    c = carry_out["counts"]
    ours = {
        "significant W_U dimensions": ", ".join(str(int(d)) for d in u["significant_dims"]),
        "W_U dominant frequency": f"bin {sorted(set(u['significant_dims_dominant_frequency'].tolist()))}; "
                                  f"{u['power_fraction_by_frequency'][0]:.1%} of the non-constant power at 2π/10",
        "most critical heads (mean ablation)": "by loss increase: " + ", ".join(
            f"{lab} {mean_inc[labels.index(lab)]:.3f}" for lab in order),
        "layer-0 queries": "loss increase " + ", ".join(f"H0.{h} {v:.4f}" for h, v in enumerate(q0)),
        "corresponding-digit heads": "; ".join(f"{h}: {', '.join(d) or 'none'}"
                                               for h, d in qk["corresponding_digit_heads"].items()),
        "layer-1 keys on non-carry sequences": "loss increase (mean over those sequences) " + ", ".join(
            f"H1.{h} {v:.4f} (on carry sequences: {w:.4f})" for h, (v, w) in enumerate(zip(k1["no carry"],
                                                                                           k1["carry"]))),
        "layer-1 OV on digit pairs": "; ".join(
            f"H0.{a} -> H1.*: pair phase spread {_fmt(ov['pair_phase_spread'][a])}, explained by (i+j) mod 10 "
            f"{_fmt(ov['pair_spread_explained_by_sum_digit'][a])}, by # digits >= 5 "
            f"{_fmt(ov['pair_spread_explained_by_digits_at_least_5'][a])}" for a in range(cfg.n_heads)),
        "carry counts (c_i != a_i + b_i) in the 1,000 sequences": (
            f"any {c['notebook split: sequences with any / none'][0]}, none "
            f"{c['notebook split: sequences with any / none'][1]}, "
            + ", ".join(f"c{i + 1} {int(n)}" for i, n in enumerate(c["notebook split c_i != a_i + b_i (c1..c4)"][:3]))
            + " (in the sequences analysed here)"),
    }
    return {k: {"notebook": NOTEBOOK_FINDINGS[k], "ours": ours[k]} for k in NOTEBOOK_FINDINGS}


def analyze(cfg: ModelConfig, params: dict, tokens: np.ndarray, an, rep: Report) -> dict:
    """Every analysis of study 4 on a processed model and sequences [n, 14];
    adds report sections, returns the numbers. `an`: the config's analysis
    fields (significant_dim_fraction, corresponding_digit_threshold)."""
    if cfg.normalization_type == "LN":
        raise ValueError("analyze expects processed weights (toymech.weights.process_weights), got an 'LN' model")
    tokens = np.asarray(tokens)
    logits, acts = tm.apply(cfg, params, tokens, capture=capture_sites(cfg))
    carry = sd.carry_in(tokens)
    out: dict = {}
    u = unembed_structure(params, float(an.significant_dim_fraction))
    out["unembed"] = unembed_section(u, rep)

    heads, base = {}, None
    for kind in ("zero", "mean"):
        values, base = ablation_scores(cfg, params, tokens, site="z", kind=kind)
        heads[kind] = summarize_ablation(values, base, carry)
    qkv = summarize_ablation(*ablation_scores(cfg, params, tokens, site=QKV, kind="mean"), carry)
    subsets = qkv_on_subsets(cfg, params, tokens, carry)
    ablation_section(cfg, heads, qkv, subsets, rep)
    out["head_ablations"], out["qkv_mean_ablations"] = heads, qkv
    out["qkv_mean_ablations_on_carry_subsets"] = subsets

    qk = layer0_qk(cfg, params, acts, float(an.corresponding_digit_threshold))
    qk_section(cfg, qk, rep)
    out["layer0_qk"] = {k: v for k, v in qk.items() if k not in ("full_scores",)}
    out["direct_logit_attribution"] = dla_section(logit_attribution(cfg, params, acts, logits, tokens), rep)
    ov = layer1_ov(cfg, params)
    out["layer1_ov"] = ov_section(cfg, ov, rep)
    out["carries"] = carry_section(cfg, tokens, carry, base, heads, carry_attention(acts, carry), rep)
    out["notebook_comparison"] = notebook_comparison(cfg, u, heads, qkv, subsets, qk, ov, out["carries"])
    sec = rep.section("The notebook's findings and ours")
    sec.table(["finding", "notebook", "this run"],
              [[k, v["notebook"], v["ours"]] for k, v in out["notebook_comparison"].items()])
    from toymech.studies import sum_digits_circuits as sc  # it imports this module's labels
    found = sc.digit_circuits(cfg, params)
    out["circuits"] = sc.circuits_section(found, sc.head_agreement(found, qk), rep)
    return out

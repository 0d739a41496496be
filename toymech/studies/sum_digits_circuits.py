"""Study 4 circuits: the edges that compute each sum digit, found by ACDC and EAP-IG, beside the
layer-0 head findings of `sum_digits_analysis.layer0_qk`.

For each sum digit c_i (i = 0 for c1 .. 3 for c4) two corruptions (`sd.corrupt_a_digit`), each on
`CIRCUIT_SEQUENCES` clean / corrupted pairs drawn from fresh sequences (`sd.make_sequences`):

  digit   a_i changed with every carry kept (carries=False): only c_i changes, so the circuit is
          the path from the digits a_i, b_i to c_i;
  carry   a_(i+1) changed so that a carry changes (carries=True): c_i changes only through its
          carry-in (c4 has none, so it has no such rows).

The metric is ACDC's, the KL divergence of the output predicting c_i from the clean run's
(`edges.kl_metric` at position 9 + i). `common.find_circuit` runs ACDC (tau relative to the
corrupted KL) and EAP-IG with its faithfulness curve. A layer-0 head is in a circuit when a kept
path from the embeddings to the logits runs through it (`common.heads_on_paths`); `head_agreement`
sets those heads beside the report's corresponding-digit heads (digit) and next-digit heads (carry).
"""

from __future__ import annotations

import numpy as np

import toymech as tm
from toymech.analysis import edges
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import common
from toymech.studies.sum_digits_analysis import OUT_LABELS
from toymech.tasks import sum_digits as sd

CIRCUIT_SEQUENCES = 256  # clean / corrupted pairs per circuit
POOL = 4096  # fresh sequences the pairs are drawn from
SEED = 2026  # the pool's and the corruptions' seed
TAU_FRACTION = 0.02  # ACDC's tau as a fraction of the corrupted KL
EAP_IG_STEPS = 4
KINDS = ("digit", "carry")


def corrupted_pairs(digit: int, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(clean, corrupted) int32 [CIRCUIT_SEQUENCES, 14] for sum digit `digit` (0 = c1) and `kind`
    (see the module docstring), or None where there are no such rows (c4's carry)."""
    changed, carries = (digit, False) if kind == "digit" else (digit + 1, True)
    if changed >= sd.N_DIGITS:
        return None
    clean, corrupted = sd.corrupt_a_digit(sd.make_sequences(POOL, SEED), changed, SEED, carries=carries)
    if len(clean) < CIRCUIT_SEQUENCES:
        raise ValueError(f"only {len(clean)} of {POOL} sequences have a {kind} corruption for {OUT_LABELS[digit]}")
    return clean[:CIRCUIT_SEQUENCES], corrupted[:CIRCUIT_SEQUENCES]


def digit_metric(cfg: ModelConfig, params: dict, clean: np.ndarray, digit: int) -> edges.sweeps.Metric:
    """KL(clean || patched) of the output predicting sum digit `digit` (position 9 + digit), per example."""
    clean_logits, _ = tm.apply(cfg, params, clean)
    return edges.kl_metric(clean_logits, [int(sd.OUTPUT_POSITIONS[digit])])


def digit_circuits(cfg: ModelConfig, params: dict) -> dict[str, common.FoundCircuit]:
    """{"c1 digit": FoundCircuit, "c1 carry": ..., ...}: the circuit of each sum digit under each
    corruption that has rows (7: c4 has no carry)."""
    out = {}
    for digit in range(sd.N_DIGITS):
        for kind in KINDS:
            pairs = corrupted_pairs(digit, kind)
            if pairs is not None:
                out[f"{OUT_LABELS[digit]} {kind}"] = common.find_circuit(
                    cfg, params, *pairs, digit_metric(cfg, params, pairs[0], digit), tau_fraction=TAU_FRACTION,
                    steps=EAP_IG_STEPS)
    return out


def head_agreement(found: dict[str, common.FoundCircuit], qk: dict) -> dict:
    """Per circuit: the layer-0 heads on its kept paths against the heads the report identifies
    from the positional attention (`layer0_qk`, mass >= its threshold): the corresponding-digit
    heads of c_i for a digit corruption, the heads attending to a_(i+1), b_(i+1) for a carry one.
    {name: {"circuit": [...], "report": [...], "both": [...], "circuit_only": [...], "report_only": [...]}}."""
    out = {}
    for name, f in found.items():
        label, kind = name.split()
        digit = OUT_LABELS.index(label)
        if kind == "digit":
            report = {h for h, digits in qk["corresponding_digit_heads"].items() if label in digits}
        else:
            report = {f"H0.{h}" for h in np.flatnonzero(qk["next_digit_mass"][:, digit] >= qk["threshold"])}
        circuit = {h for h in common.heads_on_paths(f.acdc.kept) if h.startswith("H0.")}
        out[name] = {"circuit": sorted(circuit), "report": sorted(report), "both": sorted(circuit & report),
                     "circuit_only": sorted(circuit - report), "report_only": sorted(report - circuit)}
    return out


def _heads(names) -> str:
    return ", ".join(names) or "none"


def circuits_section(found: dict[str, common.FoundCircuit], agreement: dict, rep: Report) -> dict:
    """The circuit and faithfulness figures of each digit, a table of the circuits, and where their
    layer-0 heads agree with the report's head findings; returns the numbers for results.json."""
    sec = rep.section("Circuits of each sum digit")
    first = next(iter(found.values()))
    sec.text(f"For each sum digit, ACDC (KL of that digit's output to the clean one, tau = {TAU_FRACTION} x the "
             f"corrupted KL) and EAP-IG ({EAP_IG_STEPS} steps) on {first.n_sequences} fresh clean / corrupted pairs. "
             "'digit': a_i changed with every carry kept, so only c_i changes; 'carry': a_(i+1) changed so that the "
             "carry into c_i changes (c4 has no carry-in). A layer-0 head counts as in the circuit when a kept path "
             "from the embeddings to the logits runs through it.")
    rows = []
    for name, f in found.items():
        c, a = f.acdc, agreement[name]
        rows.append([name, len(c.kept), round(c.recovered, 3), round(float(f.curve.recovered[len(c.kept)]), 3),
                     f.top_k_shared, _heads(a["circuit"]), _heads(a["report"])])
    sec.table(["circuit", "ACDC edges", "ACDC recovered", "top-k EAP-IG recovered (same k)",
               "shared with top-k EAP-IG", "layer-0 heads in the circuit", "layer-0 heads the report identifies"],
              rows, caption="The circuits: the report's heads are the corresponding-digit heads (digit) and the "
                            "heads attending to a_(i+1), b_(i+1) (carry), positional attention >= the threshold")
    lines = []
    for name, a in agreement.items():
        if a["circuit_only"] or a["report_only"]:
            lines.append(f"{name}: agree on {_heads(a['both'])}; only in the circuit {_heads(a['circuit_only'])}; "
                         f"only in the report {_heads(a['report_only'])}.")
        else:
            lines.append(f"{name}: agree exactly ({_heads(a['both'])}).")
    n_agree = sum(not (a["circuit_only"] or a["report_only"]) for a in agreement.values())
    n_covered = sum(not a["report_only"] for a in agreement.values())
    sec.text(f"The circuits' layer-0 heads match the report's head findings exactly for {n_agree} of "
             f"{len(agreement)} circuits, and include every head the report identifies for {n_covered} of them. "
             + " ".join(lines))
    for name, f in found.items():
        common.circuit_figures(sec, "circuit_" + name.replace(" ", "_"), f, f"{name} (KL on {name.split()[0]})")
    return {name: f.numbers() | {"layer0_heads": agreement[name]} for name, f in found.items()}

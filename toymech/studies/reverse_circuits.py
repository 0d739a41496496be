"""Study 2 circuit: the edges that write one output, y_OUTPUT, found by ACDC and EAP-IG.

The corruption is `rv.resample_position` of the input that output copies, x_(7 - OUTPUT), on the
first `CIRCUIT_SEQUENCES` holdout sequences (the model is fed their first 16 tokens); the metric is
the KL divergence of the output predicting y_OUTPUT from the clean run's (`edges.kl_metric`).
`common.find_circuit` runs ACDC (tau relative to the corrupted KL) and EAP-IG with its
faithfulness curve.
"""

from __future__ import annotations

import numpy as np

import toymech as tm
from toymech.analysis import edges
from toymech.config import ModelConfig
from toymech.report import Report
from toymech.studies import common
from toymech.tasks import reverse as rv

OUTPUT = 3  # y3 = x4 + 1 mod 4, predicted at position 11, copying the input at position 5
CIRCUIT_SEQUENCES = 256
SEED = 2026
TAU_FRACTION = 0.02  # ACDC's tau as a fraction of the corrupted KL
EAP_IG_STEPS = 4


def position_pairs(holdout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clean, corrupted) fed tokens int32 [CIRCUIT_SEQUENCES, 16]: the first holdout sequences and
    the same with x_(7 - OUTPUT) resampled."""
    clean = np.asarray(holdout[:CIRCUIT_SEQUENCES])
    corrupted = rv.resample_position(clean, rv.N_DIGITS - 1 - OUTPUT, SEED)
    return clean[:, :-1], corrupted[:, :-1]


def position_circuit(cfg: ModelConfig, params: dict, holdout: np.ndarray) -> common.FoundCircuit:
    """The circuit of output y_OUTPUT on the holdout sequences [n, 17] (see the module docstring)."""
    clean, corrupted = position_pairs(holdout)
    clean_logits, _ = tm.apply(cfg, params, clean)
    metric = edges.kl_metric(clean_logits, [int(rv.OUTPUT_POSITIONS[OUTPUT])])
    return common.find_circuit(cfg, params, clean, corrupted, metric, tau_fraction=TAU_FRACTION,
                               steps=EAP_IG_STEPS)


def circuit_section(found: common.FoundCircuit, rep: Report) -> dict:
    """The circuit and its faithfulness curve; returns its numbers for results.json."""
    sec = rep.section(f"Circuit of output y{OUTPUT}")
    c, k = found.acdc, len(found.acdc.kept)
    position = rv.N_DIGITS - 1 - OUTPUT
    sec.text(f"ACDC (KL of the output predicting y{OUTPUT} to the clean one, tau = {TAU_FRACTION} x the corrupted "
             f"KL {c.corrupted:.3g}) and EAP-IG ({EAP_IG_STEPS} steps) on {found.n_sequences} holdout sequences "
             f"against the same with x{position} resampled. ACDC keeps {k} of {len(c.mask)} edges and recovers "
             f"{c.recovered:.1%} of the metric; the top {k} edges by |EAP-IG score| recover "
             f"{float(found.curve.recovered[k]):.1%} and share {found.top_k_shared} edges with it. Heads on a kept "
             f"path from the embeddings to the logits: {', '.join(sorted(common.heads_on_paths(c.kept))) or 'none'}.")
    sec.table(["kept edge", "|metric change| when removed", "EAP-IG score"],
              [[e, float(s), float(found.eap_ig[e])] for e, s in zip(c.kept, c.scores)],
              caption=f"The ACDC circuit of y{OUTPUT}")
    common.circuit_figures(sec, f"circuit_y{OUTPUT}", found, f"y{OUTPUT} (x{position} resampled, KL on y{OUTPUT})")
    return found.numbers()

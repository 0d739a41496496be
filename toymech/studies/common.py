"""The study layer: what every study shares, so a study module holds only its own science.

A study module (`toymech/studies/<name>.py`) has `train_and_evaluate(config, workdir)`:

    wd = common.open_workdir(workdir, config, "name", data_files=...)  # after the inputs validate
    run = train_model(config, wd)                                    # the study's own training
    nonfinite = common.write_metrics(wd, "name", run.train_history, run.eval_history, COLUMNS)
    rep = Report(title, INTRO, directory=wd.path)
    results = {...: compute(...)}; section(results..., rep)          # compute/section pairs
    return common.finish("name", config, wd, rep, results, t0, nonfinite)

Here: `open_workdir` (with a 'resumed from epoch N' line), `metrics_rows` (training
history -> metrics.jsonl rows) and `write_metrics` (which also flags non-finite metrics),
`first_epoch_at_least`, `attention_patterns` and `attention_section` (the interactive view of
every head on a few examples, in every study's report), `find_circuit` and `circuit_figures`
(ACDC and EAP-IG on a clean / corrupted pair, and their report figures), `config_section` and `finish` (config
section, timing, results.json, report.html, one line on stderr). Studies import this module and never one another
(tests/test_layers.py checks it).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import toymech as tm
from toymech import checkpoint, experiment, plots
from toymech.analysis import discovery, edges
from toymech.report import Report, Section


def open_workdir(workdir, config, study: str, data_files=None) -> experiment.Workdir:
    """`experiment.open_workdir` (call it once the config and inputs validated), then one
    line on stderr when the workdir already holds training: 'resumed from epoch N (checkpoint ...)'."""
    wd = experiment.open_workdir(workdir, config, data_files=data_files)
    done = checkpoint.list_checkpoints(str(wd.checkpoint_dir))
    if done:
        path = checkpoint.latest_checkpoint(str(wd.checkpoint_dir))
        total = int(config.num_epochs) if "num_epochs" in config else None
        finished = ": training is complete, only the analyses run" if total and max(done) >= total else ""
        print(f"[{study}] resumed from epoch {max(done)} (checkpoint {path}){finished}", file=sys.stderr)
    return wd


def metrics_rows(train_history: Mapping[str, np.ndarray], eval_history: Mapping[str, np.ndarray],
                 columns: Mapping[str, tuple[str, str]]) -> list[dict]:
    """One metrics.jsonl row per evaluation epoch.

    `columns` maps each row key to (history, key), history 'train' (the per-epoch
    training record, looked up at the evaluation's epoch) or 'eval'; e.g.
    `{"train/loss": ("train", "loss"), "test/accuracy": ("eval", "accuracy")}`.
    Every row starts with 'step', the epoch.
    """
    histories = {"train": train_history, "eval": eval_history}
    for name, (which, key) in columns.items():
        if which not in histories or key not in histories[which]:
            raise KeyError(f"metrics column {name!r}: no {key!r} in the {which} history "
                           f"(it has {sorted(histories.get(which, {}))})")
    train_rows = np.searchsorted(np.asarray(train_history["epoch"]), np.asarray(eval_history["epoch"]))
    rows = []
    for i, epoch in enumerate(eval_history["epoch"]):
        at = {"train": int(train_rows[i]), "eval": i}
        rows.append({"step": int(epoch)} | {name: histories[which][key][at[which]]
                                            for name, (which, key) in columns.items()})
    return rows


def nonfinite_metrics(rows: list[Mapping[str, Any]]) -> dict[str, list[int]]:
    """{metric: [steps]} for every metric that is NaN or infinite in some row."""
    bad: dict[str, list[int]] = {}
    for row in rows:
        for name, v in row.items():
            if name != "step" and isinstance(v, (float, np.floating)) and not math.isfinite(v):
                bad.setdefault(name, []).append(int(row["step"]))
    return bad


def first_epoch_at_least(epochs: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first epoch whose value is >= level, or None."""
    hit = np.flatnonzero(np.asarray(values) >= level)
    return int(epochs[hit[0]]) if hit.size else None


ATTENTION_EXAMPLES = 4  # examples in each report's interactive attention view


def attention_patterns(cfg, params, tokens, key_padding_mask=None) -> np.ndarray:
    """Every layer's attention pattern (the captured `hook_pattern`s) on tokens [n, pos]:
    [n, layer, head, query, key]."""
    sites = tuple(tm.get_act_name("pattern", layer) for layer in range(cfg.n_layers))
    _, cache = tm.apply(cfg, params, tokens, capture=sites, key_padding_mask=key_padding_mask)
    return np.stack([np.asarray(cache[s]) for s in sites], axis=1)


def attention_section(rep: Report, cfg, params, tokens, vocab: Sequence[str], what: str, *,
                      key_padding_mask=None, names: Sequence[str] | None = None) -> None:
    """A section with the interactive attention view (`Section.attention`) of every head on
    the first `ATTENTION_EXAMPLES` rows of tokens [n, pos] (`what` they are, for the caption),
    each token shown as `vocab[token]`; padded positions (`key_padding_mask` False) are left
    out. `names`: one per row (default: the labels joined by spaces)."""
    tokens = np.asarray(tokens)[:ATTENTION_EXAMPLES]
    mask = None if key_padding_mask is None else np.asarray(key_padding_mask)[:ATTENTION_EXAMPLES]
    lengths = [tokens.shape[1]] * len(tokens) if mask is None else mask.sum(1)
    labels = [[vocab[t] for t in row[:n]] for row, n in zip(tokens, lengths)]
    rep.section("Attention patterns, interactive").attention(
        attention_patterns(cfg, params, tokens, mask), labels,
        f"Attention of every head on {len(tokens)} {what}. Pick the layer and head with the buttons and the "
        "query position by clicking its token or matrix row: the tokens are shaded by the selected query's "
        "attention weights (which sum to 1 over the keys), and the matrix shows the whole head (rows: queries, "
        "columns: keys; hover a cell for its weight).",
        examples=None if names is None else list(names)[:ATTENTION_EXAMPLES])


@dataclasses.dataclass(frozen=True, eq=False)
class FoundCircuit:
    """A circuit search on one clean / corrupted pair (`find_circuit`).

    acdc: the ACDC circuit (threshold tau); eap_ig: EAP-IG scores of every edge; curve: the
    faithfulness curve of the top-k circuits by |EAP-IG score|, k = 0..n_edges; n_sequences:
    the clean / corrupted pairs used.
    """

    acdc: discovery.Circuit
    eap_ig: edges.EdgeScores
    curve: discovery.FaithfulnessCurve
    tau: float
    n_sequences: int

    @property
    def top_k_shared(self) -> int:
        """How many of ACDC's kept edges are among the top len(acdc.kept) edges by |EAP-IG score|."""
        k = len(self.acdc.kept)
        top = np.argsort(-np.abs(np.asarray(self.eap_ig.values)), kind="stable")[:k]
        return int(np.asarray(self.acdc.mask)[top].sum())

    def numbers(self) -> dict:
        """The circuit as plain numbers (results.json): kept edges with their ACDC scores (|metric
        change| when removed), the circuit's metric and recovered fraction, every edge's EAP-IG
        score, and the faithfulness curve."""
        c, k = self.acdc, len(self.acdc.kept)
        return {"n_sequences": self.n_sequences, "tau": self.tau, "n_edges": len(c.mask),
                "kept": list(c.kept), "kept_scores": c.scores, "n_kept": k, "metric": c.metric,
                "metric_clean": c.clean, "metric_corrupted": c.corrupted, "recovered": c.recovered,
                "eap_ig_scores": dict(zip(self.eap_ig.edges, np.asarray(self.eap_ig.values).tolist())),
                "eap_ig_top_k_recovered": float(self.curve.recovered[k]),
                "eap_ig_top_k_shared_with_acdc": self.top_k_shared,
                "faithfulness_ks": self.curve.ks, "faithfulness_recovered": self.curve.recovered}


def find_circuit(cfg, params, clean, corrupted, metric, *, tau_fraction: float, steps: int) -> FoundCircuit:
    """ACDC with tau = `tau_fraction` x |metric(corrupted) - metric(clean)| (so the threshold is
    relative to what the corruption does), EAP-IG with `steps` points, and the faithfulness curve of
    the EAP-IG ranking, on clean / corrupted tokens [n, pos] and a per-example metric."""
    scores = discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap-ig", steps=steps)
    tau = tau_fraction * abs(float(scores.corrupted) - float(scores.clean))
    acdc = discovery.acdc(cfg, params, clean, corrupted, metric, tau)
    curve = discovery.faithfulness_curve(cfg, params, clean, corrupted, metric, scores)
    return FoundCircuit(acdc, scores, curve, tau, len(clean))


def heads_on_paths(kept) -> set[str]:
    """The heads ('H{layer}.{head}') that a path of kept edges (names "sender -> receiver") runs
    through from the embeddings to the logits: a head whose output reaches the logits but whose
    inputs are all corrupted, or the reverse, is on no such path."""
    ends = [tuple(discovery._node_of(n) for n in e.split(" -> ")) for e in kept]
    reach, back = {"embed", "pos_embed"}, {"logits"}
    for _ in ends:  # a fixed point; each pass extends every path by at least one edge or stops
        grown = (len(reach), len(back))
        reach |= {r for s, r in ends if s in reach}
        back |= {s for s, r in ends if r in back}
        if (len(reach), len(back)) == grown:
            break
    return {"H{}.{}".format(*n.split(".")[1::3]) for n in reach & back if ".head." in n}


def _draw_circuit(path, circuit: discovery.Circuit, title: str) -> str:
    return circuit.figure(path, title=title)


def circuit_figures(sec: Section, name: str, found: FoundCircuit, what: str) -> None:
    """Two figures of a `find_circuit` result in `sec`: the ACDC circuit (figures/<name>.png) and the
    faithfulness curve of the EAP-IG ranking with ACDC's size marked (figures/<name>_faithfulness.png);
    `what` names the corruption and metric for the captions."""
    c = found.acdc
    sec.figure(name, _draw_circuit, f"ACDC circuit for {what}: {len(c.kept)} of {len(c.mask)} edges kept (tau "
               f"{found.tau:.3g}), recovering {c.recovered:.1%} of the metric; edge width by |metric change| when "
               "the edge is removed, colour by the receiving input.", c,
               f"{what}: {len(c.kept)} edges, recovered {c.recovered:.2f}")
    sec.figure(f"{name}_faithfulness", plots.curves,
               f"Faithfulness for {what}: the fraction of the metric recovered by the top-k edges by |EAP-IG score| "
               "(the other edges corrupted), k = 0..all; dashed: ACDC's circuit size.",
               {"top-k EAP-IG": (found.curve.ks, found.curve.recovered)}, title=f"Faithfulness: {what}",
               xlabel="edges kept (k)", ylabel="metric recovered", markers=True,
               vlines={f"ACDC ({len(c.kept)} edges, {c.recovered:.2f})": len(c.kept)})


def config_section(config, rep: Report) -> None:
    """The run's config as a table of dotted fields (what config.json holds)."""
    sec = rep.section("Configuration")
    flat = experiment.flatten_config(experiment.config_to_dict(config))
    sec.table(["field", "value"], [[k, v] for k, v in flat.items()], caption="The run's config (config.json)")


def write_metrics(wd: experiment.Workdir, study: str, train_history, eval_history,
                  columns: Mapping[str, tuple[str, str]]) -> dict[str, list[int]]:
    """metrics.jsonl (`metrics_rows`), and a warning on stderr naming every non-finite
    metric; returns those ({metric: [steps]}, for `finish`)."""
    rows = metrics_rows(train_history, eval_history, columns)
    experiment.write_metrics(wd, rows)
    bad = nonfinite_metrics(rows)
    for name, steps in bad.items():
        print(f"[{study}] warning: {name} is not finite (NaN or inf) at {len(steps)} evaluation(s), first at "
              f"epoch {steps[0]}; the run diverged there", file=sys.stderr)
    return bad


def finish(study: str, config, wd: experiment.Workdir, rep: Report, results: dict, t0: float,
           nonfinite: Mapping[str, list[int]] | None = None) -> dict:
    """The end of every study: a warning section for non-finite metrics (if any), the config
    section, the total time, results.json and report.html; one line on stderr. Returns `results`."""
    if nonfinite:
        results["nonfinite_metrics"] = dict(nonfinite)
        rep.section("Warning: non-finite metrics", position=0).text(
            "Some evaluation metrics are NaN or infinite, so the run diverged and the numbers below are "
            "suspect: " + "; ".join(f"{k} from epoch {v[0]} ({len(v)} evaluations)" for k, v in nonfinite.items())
            + ".", note=True)
    config_section(config, rep)
    results["seconds_total_this_process"] = time.perf_counter() - t0
    experiment.write_results(wd, results)
    rep.write(wd.report_path)
    print(f"[{study}] wrote {wd.report_path} and {wd.results_path} "
          f"({results['seconds_total_this_process']:.0f}s)", file=sys.stderr)
    return results

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
every head on a few examples, in every study's report), `config_section` and `finish` (config
section, timing, results.json, report.html, one line on stderr). Studies import this module and never one another
(tests/test_layers.py checks it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import toymech as tm
from toymech import checkpoint, experiment
from toymech.report import Report


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

"""Workdir plumbing shared by every experiment binary.

Everything a run writes goes under its workdir:

  config.json     the run's config; a rerun with a different config is refused
                  (`ConfigMismatchError` names the fields that differ)
  metrics.jsonl   one JSON object per logged step: {"step": 100, "train/loss": ...}
  checkpoints/    training state (`toymech.train`); a rerun resumes from it
  snapshots/      parameter snapshots every k epochs (for measures over training)
  results.json    every number the analyses produce, under descriptive names
  figures/*.png   the analysis figures
  report.html     one page to read the study (`toymech.report`)

`open_workdir(path, config)` is the entry point of every study's
`train_and_evaluate`: it creates the directory, writes or checks config.json and
returns a `Workdir` whose properties give the paths above.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toymech.checkpoint import atomic_write_bytes


class ConfigMismatchError(ValueError):
    """The workdir holds a run made with a different config."""


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON copy of `obj`: numpy/JAX scalars and arrays become numbers and
    lists, tuples become lists, non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "__array__"):
        return to_jsonable(np.asarray(obj).tolist())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def config_to_dict(config: Any) -> dict:
    """A ConfigDict / FrozenConfigDict / mapping as plain JSON data."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(config, "as_configdict"):
        config = config.as_configdict().to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"a config must be a ConfigDict or a mapping, got {type(config).__name__}")
    return to_jsonable(config)


def flatten_config(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: dotted field names, as `--config.a.b=` spells them."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: Mapping, given: Mapping) -> list[str]:
    """'field: stored -> given' for every dotted field whose value differs."""
    a, b = flatten_config(stored), flatten_config(given)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)
            lines.append(f"{key}: {show(va)} -> {show(vb)}")
    return lines


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` (see `to_jsonable`) as indented JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(os.fspath(path), (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths of one run's outputs (see the module docstring)."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def figure_path(self, name: str) -> Path:
        """figures/<name>.png (the folder is created)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"figure name must be a plain file stem, got {name!r}")
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / f"{name}.png"

    def relative(self, path: str | os.PathLike) -> str:
        """`path` relative to the workdir, with '/' separators (for links in the report)."""
        return Path(os.path.relpath(Path(path).resolve(), self.path.resolve())).as_posix()


def open_workdir(path: str | os.PathLike, config: Any) -> Workdir:
    """Create the workdir and record `config`, or check it against the recorded one.

    Raises:
        ConfigMismatchError: config.json exists and differs from `config`; the
            message lists each differing field, so a rerun never silently mixes
            two configs in one workdir.
    """
    wd = Workdir(Path(path))
    wd.path.mkdir(parents=True, exist_ok=True)
    given = config_to_dict(config)
    if wd.config_path.exists():
        try:
            stored = read_json(wd.config_path)
        except json.JSONDecodeError as e:
            raise ConfigMismatchError(f"{wd.config_path} is not valid JSON ({e}); refusing to reuse {wd.path}") from e
        diffs = config_differences(stored, given)
        if diffs:
            raise ConfigMismatchError(
                f"{wd.path} already holds a run with a different config ({wd.config_path}); use a new "
                f"--workdir, or delete that one to start over. Differences (stored -> given):\n  "
                + "\n  ".join(diffs)
            )
    else:
        write_json(wd.config_path, given)
    return wd


def write_metrics(wd: Workdir, rows: Iterable[Mapping[str, Any]]) -> None:
    """(Re)write metrics.jsonl atomically: one JSON object per row, each with an integer
    'step' and `split/name` keys (e.g. 'train/loss'). A resumed run rewrites the whole
    history, which the training checkpoint carries, so the file never holds duplicates."""
    lines = []
    for row in rows:
        if "step" not in row:
            raise ValueError(f"a metrics row needs a 'step', got keys {sorted(row)}")
        lines.append(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
    atomic_write_bytes(os.fspath(wd.metrics_path), "".join(lines).encode())


def read_metrics(wd: Workdir) -> list[dict]:
    """All rows of metrics.jsonl (empty when none were written)."""
    if not wd.metrics_path.exists():
        return []
    rows = []
    with open(wd.metrics_path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{wd.metrics_path}:{n}: not a JSON object ({e})") from e
    return rows


def write_results(wd: Workdir, results: Mapping[str, Any]) -> None:
    """results.json: every number of the analyses (atomically replaced)."""
    write_json(wd.results_path, results)

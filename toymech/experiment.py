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

  inputs.json     size and SHA-256 of every user data file the run read; a rerun
                  whose data changed under the same path is refused (`DataChangedError`)

`open_workdir(path, config, data_files=...)` is the entry point of every study's
`train_and_evaluate`, called once the config and the inputs have validated (so a
run refused for a missing file leaves no config.json behind): it creates the
directory, writes or checks config.json and inputs.json and returns a `Workdir`
whose properties give the paths above.

Configs. `build_config(base, variants, arg)` is every config file's `get_config`:
`arg` is big_vision's comma list of variant names and `field=value` overrides
(`"nanda,quick"`, `"train,seed=3"`), applied left to right to `base()`; the result is
locked (`ConfigDict.lock`), so a misspelt field is an error naming the nearest
valid one, never a new field.

Errors a person can act on derive from `StudyError` (a ValueError): the shared
binary entry point (`experiments/common.py`) prints them as one line.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toymech.checkpoint import atomic_write_bytes
from toymech.report import FIGURES


class StudyError(ValueError):
    """Bad input to a study (config, workdir, data): reported as one line by the binaries."""


class ConfigMismatchError(StudyError):
    """The workdir holds a run made with a different config."""


class WorkdirError(StudyError):
    """The workdir cannot be used (it is a file, or it cannot be created)."""


class DataChangedError(StudyError):
    """A data file's contents changed since the workdir's run read it."""


def nearest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- configs


def _literal(text: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001, '(1, 2)' -> (1, 2), 'True' -> True; anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_field(config, dotted: str, value: Any, where: str = "config") -> None:
    """config.<dotted> = value for an existing field; StudyError naming the nearest field
    otherwise. A string `value` for a non-string field is read as a Python literal."""
    fields = flatten_config(config_to_dict(config))
    if dotted not in fields:
        raise StudyError(f"{where}: unknown field {dotted!r}{nearest(dotted, fields)}")
    *parents, last = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    old = node[last]
    if isinstance(value, str) and not isinstance(old, str):
        value = _literal(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and value is not None and type(old) is not type(value):
        raise StudyError(f"{where}: field {dotted} is {old!r} ({type(old).__name__}); got {value!r}")
    node[last] = value


def build_config(base: Callable[[], Any], variants: Mapping[str, Callable[[Any], None]],
                 arg: str | None = None, *, study: str):
    """A config file's `get_config(arg)`, big_vision style.

    `arg`: comma-separated variant names (each a function editing the config in place,
    applied left to right) and `field=value` overrides (dotted field names, values as
    Python literals), e.g. `"addition,quick"` or `"train,seed=3"`; None or '' is the
    base config. `config.variant` records the arg ('default' when empty). Unknown
    names and fields raise StudyError with the nearest valid one. Returns the config,
    locked against new fields.
    """
    config = base()
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    for part in parts:
        if "=" in part:
            name, _, value = part.partition("=")
            set_field(config, name.strip(), value.strip(), where=f"{study} config")
        elif part in variants:
            variants[part](config)
        elif part != "default":
            raise StudyError(f"unknown {study} variant {part!r}{nearest(part, variants)}; "
                             f"variants: {', '.join(variants)} (combine them with ',')")
    config.study = study
    config.variant = ",".join(parts) or "default"
    config.lock()
    return config


# --------------------------------------------------------------------------- data files


def fingerprint(path: str | os.PathLike) -> dict:
    """{'size': bytes, 'sha256': hex} of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


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
    def inputs_path(self) -> Path:
        return self.path / "inputs.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES  # written by `Report(..., directory=path)`

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"


def open_workdir(path: str | os.PathLike, config: Any,
                 data_files: Mapping[str, str | os.PathLike] | None = None) -> Workdir:
    """Create the workdir and record `config` and the fingerprints of `data_files`
    ({name: path}, the user files the run reads), or check both against the recorded ones.
    Call it after the config and the inputs have validated.

    Raises:
        WorkdirError: `path` is a file, or cannot be created.
        ConfigMismatchError: config.json exists and differs from `config`; the
            message lists each differing field, so a rerun never silently mixes
            two configs in one workdir.
        DataChangedError: a data file's size or SHA-256 differs from what the
            workdir's run read (inputs.json), naming the file.
    """
    wd = Workdir(Path(path))
    if wd.path.exists() and not wd.path.is_dir():
        raise WorkdirError(f"--workdir {wd.path} is a file, not a directory; give a directory (new or a run's)")
    try:
        wd.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create the workdir {wd.path}: {e.strerror}") from e
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
    inputs = {name: {"path": os.fspath(p), **fingerprint(p)} for name, p in (data_files or {}).items()}
    if wd.inputs_path.exists():
        for name, now in inputs.items():
            then = read_json(wd.inputs_path).get(name)
            if then is not None and (then["size"], then["sha256"]) != (now["size"], now["sha256"]):
                raise DataChangedError(
                    f"{now['path']} ({name}) changed since the run in {wd.path} read it (size {then['size']} -> "
                    f"{now['size']} bytes, SHA-256 {then['sha256'][:12]}... -> {now['sha256'][:12]}...); restore "
                    "the file, or use a new --workdir for the new data")
    if not wd.config_path.exists():
        write_json(wd.config_path, given)
    if inputs:
        write_json(wd.inputs_path, inputs)
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

r"""The one `main` every study binary shares: flags, one call, and one-line errors.

    python -m experiments.<study> --workdir=DIR [--config=configs/<study>.py[:ARG]] [--config.FIELD=VALUE ...]
    python -m experiments.run --workdir=DIR --config=configs/<study>.py[:ARG]   # dispatches on config.study

ARG is the config file's comma list of variants and overrides (`:nanda,quick`,
`:train,seed=3`; see `toymech.experiment.build_config`). Before any work starts, the
config is built and checked here: an unknown variant or `--config.FIELD` (with the
nearest valid name), a config for another study, and later a workdir that is a file,
a config that differs from the workdir's, changed data files, an invalid input or a
file that cannot be written all end the binary with one line `error: ...` and exit
status 1, not a traceback (TOYMECH_TRACEBACK=1 shows the traceback as well).

JAX's persistent compilation cache is on (`--compilation_cache_dir`, default
~/.cache/toymech/jax; `--nocompilation_cache` switches it off).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from toymech import checkpoint, compilation_cache, experiment

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _flag(argv: list[str], name: str) -> str | None:
    """The value of --name=VALUE or --name VALUE in argv (the last one), or None."""
    value = None
    for i, a in enumerate(argv[1:], 1):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load_config(spec: str):
    """The config of 'path/to/config.py[:ARG]', built by the file's get_config(ARG)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise experiment.StudyError(f"--config: no config file {path!r}")
    module_spec = importlib.util.spec_from_file_location("_toymech_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def check_overrides(argv: list[str], config) -> None:
    """StudyError for a --config.FIELD that the config does not have, naming the nearest field."""
    fields = experiment.flatten_config(experiment.config_to_dict(config))
    for a in argv[1:]:
        if a.startswith("--config."):
            name = a[len("--config."):].split("=", 1)[0]
            if name not in fields:
                raise experiment.StudyError(f"--config.{name}: no such config field{experiment.nearest(name, fields)}")


def write_failure(error: checkpoint.WriteError | OSError, workdir: str) -> str:
    """The one line for a save that failed: the file, why, and the last good checkpoint."""
    path = getattr(error, "path", None) or error.filename or "a file"
    reason = getattr(error, "reason", None) or error.strerror or str(error)
    latest = checkpoint.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return (f"could not write {path} ({reason}); the last good checkpoint is {latest or 'none yet'}, and nothing "
            "written before is lost: free space (or make the workdir writable) and rerun the same command to resume")


def _run_study(config, workdir: str) -> None:
    study = importlib.import_module(f"toymech.studies.{config.study}")
    try:
        study.train_and_evaluate(config, workdir)
    except checkpoint.WriteError as e:
        _fail(write_failure(e, workdir), e)
    except FileNotFoundError as e:  # a data file named in the config
        _fail(str(e), e)
    except OSError as e:  # a write outside checkpoint.atomic_write_bytes (a figure, a generated data file)
        _fail(write_failure(e, workdir), e)
    except ValueError as e:  # StudyError, CheckpointError and the inputs' own checks: messages for people
        _fail(str(e), e)


def _fail(message: str, error: BaseException | None = None):
    if error is not None and os.environ.get("TOYMECH_TRACEBACK"):
        raise error
    sys.exit(f"error: {message}")


def main(study: str | None = None, argv: list[str] | None = None) -> None:
    """Run a study binary: `study` is the binary's own study (None: dispatch on config.study)."""
    argv = list(sys.argv if argv is None else argv)
    spec = _flag(argv, "config")
    if spec is None:
        if study is None:
            _fail("give --config=configs/<study>.py[:variants]")
        spec = os.path.join(CONFIGS, f"{study}.py")
    try:
        config = load_config(spec)
        check_overrides(argv, config)
    except experiment.StudyError as e:
        _fail(str(e), e)
    if study is not None and config.study != study:
        _fail(f"{spec} is a {config.study} config; run it with python -m experiments.{config.study} "
              f"(this binary is {study})")
    config_flag = config_flags.DEFINE_config_file(
        "config", spec, "Config file and its variants/overrides: configs/<study>.py[:variant,...,field=value]",
        lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", required=True)
    cache_flag = flags.DEFINE_bool("compilation_cache", True, "Keep compiled XLA programs on disk, so that a rerun "
                                   "or another study with the same shapes skips compilation.")
    cache_dir_flag = flags.DEFINE_string("compilation_cache_dir", None, "Where: default $TOYMECH_CACHE_DIR or "
                                         "~/.cache/toymech/jax (see toymech.compilation_cache).")

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        if cache_flag.value:
            try:
                compilation_cache.enable(cache_dir_flag.value)
            except OSError as e:
                _fail(f"{e} (pass --nocompilation_cache to run without it)", e)
        _run_study(config_flag.value, workdir_flag.value)

    app.run(run, argv=argv)

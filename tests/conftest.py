"""Shared pytest fixtures and helpers: where ../shared lives, study configs, study binaries,
the quick run of every study (session-scoped, so the experiment tests and the browser test
share one run each) and the `slow` marker for whole-study runs.

`pytest -m "not slow"` is the fast inner loop (every unit test); plain `pytest -q` (the
README's command) runs everything, the whole-study runs included.
"""

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import pytest

from experiments import common
from toymech.studies import grokking, reverse, text_sum

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# The session's quick run of each study (fixtures below, "<study>_quick"; tests/test_report_browser.py
# opens each one's report).
QUICK_STUDIES = ("grokking_modular", "grokking_addition", "reverse", "sum_digits", "text_sum")
# Fixtures that run a whole study: every test using one is marked slow.
SLOW_FIXTURES = {"quick", "quick_workdir", "processed", "quick_report"} | {f"{s}_quick" for s in QUICK_STUDIES}


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module. XLA:CPU keeps every
    executable's machine code mapped in the process. Kept for the whole suite, the
    mappings grew by thousands per test module toward the kernel's limit
    (vm.max_map_count, 65,530 by default), and about 500 tests in, a compilation crashed."""
    yield
    jax.clear_caches()
    gc.collect()


def study_config(study: str, arg: str | None = None):
    """configs/<study>.py's config for `arg` (variants and overrides, as after ':' on the command line)."""
    return common.load_config(f"{REPO / 'configs' / study}.py" + (f":{arg}" if arg else ""))


def run_binary(study: str, workdir, *flags: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m experiments.<study> --workdir=... FLAGS`, run from the repository as a user would."""
    return subprocess.run([sys.executable, "-m", f"experiments.{study}", f"--workdir={workdir}", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (models, fixtures, seeds), beside the repo."""
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared folder beside the repository at {SHARED}")
    return SHARED


class QuickRun(NamedTuple):
    """A finished quick run: its config, workdir and results (returned, or read from results.json
    for a run of the binary, whose stderr is kept too)."""

    config: Any
    workdir: Path
    results: dict
    stderr: str | None = None


def _binary_run(tmp_path_factory, study: str, *flags: str) -> QuickRun:
    workdir = tmp_path_factory.mktemp(study) / "quick"
    proc = run_binary(study, workdir, f"--config=configs/{study}.py:quick", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return QuickRun(study_config(study, "quick"), workdir, json.loads((workdir / "results.json").read_text()),
                    proc.stderr)


def _library_run(tmp_path_factory, module, study: str, arg: str = "quick") -> QuickRun:
    config = study_config(study, arg)
    workdir = tmp_path_factory.mktemp(study)
    return QuickRun(config, workdir, module.train_and_evaluate(config, workdir))


@pytest.fixture(scope="session")
def grokking_modular_quick(tmp_path_factory) -> QuickRun:
    """The grokking binary, run as a user would, on the quick variant (modular addition), with a
    compilation cache."""
    cache = tmp_path_factory.mktemp("compilation_cache")
    run = _binary_run(tmp_path_factory, "grokking", f"--compilation_cache_dir={cache}")
    assert any(not f.name.startswith(".") for f in cache.iterdir()), "the binary cached no compiled program"
    return run


@pytest.fixture(scope="session")
def grokking_addition_quick(tmp_path_factory) -> QuickRun:
    """`grokking.train_and_evaluate` on the addition,quick variant."""
    return _library_run(tmp_path_factory, grokking, "grokking", "addition,quick")


@pytest.fixture(scope="session")
def reverse_quick(tmp_path_factory) -> QuickRun:
    return _library_run(tmp_path_factory, reverse, "reverse")


@pytest.fixture(scope="session")
def sum_digits_quick(tmp_path_factory) -> QuickRun:
    """The sum_digits binary, run as a user would, on the quick variant."""
    return _binary_run(tmp_path_factory, "sum_digits")


@pytest.fixture(scope="session")
def text_sum_quick(tmp_path_factory) -> QuickRun:
    return _library_run(tmp_path_factory, text_sum, "text_sum")

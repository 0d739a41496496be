"""Shared pytest fixtures and helpers: where ../shared lives, study configs, study binaries,
and the `slow` marker for whole-study runs.

`pytest -m "not slow"` is the fast inner loop (every unit test); plain `pytest -q` (the
README's command) runs everything, the whole-study runs included.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import common

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Fixtures that run a whole study: every test using one is marked slow.
SLOW_FIXTURES = {"quick", "quick_workdir", "processed"}


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

"""Shared pytest fixtures: where ../shared lives, and test-wide JAX settings."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (models, fixtures, seeds), beside the repo."""
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared folder beside the repository at {SHARED}")
    return SHARED

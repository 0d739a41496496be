"""What every study shares: the study layer's common code.

Studies import this module and never one another (tests/test_layers.py).
"""

from __future__ import annotations

import numpy as np

from toymech import experiment
from toymech.report import Report


def first_epoch_at_least(epochs: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first epoch whose value is >= level, or None."""
    hit = np.flatnonzero(np.asarray(values) >= level)
    return int(epochs[hit[0]]) if hit.size else None


def config_section(config, rep: Report) -> None:
    """The run's config as a table of dotted fields (what config.json holds)."""
    sec = rep.section("Configuration")
    flat = experiment.flatten_config(experiment.config_to_dict(config))
    sec.table(["field", "value"], [[k, v] for k, v in flat.items()], caption="The run's config (config.json)")

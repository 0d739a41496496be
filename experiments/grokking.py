r"""Grokking study binary (study 3): flags only; the study is `toymech.studies.grokking`.

  python -m experiments.grokking --workdir=/tmp/grokking                      # default: groks in minutes
  python -m experiments.grokking --workdir=/tmp/nanda --config=configs/grokking.py:nanda
  python -m experiments.grokking --workdir=/tmp/add --config=configs/grokking.py:addition \
      --config.num_epochs=5000

See configs/grokking.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from toymech.experiment import ConfigMismatchError
from toymech.studies import grokking

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "grokking.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.normpath(_DEFAULT_CONFIG),
    "Config file, optionally with a variant: configs/grokking.py[:nanda|addition|quick|addition_quick].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        grokking.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ConfigMismatchError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)

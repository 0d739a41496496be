r"""Reverse and increment (study 2): flags only; the study is `toymech.studies.reverse`.

  python -m experiments.reverse --workdir=/tmp/reverse                     # default: the study
  python -m experiments.reverse --workdir=/tmp/rv_quick --config=configs/reverse.py:quick
  python -m experiments.reverse --workdir=/tmp/reverse_s1 --config.seed=1      # another initialisation

See configs/reverse.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from toymech.studies import reverse

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "reverse.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.normpath(_DEFAULT_CONFIG), "Config file, optionally with a variant: configs/reverse.py[:quick].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    reverse.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

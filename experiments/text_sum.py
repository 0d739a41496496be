r"""Regression of a sum from text (study 1): flags only; the study is `toymech.studies.text_sum`.

  python -m experiments.text_sum --workdir=/tmp/text_sum                  # default: the study
  python -m experiments.text_sum --workdir=/tmp/ts_quick --config=configs/text_sum.py:quick
  python -m experiments.text_sum --workdir=/tmp/ts_mine \
      --config.data.train_tsv=train.tsv --config.data.val_tsv=val.tsv  # your own x<TAB>y<TAB>z files

See configs/text_sum.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from toymech.studies import text_sum

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "text_sum.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.normpath(_DEFAULT_CONFIG), "Config file, optionally with a variant: configs/text_sum.py[:quick].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    text_sum.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

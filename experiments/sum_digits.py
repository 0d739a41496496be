r"""Sum-of-two-4-digit-numbers study binary (study 4): flags only; the study is `toymech.studies.sum_digits`.

  python -m experiments.sum_digits --workdir=/tmp/sum_digits                  # the challenge's checkpoint
  python -m experiments.sum_digits --workdir=/tmp/sum_train --config=configs/sum_digits.py:train
  python -m experiments.sum_digits --workdir=/tmp/sum_full --config=configs/sum_digits.py:challenge
  python -m experiments.sum_digits --workdir=/tmp/sum_other \
      --config.checkpoint=/path/to/sum_model.pt --config.n_eval=200

See configs/sum_digits.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from toymech.studies import sum_digits

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "sum_digits.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.normpath(_DEFAULT_CONFIG),
    "Config file, optionally with a variant: configs/sum_digits.py[:train|challenge|quick|train_quick].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sum_digits.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

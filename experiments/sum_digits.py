r"""Sum-of-two-4-digit-numbers study binary (study 4): flags only (`experiments.common.main`); the study is `toymech.studies.sum_digits`.

  python -m experiments.sum_digits --workdir=/tmp/sum_digits                  # the challenge's checkpoint
  python -m experiments.sum_digits --workdir=/tmp/sum_train --config=configs/sum_digits.py:train
  python -m experiments.sum_digits --workdir=/tmp/sum_full --config=configs/sum_digits.py:challenge
  python -m experiments.sum_digits --workdir=/tmp/sum_other \
      --config.checkpoint=/path/to/sum_model.pt --config.n_eval=200

See configs/sum_digits.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

from experiments import common

if __name__ == "__main__":
    common.main("sum_digits")

r"""Grokking study binary (study 3): flags only (`experiments.common.main`); the study is `toymech.studies.grokking`.

  python -m experiments.grokking --workdir=/tmp/grokking                      # default: groks in minutes
  python -m experiments.grokking --workdir=/tmp/nanda --config=configs/grokking.py:nanda
  python -m experiments.grokking --workdir=/tmp/add --config=configs/grokking.py:addition \
      --config.num_epochs=5000

See configs/grokking.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

from experiments import common

if __name__ == "__main__":
    common.main("grokking")

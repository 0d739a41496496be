r"""Reverse and increment (study 2): flags only (`experiments.common.main`); the study is `toymech.studies.reverse`.

  python -m experiments.reverse --workdir=/tmp/reverse                     # default: the study
  python -m experiments.reverse --workdir=/tmp/rv_quick --config=configs/reverse.py:quick
  python -m experiments.reverse --workdir=/tmp/reverse_s1 --config.seed=1      # another initialisation

See configs/reverse.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

from experiments import common

if __name__ == "__main__":
    common.main("reverse")

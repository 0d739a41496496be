r"""Regression of a sum from text (study 1): flags only (`experiments.common.main`); the study is `toymech.studies.text_sum`.

  python -m experiments.text_sum --workdir=/tmp/text_sum                  # default: the study
  python -m experiments.text_sum --workdir=/tmp/ts_quick --config=configs/text_sum.py:quick
  python -m experiments.text_sum --workdir=/tmp/ts_mine \
      --config.data.train_tsv=train.tsv --config.data.val_tsv=val.tsv  # your own x<TAB>y<TAB>z files

See configs/text_sum.py for the variants and what to expect. Rerunning a command
with the same workdir resumes it; a different config in that workdir is refused.
"""

from experiments import common

if __name__ == "__main__":
    common.main("text_sum")

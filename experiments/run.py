r"""Any study from its config file: dispatches on `config.study` (`experiments.common.main`).

  python -m experiments.run --workdir=/tmp/grokking_quick --config=configs/grokking.py:quick
  python -m experiments.run --workdir=/tmp/sd --config=configs/sum_digits.py:train,quick
"""

from experiments import common

if __name__ == "__main__":
    common.main()

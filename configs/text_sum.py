r"""Regression of a sum from text (study 1): an encoder reads "x + y = ?" and outputs x + y.

  python -m experiments.text_sum --workdir=/tmp/text_sum

Expect: 4 min 30 s of wall time (67 CPU-seconds of user time; training 164 s),
measured 2026-12-02 on the project's 2-core CPU shared with other jobs (load average
10.5 at the start, 13.7 at the end): training + probes + causal tests + report; the
report is /tmp/text_sum/report.html. Measured in that run (seed 0): best
validation MSE 8.1e-5 in scaled units (sum / 2000; RMSE 18 in sum units) at epoch 9,
under the notebook's 0.0012; ridge probe R² for x + y 0.998 at the pooled last token
(notebook 0.986) and 0.73-0.95 by position (notebook 0.76-0.92); the notebook's
readout test 261 -> 1005 (notebook 2440 -> 9712; a random direction: 267); inside
the forward pass the model's own MSE 324 -> 168,000 with the sum direction's
component set to its mean at the last real token of the final residual stream
(a random direction: 850).

Variants (`--config=configs/text_sum.py:VARIANT[,field=value...]`, e.g. `:quick,seed=1`):

  (default)  20,000 training and 2,000 validation problems with operands 0..999
             (sums 0..1998), AdamW lr 1e-3 (weight decay 0.01, PyTorch's default),
             batch 64, 10 epochs; the analyses use the epoch with the best validation MSE.
  quick      a tiny model on 512 problems for 2 epochs, for tests: seconds.

Your own data: `--config.data.train_tsv=train.tsv --config.data.val_tsv=val.tsv` (lines
`x<TAB>y<TAB>z` with z = x + y; a malformed line is an error naming file and line).
Without them the split is generated deterministically (`data.seed`) into
<workdir>/data/{train,val}.tsv. Any field can be overridden, e.g.
`--config.num_epochs=20 --config.model.d_model=32`.
"""

import ml_collections

from toymech.experiment import build_config

def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "text_sum"
    c.variant = "default"
    c.seed = 0  # model init (toymech.init_params key) and batch order
    c.data = ml_collections.ConfigDict(dict(
        train_tsv="", val_tsv="",  # user files; empty: generate the split below
        n_train=20_000, n_val=2_000, max_operand=999, seed=0))
    c.model = ml_collections.ConfigDict(dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=16))
    c.optimizer = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, weight_decay=0.01))
    c.batch_size = 64
    c.num_epochs = 10
    c.checkpoint_every = 1  # resumable training state, in epochs
    c.log_every = 1  # progress lines
    c.analysis = ml_collections.ConfigDict(dict(
        probe_alpha=1.0,  # ridge penalty of the probes and of the readout (sklearn's Ridge default)
        probe_test_size=0.25,  # held-out share of the validation problems for out-of-sample R²
        n_random_directions=8,  # control: random directions projected out instead of the sum direction
        chunk_size=4,  # interventions run at once (vmapped) in the forward-pass causal test
        seed=0))  # probe split and random directions
    return c


def _quick(c) -> None:
    c.data.n_train, c.data.n_val, c.data.max_operand = 512, 256, 99
    c.model.update(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    c.num_epochs = 2
    c.analysis.n_random_directions = 2


VARIANTS = {"quick": _quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: variants and field=value overrides, comma-separated (see the docstring)."""
    return build_config(_base, VARIANTS, arg, study="text_sum")

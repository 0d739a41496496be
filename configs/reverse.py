r"""Reverse and increment (study 2): a 2-layer, d_model-4 decoder writes reverse(x) + 1 mod 4.

  python -m experiments.reverse --workdir=/tmp/reverse

Expect: training, analyses and a report (/tmp/reverse/report.html). Timed 2026-12-02 only
inside the `seeds` run below: the seed-4 training took 384 s of wall time there, on the
project's 2-core CPU shared with other jobs (load average ~12). Measured in that
run (2026-12-02) with the default seed 4: holdout accuracy ~90% from epoch 6 to 23,
then 99.0% at epoch 25 and 100% from epoch 26 to 40 without a dip (the notebook: 100%
from epoch 19; an earlier toymech version reached 100% at epoch 16 and dipped to 99.5%
at 22). Zeroing layer-0 MLP W_out, layer-1 MLP W_out or layer-0 attention W_O leaves
27.0%, 13.6% and 41.9% (the notebook's model: 20.97%, 24.11%, 38.80%); zeroing
layer-1 attention W_O leaves 21.5%: this model copies the mirrored input mostly
through layer-1 attention (mean attention weight on it 56% in layer 1, 14% in layer
0), the report's section "Which layer copies the mirrored input".

Seeds. A 4-dimensional residual stream does not find the whole algorithm from every
initialisation. The `seeds` variant (measured 2026-12-02: 34 min 55 s of wall time for
the seed-4 run plus the 8-seed sweep and both reports, 8 min 28 s of user CPU time, on
the shared 2-core CPU at load average 11-14) trains seeds 0..7 at once: final holdout
accuracy 78.4, 68.6, 63.2, 100, 100, 89.0, 96.1, 92.7%; only seeds 3 and 4 reach
100% (first at epochs 17 and 12; seed 3 falls below it again at epochs 24 and 27).
Seed 4 of the sweep starts from the same parameters and batches as the main run but
its vmapped kernels round differently, and here the two runs reach 100% at different
epochs (12 and 26). The notebook's recipe in PyTorch + TransformerLens ended at 90.8%
and 71.8% for torch seeds 0 and 1: the notebook's 100% is one of the good
initialisations. The default uses seed 4 so that the analyses look at a model that
solves the task.

Variants (`--config=configs/reverse.py:VARIANT[,VARIANT...][,field=value...]`, e.g.
`:seeds,quick` or `:seed=1`):

  (default)  the notebook's setting: all 4^8 inputs, the first 60,000 for training
             and the last 5,536 held out; AdamW lr 6e-3 (weight decay 0.01, PyTorch's
             default), batch 256, 40 epochs, lr x (epoch+1)/5 for 5 warmup epochs then
             x 0.65 (1 + cos(pi (epoch-5)/35)) per epoch, gradient norm clipped at 1.
  seeds      the default plus seeds 0..7 trained at once (train_many, vmapped) and
             compared, in one vmapped program (timed above).
  quick      2 epochs, for tests: seconds.

Model (all): 2 layers, d_model 4, 1 head of d_head 2, d_mlp 16, ReLU, LayerNorm,
causal, n_ctx 17 (fed 16 tokens). Any field can be overridden, e.g.
`--config.seed=1 --config.num_epochs=60 --config.optimizer.total=60`.
"""

import ml_collections

from toymech.experiment import build_config

def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "reverse"
    c.variant = "default"
    c.seed = 4  # initial parameters (engine init key fold_in(key(seed), 0)) and batch order; see the docstring
    c.n_train = 60_000  # the first n_train of the 65,536 sequences train; the rest are held out
    c.model = ml_collections.ConfigDict(dict(n_layers=2, d_model=4, n_heads=1, d_head=2, d_mlp=16))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=6e-3, weight_decay=0.01, clip_norm=1.0,
        schedule="warmup_cosine", schedule_unit="epoch", warmup=5, total=40, peak=1.3, end=0.0))
    c.batch_size = 256
    c.num_epochs = 40
    c.checkpoint_every = 5  # resumable training state, in epochs
    c.log_every = 5  # progress lines
    c.analysis = ml_collections.ConfigDict(dict(
        n_examples=2))  # holdout sequences shown one by one (attention, MLP-0 output), as the notebook
    c.seed_sweep = ()  # seeds also trained at once (train_many) to show the spread; () = none
    return c


def _seeds(c) -> None:
    c.seed_sweep = tuple(range(8))


def _quick(c) -> None:
    c.num_epochs = 2
    c.optimizer.update(warmup=1, total=2)
    c.checkpoint_every, c.log_every = 1, 1


VARIANTS = {"seeds": _seeds, "quick": _quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: variants and field=value overrides, comma-separated (see the docstring)."""
    return build_config(_base, VARIANTS, arg, study="reverse")

r"""Reverse and increment (study 2): a 2-layer, d_model-4 decoder writes reverse(x) + 1 mod 4.

  python -m experiments.reverse --workdir=/tmp/reverse

Expect: about 2 minutes on a 2-core CPU (training + analyses + report); the report is
/tmp/reverse/report.html. With the default seed 4 the holdout accuracy is 100% from
epoch 16 to 40 (the notebook: from epoch 19); zeroing layer-0 MLP W_out, layer-1 MLP
W_out or layer-0 attention W_O leaves 28.0%, 18.9% and 83.5% (the notebook's model:
20.97%, 24.11%, 38.80%; ours copies mostly with layer-1 attention, whose W_O zeroed
leaves 34.5%).

Seeds. A 4-dimensional residual stream does not find the whole algorithm from every
initialisation. Of seeds 0..7 (the `seeds` variant) only seed 4 reached 100% within
the 40 epochs (final holdout accuracy 89.5, 68.6, 59.5, 99.4, 100, 74.3, 89.1, 96.3%),
and the notebook's recipe in PyTorch + TransformerLens ended at 90.8% and 71.8% for
torch seeds 0 and 1: the notebook's 100% is one of the good initialisations. The
default uses seed 4 so that the analyses look at a model that solves the task.

Variants (`--config=configs/reverse.py:VARIANT[,VARIANT...][,field=value...]`, e.g.
`:seeds,quick` or `:seed=1`):

  (default)  the notebook's setting: all 4^8 inputs, the first 60,000 for training
             and the last 5,536 held out; AdamW lr 6e-3 (weight decay 0.01, PyTorch's
             default), batch 256, 40 epochs, lr x (epoch+1)/5 for 5 warmup epochs then
             x 0.65 (1 + cos(pi (epoch-5)/35)) per epoch, gradient norm clipped at 1.
  seeds      the default plus seeds 0..7 trained at once (train_many, vmapped) and
             compared, in one vmapped program (not timed here).
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

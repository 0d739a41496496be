r"""Reverse and increment (study 2): a 2-layer, d_model-4 decoder writes reverse(x) + 1 mod 4.

  python -m experiments.reverse --workdir=/tmp/reverse

Expect: RUNTIME on a 2-core CPU (training + analyses + report). The notebook's run
reached 100% holdout accuracy from epoch 19 to 40, and zeroing layer-0 MLP W_out,
layer-1 MLP W_out or layer-0 attention W_O left 20.97%, 24.11% and 38.80%; the report
(/tmp/reverse/report.html) sets this run's numbers beside them. A d_model-4 model is
sensitive to its initialisation: another `--config.seed` may converge later or to
less than 100%.

Variants (`--config=configs/reverse.py:VARIANT`):

  (default)  the notebook's setting: all 4^8 inputs, the first 60,000 for training
             and the last 5,536 held out; AdamW lr 6e-3 (weight decay 0.01, PyTorch's
             default), batch 256, 40 epochs, lr x (epoch+1)/5 for 5 warmup epochs then
             x 0.65 (1 + cos(pi (epoch-5)/35)) per epoch, gradient norm clipped at 1.
  quick      2,048 training sequences, 2 epochs, for tests: seconds.

Model (both): 2 layers, d_model 4, 1 head of d_head 2, d_mlp 16, ReLU, LayerNorm,
causal, n_ctx 17 (fed 16 tokens). Any field can be overridden, e.g.
`--config.seed=1 --config.num_epochs=60 --config.optimizer.total=60`.
"""

import ml_collections

VARIANTS = ("default", "quick")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = "default"
    c.seed = 0  # model init (toymech.init_params key) and batch order
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
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The config of `variant` (None or '' is 'default'); see the module docstring."""
    variant = variant or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown reverse variant {variant!r}; choose one of {VARIANTS}")
    c = _base()
    c.variant = variant
    if variant == "quick":
        c.n_train, c.num_epochs = 2048, 2
        c.optimizer.update(warmup=1, total=2)
        c.checkpoint_every, c.log_every = 1, 1
    return c

r"""Sum of two 4-digit numbers (study 4): the ARENA challenge model, loaded or trained, taken apart.

Analyse the challenge's own checkpoint (the default):

  python -m experiments.sum_digits --workdir=/tmp/sum_digits

Expect: 44 CPU-seconds, measured on this project's 2-core CPU (163 s of wall time there
while ~16 processes shared the 2 cores). On the challenge's 1,000 evaluation sequences
the processed model gives mean cross-entropy 0.007 and probability 0.993 / 0.996 /
0.759 (mean / median / min) on the correct digit, exactly the challenge's numbers,
which the report sets beside them; then W_U's circle of digits, the ablations,
QK/OV circuits, DLA, the carry splits and the edge circuit of each sum digit
(/tmp/sum_digits/report.html; the circuits, on 256 pairs of their own, add about a minute).

Variants (`--config=configs/sum_digits.py:VARIANT[,VARIANT...][,field=value...]`, applied
left to right, e.g. `:train,quick` or `:train,seed=3`):

  (default)    mode 'load': ../shared/models/arena/sum_model.pt (`checkpoint`), all
               1,000 sequences of ../shared/fixtures/arena_sum_eval_1000.txt
               (`eval_fixture`, `n_eval`). Relative paths are resolved against
               `data_dir`, by default the checkout holding this config file.
  train        mode 'train': the same architecture from scratch with the challenge's
               recipe -- Adam with L2 weight decay 0.001 (not AdamW), lr falling
               linearly per epoch from 2e-3 (first epoch) to 1e-4 (last epoch), batch
               512, 100,000 training sequences (data seed 0), 5,000 validation
               sequences (seed 1), validation after every epoch, the epoch with the
               best validation accuracy kept -- but 20 epochs instead of the challenge's
               100, with the lr schedule compressed to them, because 100 epochs take
               far too long here. Measured on the shared 2-core CPU (load ~14): 20
               epochs in 36 min (108 s per epoch; a step of 512 sequences is 1.4 GFLOP,
               0.12 CPU-s, ~24 CPU-s per epoch), per-digit validation accuracy 0.9939 at
               epoch 20 (the best; sequence accuracy 0.976), final train loss 0.027; on
               the 1,000 evaluation sequences mean cross-entropy 0.025, per-digit
               accuracy 0.995.
  challenge    the full recipe, 100 epochs (19,600 steps). Measured 2026-12-02 on the
               project's 2-core CPU shared with other jobs (load average 1.3 at the
               start, 9-14 during): training 40 min 20 s of wall time (13 min 48 s of
               user CPU time; 8 steps/s), then the analyses as a rerun of the finished
               workdir (1 min 24 s, load 7.7-8.1). Per-digit validation accuracy 0.969 after
               epoch 5, 0.992 after 20, 0.997 after 30, 0.9986 at the best epoch, 90
               (sequence accuracy 0.994; never 0.999: per sum digit c2, c3, c4 pass
               0.999 at epochs 27, 7, 3, the leading digit c1 ends at 0.995), final
               train loss 0.0066; on the 1,000 evaluation sequences mean cross-entropy
               0.0081 and probability 0.993 / 0.999 / 0.031 (mean / median / min) on
               the correct digit (the checkpoint: 0.007, 0.993 / 0.996 / 0.759),
               per-digit accuracy 0.999, sequence accuracy 0.996. The challenge's run reached
               per-digit validation accuracy 0.999 by epoch 47 and 1.000 at its best
               epoch (83), final train loss 0.0062. Head findings (the same measurements
               on both models): shared, a layer-0 corresponding-digit head for every
               sum digit and the most critical head (mean ablation) in layer 0; not
               shared, the digit sets of those heads (here H0.0 c1-c4, H0.1 c2-c4, H0.2
               none; the checkpoint H0.0 c1, H0.1 c1 c3 c4, H0.2 c2 c3 c4), negligible
               layer-0 queries (here H0.2's cost 0.22), and carry handling by the
               layer-1 keys (their ablation costs 0.69/1.21/0.33 without a carry and
               1.39/1.23/0.89 with one here, 0.08/0.19/0.08 and 3.31/4.82/3.50 in the
               checkpoint).
  quick        'load' on the first 64 evaluation sequences, every analysis: ~35
               CPU-seconds (mostly compilation and the 26 figures) before the circuits
               were added, 56 s of wall time with them (the test run, shared 2-core CPU).
               After `train` (`:train,quick`): 'train' on 256 sequences for 3 epochs
               (batch 64), then every analysis
               on 64 evaluation sequences: ~45 CPU-seconds, for tests.

Any field can be overridden, e.g. `--config=configs/sum_digits.py:train
--config.num_epochs=40` (the lr schedule follows num_epochs; it needs num_epochs >= 2).
A rerun with the same workdir resumes training; a different config there is refused.
Model (all): 2 layers, 3 heads of d_head 24, d_model 48, no MLP, LayerNorm, causal,
d_vocab 12 (digits, '+' = 10, '=' = 11), n_ctx 14; the analyses use the processed
weights (LayerNorm folded, writing weights and W_U centred, value biases folded).
"""

import os

import ml_collections

from toymech.experiment import build_config

# Relative data paths (`checkpoint`, `eval_fixture`) are resolved against `data_dir`: by
# default the checkout this config file lives in (override with --config.data_dir=...).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "sum_digits"
    c.variant = "default"
    c.mode = "load"  # 'load': the checkpoint below | 'train': train from scratch
    c.data_dir = _CHECKOUT  # relative paths below are resolved against this directory
    c.checkpoint = "../shared/models/arena/sum_model.pt"
    c.eval_fixture = "../shared/fixtures/arena_sum_eval_1000.txt"
    c.n_eval = 0  # evaluate and analyse the first n_eval fixture sequences; 0 = all
    c.model = ml_collections.ConfigDict(dict(n_layers=2, d_model=48, n_heads=3, d_head=24))
    # --- mode 'train'
    c.seed = 0  # model init (toymech.init_params key) and batch order
    c.data_seed = 0  # training sequences; validation sequences use data_seed + 1
    c.n_train = 100_000
    c.n_val = 5_000
    c.batch_size = 512
    c.num_epochs = 20
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam", lr=2e-3, weight_decay=1e-3,  # torch Adam: L2 decay added to the gradient
        schedule="linear", schedule_unit="epoch", peak=1.0, end=0.05))  # lr x 1 -> x 0.05 = 1e-4
    c.optimizer.total = c.get_ref("num_epochs") - 1  # reaches 1e-4 at the last epoch
    c.checkpoint_every = 5  # resumable training state, in epochs
    c.log_every = 1  # progress lines
    c.analysis = ml_collections.ConfigDict(dict(
        significant_dim_fraction=0.1,  # W_U rows varying over digits >= this x the largest are "significant"
        corresponding_digit_threshold=0.5))  # layer-0 positional attention to a_i + b_i that counts as "CD"
    return c


def _train(c) -> None:
    c.mode = "train"


def _challenge(c) -> None:
    c.mode, c.num_epochs, c.checkpoint_every = "train", 100, 10


def _quick(c) -> None:
    """64 evaluation sequences; in mode 'train' also 256 training sequences for 3 epochs."""
    c.n_eval = 64
    if c.mode == "train":
        c.n_train, c.n_val, c.batch_size, c.num_epochs, c.checkpoint_every = 256, 64, 64, 3, 1


VARIANTS = {"train": _train, "challenge": _challenge, "quick": _quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: variants and field=value overrides, comma-separated (see the docstring)."""
    return build_config(_base, VARIANTS, arg, study="sum_digits")

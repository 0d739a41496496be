r"""Grokking (study 3): modular addition (Nanda et al.) and plain addition of 0..9.

Run the default (modular addition mod 59 that groks in minutes on a CPU):

  python -m experiments.grokking --workdir=/tmp/grokking

Expect: 45 s end to end, training at ~127 epochs/s (4,000 full-batch epochs), measured
2026-12-03 07:46 UTC on the project's 2-core CPU from a fresh clone with the README's
command (69 s including the venv and `pip install`), nothing else running (load average 0.7).
Train accuracy passes 99% at epoch 68 while test accuracy stays near chance (chance 1.7%;
4.3% at epoch 250, 9.0% at 1,000, 20% at 2,000; test loss peaks at 22.7 at epoch 1,280),
then jumps: 51% at 2,500, 98.7% at 2,800 and >= 99% from epoch 2,820 (grokking); test loss
1.3e-3 at 3,000 and 4.5e-5 at 4,000 while weight decay keeps cleaning up; key frequencies
8, 9, 13, 28; phases detected: memorisation ends 1,250 (the snapshot of the test-loss
peak), circuit formation ends 2,550, cleanup ends 3,050. (The exact epoch moves between
machines and code versions: float rounding differs and Adam's slingshots amplify it; the
run of 2026-12-02, before the training chunks compiled with YNNPACK dots, grokked at 2,400
with key frequencies 8, 9, 13, 19, in 85 s.) The report is /tmp/grokking/report.html;
results.json has every number ('headline': grokking epoch, final test accuracy, key
frequencies, phase boundaries).

Variants (`--config=configs/grokking.py:VARIANT[,VARIANT...][,field=value...]`, applied left
to right, e.g. `:addition,quick` or `:nanda,num_epochs=5000`):

  (default)  p = 59, frac_train 0.3, AdamW lr 3e-3, weight decay 3.0, 4,000 epochs,
             snapshots every 50. Chosen by real runs on a 2-core CPU: the plateau
             before grokking shrinks roughly like 1 / (lr * wd), so lr * wd is 9x
             Nanda's; a training fraction of 0.4 or more generalises almost at
             once (no visible delay), 0.3 keeps the long memorisation plateau;
             p = 59 keeps an epoch cheap (1,044 training pairs).
  nanda      Nanda et al. / the TransformerLens demo: p = 113, frac_train 0.3, lr
             1e-3, wd 1.0, 25,000 epochs, snapshots every 100. toymech's run
             (measured 2026-12-03 06:50 UTC on the 2-core CPU with nothing else
             running, load average 1.5 at the start, 0.8 at the end): 12 min 46 s
             end to end (training 746 s at 33.7 epochs/s, then the analyses and
             the report). Train accuracy passes 0.99 at epoch 161; test loss
             peaks at 33.3 at epoch 1,400, is 24.1 at 9,400, 12.9 at 13,000, 2.55
             at 14,000 and 0.196 at 14,500; test accuracy passes 0.99 at epoch
             14,900 and ends at 1.0 (final test loss 1.8e-7); key frequencies 9,
             19, 34, 45, 55; phases detected: memorisation ends 1,400 (the
             test-loss peak; the excluded-loss minimum is at 1,500), circuit
             formation ends 13,900 (restricted loss 4.64 -> 0.0003 meanwhile, test
             loss never below log 113 = 4.73 before it), cleanup ends 15,400. The
             demo's curves: the logits' cosine similarity to their key-frequency
             fit 0.06 at epoch 1,000, 0.24 at 9,000, 0.67 at 13,000, 0.94 at
             15,000, 0.99 at 25,000 (residual 1.00 -> 0.15); 434 of 512 neurons
             cluster on one frequency (>= 0.85 of their variance), Gaussian
             activations of the same shape 0. Before the training chunks compiled
             with YNNPACK dots (`train.CPU_COMPILER_OPTIONS`) the same run took
             17 min 42 s (2026-12-02, training 1,036 s at 24 epochs/s) and grokked
             at 15,800 with key frequencies 3, 9, 19, 34, 55 and phases 1,400 /
             14,400 / 16,300: the dots round differently, and 25,000 epochs of
             Adam amplify it. The reference's numbers (the TransformerLens demo):
             test loss peaks ~34 near epoch 1,400, still 7.5 at 13,000, 0.24 at
             14,000; the paper's phases 0-1.4k / 1.4k-9.4k / 9.4k-14k.
  addition   the notebook's plain addition of 0..9 (p = 10, labels a + b,
             frac_train 0.72, 10,000 epochs, lr 1e-3, wd 1.0). Measured 2026-12-02 on
             the shared 2-core CPU (load average 2.0 at the start, 9.0 at the end):
             2 min 49 s end to end, of which training ~20 s (~500 epochs/s); a rerun
             of the finished workdir (analyses and report only) 1 min 37 s (load 12).
             That run: train accuracy >= 0.99 at epoch 57, test at 600, final test
             accuracy 1.0. Its embedding has the linear feature on PC1 (61% of the
             variance), parity on PC2 (28%) and the parabola on PC3 (7%) (the
             notebook's run: linear PC1 73%, parabola PC2 25%). Keeping only the
             linear feature (the notebook's PC2 ablation, by meaning; here also PC1
             by index) leaves accuracy 0.48 (notebook 0.42); removing only the
             parabola leaves 0.98, the linear and parity PCs alone 0.98, so this
             model needs parity, not the parabola. Pre-activations ~ degree-2 of
             (linear, parabola): mean R² 0.918; of (PC1, PC2) = (linear, parity):
             0.999 (notebook 0.998). 302 of 512 neurons are dead at the end (never
             fire on the 100 inputs); from the snapshots, 178 of them died between
             epochs 7,000 and 7,500 and 95 between 9,500 and 10,000; W_L's top two PCs hold 84.7% (85.8% over the live
             neurons; notebook 98.3%).
  quick      tiny, for tests (seconds): modular at p = 23 for 300 epochs; after
             `addition` (`:addition,quick`), plain addition for 1,000 epochs.

Any field can be overridden, e.g. `--config.num_epochs=2000 --config.optimizer.lr=1e-3`.
Shared by every variant: 1 layer, 4 heads, d_model 128, d_head 32, d_mlp 512, ReLU,
no LayerNorm, causal, biases frozen at zero; full-batch AdamW betas (0.9, 0.98); data
seed 598 (numpy permutation, see toymech.tasks.grokking), model seed 999.
"""

import ml_collections

from toymech.experiment import build_config

def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "grokking"
    c.variant = "default"
    c.task = "modular"  # 'modular': (a + b) mod p | 'plain': a + b
    c.p = 59
    c.frac_train = 0.3
    c.data_seed = 598
    c.model_seed = 999
    c.model = ml_collections.ConfigDict(dict(
        n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, act_fn="relu"))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", lr=3e-3, weight_decay=3.0, b1=0.9, b2=0.98, frozen=("b_",)))
    # float32 matmuls at full precision on every backend (no TF32 on NVIDIA GPUs), as the
    # PyTorch reference runs; no effect on CPU.
    c.matmul_precision = "highest"
    c.num_epochs = 4000
    c.eval_every = 10  # test loss/accuracy and a metrics.jsonl row every this many epochs
    c.snapshot_every = 50  # parameter snapshots for the progress measures
    c.checkpoint_every = 500  # resumable training state
    c.log_every = 250  # progress lines
    c.analysis = ml_collections.ConfigDict(dict(
        key_frequency_fraction=0.25,  # key freq: embedding norm >= this x the largest
        neuron_cluster_threshold=0.85,  # neuron belongs to a freq explaining >= this of its variance
        # Phase rules (see toymech.studies.grokking_modular.detect_phases):
        grokked_accuracy=0.99,  # test accuracy that counts as generalised
        cleanup_test_loss=1e-3,  # cleanup ends when test loss first falls below this
        ))
    return c


def _nanda(c) -> None:
    c.p, c.frac_train, c.num_epochs = 113, 0.3, 25_000
    c.optimizer.lr, c.optimizer.weight_decay = 1e-3, 1.0
    c.eval_every, c.snapshot_every, c.checkpoint_every, c.log_every = 100, 100, 1000, 500


def _addition(c) -> None:
    c.task, c.p, c.frac_train, c.num_epochs = "plain", 10, 0.72, 10_000
    c.optimizer.lr, c.optimizer.weight_decay = 1e-3, 1.0
    c.eval_every, c.snapshot_every, c.checkpoint_every, c.log_every = 100, 100, 1000, 1000


def _quick(c) -> None:
    """Tiny, for the tests: plain addition for 1,000 epochs, modular addition at p = 23."""
    if c.task == "plain":
        c.num_epochs, c.checkpoint_every, c.log_every = 1000, 500, 500
    else:
        c.p, c.frac_train, c.num_epochs = 23, 0.5, 300
        c.eval_every, c.snapshot_every, c.checkpoint_every, c.log_every = 10, 50, 150, 100


VARIANTS = {"nanda": _nanda, "addition": _addition, "quick": _quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: variants and field=value overrides, comma-separated (see the docstring)."""
    return build_config(_base, VARIANTS, arg, study="grokking")

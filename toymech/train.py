"""The training engine: optax optimizers from plain data, scanned epochs, many runs at once.

One engine serves every study. A task supplies

* `loss_fn(params, batch, key) -> (loss, metrics)` (or `loss_fn(params, batch)`):
  a scalar loss and a dict of scalar metrics on one batch, where `batch` is the
  task's data pytree cut to a batch along the leading (example) axis;
* optionally `eval_fn(params, eval_data) -> metrics` for held-out data (default: the
  loss function's loss and metrics on the whole `eval_data`);
* the optimizer as data: an `OptimizerConfig` (or a dict / ConfigDict with its
  fields), mapped onto optax by `make_optimizer`.

`train` runs one seed; `train_many` runs a batch of seeds (and optionally of
hyper-parameters) with `vmap`, sharded over every device JAX sees.

How a run executes. Epochs run inside `lax.scan` in compiled "chunks" of
`chunk_epochs` epochs; inside an epoch the minibatch steps are another `lax.scan`
(a full-batch epoch is one step). Evaluation on held-out data happens inside the
same compiled program after every `eval_every`-th epoch (`lax.cond` on the epoch
index, which stays a real branch under `vmap` because the epoch is shared by all
runs). The host only sees the program at chunk boundaries, where it records
history, appends parameter snapshots, checks for divergence, writes checkpoints and
prints a progress line; chunk boundaries are placed at the gcd of the snapshot,
checkpoint and logging periods.

Randomness is a function of (seed, epoch, step) only: run key = `key(seed)`,
init key = `fold_in(key, 0)`, epoch permutation = `permutation(fold_in(fold_in(key,
1), epoch), n)`, per-step loss key = `fold_in(fold_in(key, 2), step)`. A resumed
run therefore sees exactly the batches an uninterrupted one sees, and resuming is
bit-identical on CPU.

Minibatch epochs visit every example once: the epoch's permutation is cut into
`n // batch_size` full batches and, unless `drop_remainder`, one last smaller
batch of the `n % batch_size` remaining examples (as PyTorch's DataLoader with
`shuffle=True`). Epoch metrics are example-weighted means of the batch values.

Learning-rate schedules are multipliers of `lr` evaluated on a clock that is the
optimizer step (`schedule_unit='step'`) or the epoch (`'epoch'`, PyTorch's
`LambdaLR` stepped once per epoch): the lr depends on the epoch, not the step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from toymech import checkpoint as ckpt
from toymech.params import flatten_params

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup", "warmup_cosine", "linear", "piecewise", "custom")
SCHEDULE_UNITS = ("step", "epoch")
# Numeric optimizer fields that `train_many` may vary across runs.
SWEEPABLE = ("lr", "weight_decay", "b1", "b2", "eps", "momentum", "clip_norm")

# XLA options for the compiled training chunks where JAX's default backend is the CPU:
# YNNPACK runs the dots. Without it XLA:CPU transposes the MLP's [batch, d_mlp] gradient in a
# slow loop before the weight-gradient dot (14 of 47 ms of the grokking step); with it the
# grokking model trains at 35.6 steps/s instead of 21.6, the sum model 7% and the reverse model
# 10% faster (benchmark_training, 2026-12-03, idle 2-core CPU). Read when a chunk is first
# compiled; set it to {} before training to compile with XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options() -> dict | None:
    """The `compiler_options` the training chunks are jitted with: a copy of
    `CPU_COMPILER_OPTIONS` where JAX's default backend is the CPU, else None."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" and CPU_COMPILER_OPTIONS else None


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the message gives run, step and epoch."""


# ============================================================================ optimizer


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer, its schedule, clipping and frozen parameters, as plain data.

    PyTorch semantics, so study notebooks map over one to one:

    * 'adam': `torch.optim.Adam`; a nonzero `weight_decay` is L2 regularisation
      (wd * param added to the gradient before the moments: optax
      `add_decayed_weights` before `scale_by_adam`).
    * 'adamw': `torch.optim.AdamW`, decoupled decay p <- p - lr*wd*p (optax `adamw`
      with the same number). Note torch's AdamW default weight_decay is 0.01; ours 0.
    * 'sgd': `torch.optim.SGD` with optional `momentum` (heavy ball) and L2
      `weight_decay`.

    `clip_norm` clips the global gradient norm first (`clip_grad_norm_` before
    `optimizer.step()`), over trainable parameters only.

    Schedules (a multiplier m(c) of `lr`; c = step or epoch per `schedule_unit`):
      'constant'      m = 1
      'warmup'        m = min(1, (c+1)/warmup)                 (torch LambdaLR style:
                                                                 the first count uses 1/warmup)
      'warmup_cosine' m = (c+1)/warmup for c < warmup, then
                      end + (peak-end) * (1+cos(pi*(c-warmup)/(total-warmup)))/2,
                      held at `end` after `total`.   (The reverse study's
                      0.65*(1+cos) after 5 warmup epochs is peak=1.3, end=0, total=40.)
      'linear'        m = peak + (end-peak) * min(c, total)/total   (torch LinearLR with
                      start_factor=peak, end_factor=end, total_iters=total)
      'piecewise'     m = values[i] where i = number of `boundaries` <= c
      'custom'        m = multiplier_fn(c) (a jnp-traceable function of the clock)

    `frozen`: regular expressions searched in the flat TransformerLens parameter
    names (`toymech.flatten_params`, e.g. 'blocks.0.attn.b_Q'); matching leaves are
    not differentiated and get no update, no decay and no optimizer state: the
    engine splits params with `partition_frozen`, differentiates and optimises the
    trainable part only, and the frozen leaves stay bit-identical (the grokking
    model freezes all biases with `frozen=('b_',)`).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    clip_norm: float | None = None
    schedule: str = "constant"
    schedule_unit: str = "step"
    warmup: int = 0
    total: int = 0
    peak: float = 1.0
    end: float = 0.0
    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    multiplier_fn: Callable | None = None
    frozen: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("boundaries", "values", "frozen"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))

        def bad(field, why):
            raise ValueError(f"OptimizerConfig.{field}={getattr(self, field)!r}: {why}")

        if self.name not in OPTIMIZERS:
            bad("name", f"must be one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            bad("schedule_unit", f"must be one of {SCHEDULE_UNITS}")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            bad("clip_norm", "must be > 0 or None")
        if self.schedule == "warmup" and self.warmup < 1:
            bad("warmup", "the 'warmup' schedule needs warmup >= 1")
        if self.schedule == "warmup_cosine" and not 0 <= self.warmup < self.total:
            bad("total", f"'warmup_cosine' needs 0 <= warmup ({self.warmup}) < total")
        if self.schedule == "linear" and self.total < 1:
            bad("total", "the 'linear' schedule needs total >= 1")
        if self.schedule == "piecewise":
            if len(self.values) != len(self.boundaries) + 1:
                bad("values", f"'piecewise' needs len(boundaries)+1 = {len(self.boundaries) + 1} values")
            if list(self.boundaries) != sorted(self.boundaries):
                bad("boundaries", "must be increasing")
        if (self.schedule == "custom") != (self.multiplier_fn is not None):
            bad("multiplier_fn", "is required by, and only by, schedule='custom'")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OptimizerConfig:
        """From a dict or ml_collections ConfigDict; 'betas': (b1, b2) is accepted."""
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        if "betas" in d:
            d["b1"], d["b2"] = d.pop("betas")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"OptimizerConfig: unknown fields {unknown}; valid fields are {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-able view (a custom multiplier is given by its qualified name)."""
        d = dataclasses.asdict(self)
        fn = d.pop("multiplier_fn")
        d["multiplier_fn"] = None if fn is None else getattr(fn, "__qualname__", repr(fn))
        return d


def as_optimizer_config(opt) -> OptimizerConfig:
    """An OptimizerConfig from itself, a dict or a ConfigDict."""
    return opt if isinstance(opt, OptimizerConfig) else OptimizerConfig.from_dict(opt)


def schedule_multiplier(opt: OptimizerConfig, clock) -> jax.Array:
    """The lr multiplier m(clock) of `opt.schedule` (see OptimizerConfig), float32."""
    c = jnp.asarray(clock, jnp.float32)
    if opt.schedule == "constant":
        return jnp.ones_like(c)
    if opt.schedule == "warmup":
        return jnp.minimum(1.0, (c + 1) / opt.warmup)
    if opt.schedule == "warmup_cosine":
        frac = jnp.clip((c - opt.warmup) / (opt.total - opt.warmup), 0.0, 1.0)
        cosine = opt.end + (opt.peak - opt.end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(c < opt.warmup, (c + 1) / max(opt.warmup, 1), cosine)
    if opt.schedule == "linear":
        return opt.peak + (opt.end - opt.peak) * jnp.clip(c / opt.total, 0.0, 1.0)
    if opt.schedule == "piecewise":
        index = jnp.sum(c[..., None] >= jnp.asarray(opt.boundaries, jnp.float32), axis=-1)
        return jnp.asarray(opt.values, jnp.float32)[index]
    return jnp.asarray(opt.multiplier_fn(clock), jnp.float32)  # 'custom'


def learning_rate_fn(opt: OptimizerConfig, steps_per_epoch: int = 1, lr=None) -> Callable:
    """step -> learning rate: `lr` (default opt.lr) times the schedule at the step's clock."""
    lr = opt.lr if lr is None else lr

    def fn(step):
        clock = step // steps_per_epoch if opt.schedule_unit == "epoch" else step
        return lr * schedule_multiplier(opt, clock)

    return fn


def frozen_mask(params, patterns: Sequence[str]):
    """Pytree of bools like `params`: True where a flat parameter name matches a pattern.

    Raises ValueError for a pattern that matches no parameter (a typo would otherwise
    silently train everything).
    """
    if not patterns:
        return jax.tree.map(lambda _: False, params)
    try:
        names = list(flatten_params(params))
    except AttributeError as e:
        raise ValueError("frozen parameter patterns need params as nested dicts with string keys") from e
    for pattern in patterns:
        if not any(re.search(pattern, n) for n in names):
            raise ValueError(f"frozen pattern {pattern!r} matches no parameter; names are {names}")
    flags = [any(re.search(p, n) for p in patterns) for n in names]
    return jax.tree.unflatten(jax.tree.structure(params), flags)


def partition_frozen(params, mask):
    """(trainable, frozen): two trees shaped like `params`, each holding the leaves
    where `mask` (from `frozen_mask`) is False / True and None elsewhere. optax and
    `jax.grad` treat the None places as absent, so the trainable tree is what gets
    differentiated and optimised."""
    trainable = jax.tree.map(lambda p, f: None if f else p, params, mask)
    frozen = jax.tree.map(lambda p, f: p if f else None, params, mask)
    return trainable, frozen


def combine_frozen(trainable, frozen):
    """Inverse of `partition_frozen`: one params tree from its two parts."""
    return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None)


def make_optimizer(opt, steps_per_epoch: int = 1, hparams: Mapping[str, Any] | None = None
                   ) -> optax.GradientTransformation:
    """The optax transformation for `opt` (an OptimizerConfig, dict or ConfigDict).

    Args:
        opt: the optimizer description.
        steps_per_epoch: converts steps to epochs for `schedule_unit='epoch'`.
        hparams: overrides for the numeric fields in SWEEPABLE, possibly traced
            (this is how `train_many` varies them per run). A weight decay or momentum
            term is included when the config's value is nonzero or it is overridden.
    It acts on the parameters it is given: with `opt.frozen`, give it the trainable
    part from `partition_frozen(params, frozen_mask(params, opt.frozen))`, as the
    engine does, so frozen leaves get no update, decay or state.
    """
    opt = as_optimizer_config(opt)
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(SWEEPABLE))
    if unknown:
        raise ValueError(f"make_optimizer: {unknown} cannot be overridden; sweepable fields are {SWEEPABLE}")
    if "clip_norm" in hparams and opt.clip_norm is None:
        raise ValueError("make_optimizer: clip_norm is overridden but the config has no clipping (clip_norm=None)")
    h = {name: hparams.get(name, getattr(opt, name)) for name in SWEEPABLE}
    decay = optax.add_decayed_weights(h["weight_decay"]) if (opt.weight_decay or "weight_decay" in hparams) else None
    parts = [optax.clip_by_global_norm(h["clip_norm"])] if opt.clip_norm is not None else []
    if opt.name == "adam":
        parts += [decay, optax.scale_by_adam(h["b1"], h["b2"], h["eps"])]
    elif opt.name == "adamw":
        parts += [optax.scale_by_adam(h["b1"], h["b2"], h["eps"]), decay]
    else:  # sgd
        momentum = optax.trace(h["momentum"]) if (opt.momentum or "momentum" in hparams) else None
        parts += [decay, momentum]
    parts.append(optax.scale_by_learning_rate(learning_rate_fn(opt, steps_per_epoch, h["lr"])))
    return optax.chain(*[p for p in parts if p is not None])


def trainable_part(params, opt: OptimizerConfig):
    """The part of `params` that `opt` trains: all of it, or the non-frozen leaves."""
    return partition_frozen(params, frozen_mask(params, opt.frozen))[0] if opt.frozen else params


# ============================================================================ the compiled chunk


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static shape of an epoch: how the training data is cut into steps."""

    n_train: int
    batch_size: int  # == n_train for full batch
    full_batch: bool
    n_full: int  # full-size batches per epoch
    remainder: int  # size of the last, smaller batch (0: none)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_full + (1 if self.remainder else 0)


def _loss_caller(loss_fn) -> Callable:
    """Adapts `loss_fn(params, batch)` or `loss_fn(params, batch, key)` to the latter."""
    try:
        inspect.signature(loss_fn).bind(None, None, None)
        return loss_fn
    except TypeError:
        return lambda params, batch, key: loss_fn(params, batch)
    except ValueError:  # no signature (some builtins): assume it takes the key
        return loss_fn


def _check_metrics(metrics, where: str, reserved=("loss", "lr", "epoch")) -> None:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where} must return a metrics dict, got {type(metrics).__name__}")
    clash = set(reserved) & set(metrics)
    if clash:
        raise ValueError(f"{where}: metric names {sorted(clash)} are reserved by the engine")


def _traced_fields(opt: OptimizerConfig, swept) -> tuple[str, ...]:
    """The numeric optimizer fields that the compiled loop takes as arguments.

    They are the fields `opt` uses (weight decay and momentum only when nonzero or
    swept), so that runs differing only in their values share one compilation.
    """
    used = {"lr": True, "b1": opt.name != "sgd", "b2": opt.name != "sgd", "eps": opt.name != "sgd",
            "weight_decay": bool(opt.weight_decay) or "weight_decay" in swept,
            "momentum": opt.name == "sgd" and (bool(opt.momentum) or "momentum" in swept),
            "clip_norm": opt.clip_norm is not None}
    unused = sorted(k for k in swept if not used[k])
    if unused:
        raise ValueError(f"hparams {unused} are not used by this optimizer ({opt.name}, clip_norm={opt.clip_norm})")
    return tuple(k for k in SWEEPABLE if used[k])


def _structure(opt: OptimizerConfig, traced: tuple[str, ...]) -> OptimizerConfig:
    """`opt` with its traced fields set to a placeholder: the compilation cache key."""
    return dataclasses.replace(opt, **{k: 1.0 for k in traced})


@functools.lru_cache(maxsize=64)
def _compiled_init(init, structure: OptimizerConfig, steps_per_epoch: int, batched: bool):
    """Jitted `(seed, hp) -> (params, opt_state)`, params = init(fold_in(key(seed), 0))."""
    def one_run(seed, hp):
        params = init(jax.random.fold_in(jax.random.key(seed), 0))
        return params, make_optimizer(structure, steps_per_epoch, hp).init(trainable_part(params, structure))

    return jax.jit(jax.vmap(one_run) if batched else one_run)


@functools.lru_cache(maxsize=64)
def _compiled_opt_init(structure: OptimizerConfig, steps_per_epoch: int, batched: bool):
    """Jitted `(params, hp) -> opt_state`."""
    one_run = lambda params, hp: make_optimizer(structure, steps_per_epoch, hp).init(trainable_part(params, structure))
    return jax.jit(jax.vmap(one_run) if batched else one_run)


@functools.lru_cache(maxsize=64)
def _compiled_chunk(loss_fn, eval_fn, opt: OptimizerConfig, plan: _Plan, mesh: Mesh | None):
    """Jitted `chunk(params, opt_state, seed, hp, data, eval_data, epochs, last_epoch, eval_every)`.

    Runs the epochs `epochs` (int [C]), evaluating after epochs e with (e+1) % eval_every
    == 0 or e == last_epoch, and returns (params, opt_state, train metrics
    {name: [C]}, eval metrics {name: [C]} (zeros on non-eval epochs), first
    non-finite step (-1: none)). `hp` holds the values of the `_traced_fields` of `opt`
    (a `_structure`). With a `mesh` (batched runs), everything but the data and the
    epochs has a leading run axis, sharded over the mesh's 'runs' axis, in and out
    (fixed shardings, so a chunk's outputs feed the next without recompiling).
    Cached, so repeated calls reuse the compilation.
    """
    call_loss = _loss_caller(loss_fn)
    B, spe = plan.batch_size, plan.steps_per_epoch

    def one_run(params, opt_state, seed, hp, data, eval_data, epochs, last_epoch, eval_every):
        tx = make_optimizer(opt, spe, hp)
        lr_fn = learning_rate_fn(opt, spe, hp["lr"])
        if opt.frozen:  # differentiate and optimise the trainable leaves only
            mask = frozen_mask(params, opt.frozen)
            split, combine = (lambda p: partition_frozen(p, mask)), combine_frozen
        else:
            split, combine = (lambda p: (p, None)), (lambda t, _: t)
        root = jax.random.key(seed)
        data_key, step_key, eval_key = (jax.random.fold_in(root, i) for i in (1, 2, 3))

        def step(carry, xs):
            params, opt_state, bad = carry
            batch, gstep = xs
            trainable, frozen = split(params)
            key = jax.random.fold_in(step_key, gstep)
            (loss, metrics), grads = jax.value_and_grad(
                lambda t: call_loss(combine(t, frozen), batch, key), has_aux=True)(trainable)
            _check_metrics(metrics, "loss_fn")
            updates, opt_state = tx.update(grads, opt_state, trainable)
            params = combine(optax.apply_updates(trainable, updates), frozen)
            bad = jnp.where((bad < 0) & ~jnp.isfinite(loss), gstep, bad)
            return (params, opt_state, bad), {"loss": loss, **metrics}

        def evaluate(params):
            if eval_fn is not None:
                metrics = eval_fn(params, eval_data)
                _check_metrics(metrics, "eval_fn", reserved=("epoch",))
                return dict(metrics)
            loss, metrics = call_loss(params, eval_data, eval_key)
            return {"loss": loss, **metrics}

        def epoch_body(carry, epoch):
            first = epoch * spe
            if plan.full_batch:
                carry, mean = step(carry, (data, first))
            else:
                perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), plan.n_train)
                shuffled = jax.tree.map(lambda x: x[perm], data)
                full = jax.tree.map(lambda x: x[: plan.n_full * B].reshape(plan.n_full, B, *x.shape[1:]), shuffled)
                carry, per_step = jax.lax.scan(step, carry, (full, first + jnp.arange(plan.n_full)))
                total = jax.tree.map(lambda v: v.sum(0) * B, per_step)
                if plan.remainder:
                    rest = jax.tree.map(lambda x: x[plan.n_full * B:], shuffled)
                    carry, last = step(carry, (rest, first + plan.n_full))
                    total = jax.tree.map(lambda t, v: t + v * plan.remainder, total, last)
                mean = jax.tree.map(lambda t: t / (plan.n_full * B + plan.remainder), total)
            mean["lr"] = lr_fn(first)
            if eval_data is None:
                return carry, (mean, {})
            is_eval = ((epoch + 1) % eval_every == 0) | (epoch == last_epoch)
            blank = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(evaluate, carry[0]))
            ev = jax.lax.cond(is_eval, evaluate, lambda p: blank, carry[0])
            return carry, (mean, ev)

        (params, opt_state, bad), (train_m, eval_m) = jax.lax.scan(
            epoch_body, (params, opt_state, jnp.int32(-1)), epochs)
        return params, opt_state, train_m, eval_m, bad

    options = compiler_options()
    if mesh is None:
        return jax.jit(one_run, compiler_options=options)
    runs, shared = NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec())
    return jax.jit(jax.vmap(one_run, in_axes=(0, 0, 0, 0, None, None, None, None, None)),
                   in_shardings=(runs, runs, runs, runs, shared, shared, shared, shared, shared),
                   out_shardings=runs, compiler_options=options)


# ============================================================================ results


@dataclasses.dataclass
class TrainResult:
    """What a run returns. With `train_many`, every field but `snapshot_epochs` has a
    leading run axis [R] (use `.run(i)` for one run's result).

    Attributes:
        params: final parameters.
        opt_state: final optimizer state.
        train_history: {'epoch': [E] (1-based), 'loss': [E], 'lr': [E] (lr at the
            epoch's first step), one entry per loss_fn metric}, per epoch, numpy.
        eval_history: {'epoch': [N], 'loss' ..., eval metrics} at the eval epochs.
        snapshots: params after every `snapshot_every` epochs, stacked along a new
            leading (time) axis [S, ...] (after the run axis), ready for `vmap` over
            training time; None when no snapshots were asked for.
        snapshot_epochs: int [S], the epoch count of each snapshot.
        seeds: the run seed(s); hparams: the per-run hyper-parameter overrides.
    """

    params: Any
    opt_state: Any
    train_history: dict[str, np.ndarray]
    eval_history: dict[str, np.ndarray]
    snapshots: Any
    snapshot_epochs: np.ndarray
    seeds: Any
    hparams: dict[str, np.ndarray]

    def run(self, i: int) -> TrainResult:
        """Run i of a `train_many` result, as `train` would return it."""
        pick = lambda tree: jax.tree.map(lambda x: x[i], tree)
        eval_history = {k: (v if k == "epoch" else v[i]) for k, v in self.eval_history.items()}
        train_history = {k: (v if k == "epoch" else v[i]) for k, v in self.train_history.items()}
        return TrainResult(pick(self.params), pick(self.opt_state), train_history, eval_history,
                           None if self.snapshots is None else pick(self.snapshots), self.snapshot_epochs,
                           self.seeds[i], {k: v[i] for k, v in self.hparams.items()})


# ============================================================================ host driver


def _fetch(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as a numpy array on this host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _check_data(data, name: str) -> int:
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    if not leaves:
        raise ValueError(f"{name} has no arrays")
    sizes = {jax.tree_util.keystr(p): (np.shape(x)[0] if np.ndim(x) else None) for p, x in leaves}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"every array of {name} needs the same leading (example) axis; got sizes {sizes}")
    return next(iter(sizes.values()))


def _chunk_length(num_epochs, chunk_epochs, periods: dict[str, int | None]) -> int:
    given = {k: v for k, v in periods.items() if v is not None}
    for k, v in given.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{k} must be a positive int, got {v!r}")
    if chunk_epochs is None:
        return math.gcd(*given.values()) if given else num_epochs
    for k, v in given.items():
        if v % chunk_epochs:
            raise ValueError(f"{k}={v} must be a multiple of chunk_epochs={chunk_epochs}")
    return chunk_epochs


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _progress_line(epoch, num_epochs, train_h, eval_h, rate, spe, eta, n_runs, compile_s) -> str:
    mean = lambda v: float(np.mean(v))
    runs = f" (mean of {n_runs} runs)" if n_runs > 1 else ""
    parts = [f"epoch {epoch}/{num_epochs}", f"loss {mean(train_h['loss'][..., -1]):.4g}{runs}"]
    if eval_h and len(eval_h["epoch"]):
        parts.append("eval " + " ".join(f"{k} {mean(v[..., -1]):.4g}" for k, v in eval_h.items() if k != "epoch"))
    if rate is None:  # every chunk so far compiled its program
        parts.append(f"first chunks incl. compilation {compile_s:.1f}s")
    else:
        parts.append(f"{rate:.3g} epochs/s ({rate * spe * n_runs:.4g} steps/s)")
        parts.append(f"ETA {_fmt_time(eta)}")
        if compile_s:
            parts.append(f"+ {compile_s:.1f}s first chunks incl. compilation")
    return "[train] " + " | ".join(parts)


def _eval_epochs(start: int, stop: int, eval_every: int, num_epochs: int) -> np.ndarray:
    """1-based epoch counts in (start, stop] at which evaluation happens."""
    e = np.arange(start + 1, stop + 1)
    return e[(e % eval_every == 0) | (e == num_epochs)]


def _snapshot_path(snap_dir: str, epoch: int) -> str:
    return os.path.join(snap_dir, f"snap_{epoch:08d}.msgpack")


def load_snapshots(workdir: str, template=None) -> tuple[Any, np.ndarray]:
    """The parameter snapshots a run wrote under `workdir/snapshots/`, stacked.

    Args:
        workdir: the run's workdir.
        template: params (or ShapeDtypeStructs) of one snapshot, to validate against
            (for `train_many` runs, with the leading run axis); None: nested dicts.
    Returns:
        (snapshots with a leading time axis [S, ...] (after the run axis for
        `train_many`, as in TrainResult), epochs int [S]), in epoch order.
    """
    snap_dir = os.path.join(workdir, "snapshots")
    names = sorted(f for f in os.listdir(snap_dir) if re.fullmatch(r"snap_\d{8}\.msgpack", f)) \
        if os.path.isdir(snap_dir) else []
    if not names:
        raise FileNotFoundError(f"no snapshots under {snap_dir}")
    trees, batched = [], set()
    for f in names:
        path = os.path.join(snap_dir, f)
        tree, meta = ckpt.load_pytree_and_meta(path, template)
        trees.append(tree)
        batched.add(bool(meta.get("batched")))
    if len(batched) > 1:
        raise ckpt.CheckpointError(f"{snap_dir}: mixes snapshots of single and batched runs")
    epochs = np.array([int(f[len("snap_"):-len(".msgpack")]) for f in names])
    axis = 1 if batched.pop() else 0
    return jax.tree.map(lambda *xs: np.stack(xs, axis=axis), *trees), epochs


def _fit(loss_fn, init, train_data, optimizer, *, seeds, hparams, devices, batched, num_epochs, batch_size, eval_data,
         eval_fn, eval_every, snapshot_every, workdir, checkpoint_every, keep_checkpoints, log_every,
         chunk_epochs, drop_remainder, progress) -> TrainResult:
    opt = as_optimizer_config(optimizer)
    if not (isinstance(num_epochs, int) and num_epochs >= 1):
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    if not (isinstance(eval_every, int) and eval_every >= 1):
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    n = _check_data(train_data, "train_data")
    if eval_data is not None and eval_fn is None:  # evaluated by loss_fn: must be example-major
        _check_data(eval_data, "eval_data")
    elif eval_fn is not None and eval_data is None:
        raise ValueError("eval_fn was given without eval_data")
    full_batch = batch_size is None or batch_size >= n and not drop_remainder
    if not full_batch and not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise ValueError(f"batch_size must be an int in [1, {n}] or None (full batch), got {batch_size!r}")
    B = n if full_batch else batch_size
    plan = _Plan(n, B, full_batch, n // B, 0 if (full_batch or drop_remainder) else n % B)
    spe = plan.steps_per_epoch
    if workdir is not None and checkpoint_every is None:
        checkpoint_every = max(1, num_epochs // 10)
    if progress and log_every is None:
        log_every = max(1, num_epochs // 20)
    chunk = _chunk_length(num_epochs, chunk_epochs, {
        "snapshot_every": snapshot_every,
        "checkpoint_every": checkpoint_every if workdir is not None else None,
        "log_every": log_every if progress else None})

    # --- runs: seeds, hyper-parameters and initial state
    seeds_arr = np.asarray(seeds)
    if seeds_arr.ndim != 1 or len(seeds_arr) == 0 or not np.issubdtype(seeds_arr.dtype, np.integer) \
            or seeds_arr.min() < 0 or seeds_arr.max() >= 2**32:
        raise ValueError(f"seeds must be a non-empty list of ints in [0, 2**32), got {seeds!r}")
    R = len(seeds_arr)
    hparams = {k: np.asarray(v, np.float32) for k, v in (hparams or {}).items()}
    for k, v in hparams.items():
        if v.shape != (R,):
            raise ValueError(f"hparams[{k!r}] needs one value per seed ({R}), got shape {v.shape}")
    make_optimizer(opt, spe, hparams)  # validates the overridden names before any tracing
    traced = _traced_fields(opt, set(hparams))
    structure = _structure(opt, traced)
    values = {k: hparams[k] if k in hparams else np.full(R, getattr(opt, k), np.float32) for k in traced}
    if batched:
        # Runs are padded to a multiple of the device count by repeating the last run
        # (its copies are dropped from the result): every device gets ceil(R / D) runs,
        # which no other split of R runs over D devices beats.
        devices = list(jax.devices() if devices is None else devices)
        pad = -R % len(devices)
        padded = lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        mesh = Mesh(np.asarray(devices), ("runs",))
        put_runs = functools.partial(jax.device_put, device=NamedSharding(mesh, PartitionSpec("runs")))
        put_shared = functools.partial(jax.device_put, device=NamedSharding(mesh, PartitionSpec()))
        seed_dev = put_runs(padded(seeds_arr).astype(np.uint32))
        hp_dev = {k: put_runs(padded(v)) for k, v in values.items()}
        put_state = lambda tree: put_runs(jax.tree.map(lambda x: padded(np.asarray(x)), tree))
        to_host = lambda tree: jax.tree.map(lambda x: _fetch(x)[:R], tree)
        trim = (lambda tree: jax.tree.map(lambda x: x[:R], tree)) if pad else (lambda tree: tree)
    else:
        put_shared = jax.device_put
        seed_dev = jnp.uint32(seeds_arr[0])
        hp_dev = {k: jnp.float32(v[0]) for k, v in values.items()}
        put_state = lambda tree: jax.tree.map(jnp.asarray, tree)
        to_host = lambda tree: jax.tree.map(np.asarray, tree)
        trim = lambda tree: tree
    if callable(init):
        params, opt_state = _compiled_init(init, structure, spe, batched)(seed_dev, hp_dev)
    else:
        params = jax.tree.map(jnp.asarray, init)
        if batched:
            params = put_runs(jax.tree.map(lambda x: jnp.broadcast_to(x, (len(seed_dev), *x.shape)), params))
        opt_state = _compiled_opt_init(structure, spe, batched)(params, hp_dev)
    if batched:  # the chunk's input shardings, so that every chunk hits one compilation
        params, opt_state = put_runs((params, opt_state))
    data_dev = put_shared(jax.tree.map(jnp.asarray, train_data))
    eval_dev = None if eval_data is None else put_shared(jax.tree.map(jnp.asarray, eval_data))
    chunk_fn = _compiled_chunk(loss_fn, eval_fn, structure, plan, mesh if batched else None)
    chunk_args = lambda p, s, epochs: (p, s, seed_dev, hp_dev, data_dev, eval_dev, epochs, np.int32(num_epochs - 1),
                                       np.int32(eval_every))
    run_chunk = lambda p, s, epochs: chunk_fn(*chunk_args(p, s, epochs))
    lead = (R,) if batched else ()

    # --- state so far: fresh, or resumed from workdir/checkpoints
    train_h: dict[str, list] = {}
    eval_h: dict[str, list] = {}
    snapshots, snapshot_epochs = [], []
    start = 0
    ckpt_dir = snap_dir = None
    writer = jax.process_index() == 0  # on several hosts, one process writes
    if workdir is not None:
        ckpt_dir, snap_dir = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "snapshots")
        meta = {"seeds": seeds_arr.tolist(), "hparams": {k: v.tolist() for k, v in hparams.items()},
                "n_train": n, "batch_size": B, "steps_per_epoch": spe, "eval_every": eval_every,
                "snapshot_every": snapshot_every, "optimizer": opt.to_dict()}
        meta = json.loads(json.dumps(meta))  # as it reads back from a file
        path = ckpt.latest_checkpoint(ckpt_dir)
        if path is not None:
            flat, stored = ckpt.read_pytree(path)
            for k, v in meta.items():
                if stored.get(k) != v:
                    raise ckpt.CheckpointError(
                        f"{path}: written by a different run configuration: {k} is {stored.get(k)!r} there "
                        f"but {v!r} now (use another workdir, or delete it to start over)")
            start = int(stored["epoch"])
            if start > num_epochs:
                raise ckpt.CheckpointError(f"{path}: already at epoch {start} > num_epochs={num_epochs}")
            shapes = chunk_fn.eval_shape(*chunk_args(params, opt_state, np.arange(1, dtype=np.int32)))
            n_evals = len(_eval_epochs(0, start, eval_every, num_epochs))
            hist = lambda tree, count: {k: jax.ShapeDtypeStruct(lead + (count,), s.dtype) for k, s in tree.items()}
            template = {"params": to_host(params), "opt_state": to_host(opt_state),
                        "train_history": hist(shapes[2], start), "eval_history": hist(shapes[3], n_evals)}
            state = ckpt.conform(flat, template, path)
            params, opt_state = put_state(state["params"]), put_state(state["opt_state"])
            train_h = {k: [v] for k, v in state["train_history"].items()}
            eval_h = {k: [v] for k, v in state["eval_history"].items()}
            if snapshot_every:
                snapshot_epochs = list(range(snapshot_every, start + 1, snapshot_every))
                snapshots = [ckpt.load_pytree(_snapshot_path(snap_dir, e), to_host(params)) for e in snapshot_epochs]
            if progress:
                print(f"[train] resumed from epoch {start} (checkpoint {path})", file=sys.stderr, flush=True)

    history = lambda h: {k: np.concatenate(v, axis=-1) for k, v in h.items()}

    # --- the loop: one compiled chunk per host round-trip
    # Throughput counts only chunks whose program was already compiled: a chunk
    # length's first call (compilation + run) is reported apart.
    epoch = start
    compiled, compile_s, steady_s, steady_epochs = set(), 0.0, 0.0, 0
    while epoch < num_epochs:
        c = min(chunk - epoch % chunk, num_epochs - epoch)
        t0 = time.perf_counter()
        params, opt_state, tm, em, bad = run_chunk(params, opt_state, np.arange(epoch, epoch + c, dtype=np.int32))
        bad = np.atleast_1d(to_host(bad))
        if c in compiled:
            steady_s, steady_epochs = steady_s + time.perf_counter() - t0, steady_epochs + c
        else:
            compiled.add(c)
            compile_s += time.perf_counter() - t0
        if (bad >= 0).any():
            i = int(np.argmax(bad >= 0))
            s = int(bad[i])
            last = ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None
            raise TrainingDivergedError(
                f"non-finite training loss at step {s} (epoch {s // spe + 1}, batch {s % spe} of {spe})"
                f"{f' in run {i} (seed {seeds_arr[i]})' if batched else ''}; training stopped; last good "
                f"checkpoint: {last or 'none'}")
        evals = _eval_epochs(epoch, epoch + c, eval_every, num_epochs) - epoch - 1
        for k, v in to_host(tm).items():
            train_h.setdefault(k, []).append(v)
        for k, v in to_host(em).items():
            eval_h.setdefault(k, []).append(v[..., evals])
        epoch += c
        if snapshot_every and epoch % snapshot_every == 0:
            snapshots.append(to_host(params))
            snapshot_epochs.append(epoch)
            if snap_dir is not None and writer:
                ckpt.save_pytree(_snapshot_path(snap_dir, epoch), snapshots[-1], {"epoch": epoch, "batched": batched})
        if ckpt_dir is not None and writer and (epoch % checkpoint_every == 0 or epoch == num_epochs):
            state = {"params": to_host(params), "opt_state": to_host(opt_state),
                     "train_history": history(train_h), "eval_history": history(eval_h)}
            ckpt.save_checkpoint(ckpt_dir, epoch, state, dict(meta, epoch=epoch, num_epochs=num_epochs),
                                 keep=keep_checkpoints)
        if progress and (epoch % log_every == 0 or epoch == num_epochs):
            rate = steady_epochs / max(steady_s, 1e-9) if steady_epochs else None
            line = _progress_line(epoch, num_epochs, history(train_h),
                                  history(eval_h) | {"epoch": _eval_epochs(0, epoch, eval_every, num_epochs)},
                                  rate, spe, (num_epochs - epoch) / max(rate or 1.0, 1e-9), R, compile_s)
            print(line, file=sys.stderr, flush=True)

    train_history = {"epoch": np.arange(1, epoch + 1), **history(train_h)}
    eval_history = {"epoch": _eval_epochs(0, epoch, eval_every, num_epochs), **history(eval_h)} if eval_h else {}
    stack_axis = 1 if batched else 0
    stacked = (jax.tree.map(lambda *xs: np.stack(xs, axis=stack_axis), *snapshots) if snapshots else None)
    return TrainResult(trim(params), trim(opt_state), train_history, eval_history, stacked,
                       np.asarray(snapshot_epochs, np.int64),
                       seeds_arr if batched else int(seeds_arr[0]),
                       hparams)


_LOOP_DOC = """
    Args:
        loss_fn: `(params, batch, key) -> (loss, metrics)` or `(params, batch) ->
            (loss, metrics)`; loss a scalar, metrics a dict of scalars. Must be
            jax-traceable. Hashable (a module-level function or a functools.partial of
            one), so repeated calls reuse the compilation.
        init: params pytree, or `key -> params` (called with `fold_in(key(seed), 0)`).
        train_data: pytree of arrays with a common leading example axis [n, ...].
        optimizer: OptimizerConfig, or a dict / ConfigDict of its fields.
        num_epochs: epochs to train in total (a resumed run continues up to it).
        batch_size: examples per step; None = full batch (one step per epoch).
        eval_data: held-out pytree [m, ...], evaluated whole; None: no evaluation.
        eval_fn: `(params, eval_data) -> metrics dict`; default: loss_fn's loss and
            metrics on eval_data.
        eval_every: evaluate after every k-th epoch (and after the last).
        snapshot_every: keep params after every k-th epoch as a stacked pytree
            (`result.snapshots`); written to `workdir/snapshots/` when a workdir is given.
        workdir: directory for checkpoints (`workdir/checkpoints/`); a rerun with the
            same workdir resumes from the latest checkpoint (a corrupt or mismatched one
            is a `CheckpointError` naming the file).
        checkpoint_every: checkpoint period in epochs (default num_epochs // 10); the
            final state is always checkpointed.
        keep_checkpoints: how many newest checkpoints to keep (None: all).
        log_every: progress-line period in epochs (default num_epochs // 20).
        chunk_epochs: epochs per compiled chunk (host round-trip); default the gcd of
            the snapshot, checkpoint and log periods (all must be multiples of it).
        drop_remainder: drop the last partial batch of each epoch.
        progress: print progress lines to stderr: epoch, losses, epochs/s and steps/s over
            the chunks run so far whose program was already compiled (so compilation
            does not distort them; its time is shown apart), ETA; and "resumed from
            epoch N (checkpoint ...)" when a run resumes.
    Raises:
        TrainingDivergedError: a non-finite training loss (message: step, epoch,
            batch, run); nothing after it is saved, the last good checkpoint stays.
        toymech.checkpoint.CheckpointError: a corrupt or mismatched checkpoint.
"""


def train(loss_fn, init, train_data, optimizer, *, num_epochs: int, batch_size: int | None = None, seed: int = 0,
          eval_data=None, eval_fn=None, eval_every: int = 1, snapshot_every: int | None = None,
          workdir: str | None = None, checkpoint_every: int | None = None, keep_checkpoints: int | None = 2,
          log_every: int | None = None, chunk_epochs: int | None = None, drop_remainder: bool = False,
          progress: bool = True) -> TrainResult:
    return _fit(loss_fn, init, train_data, optimizer, seeds=[seed], hparams=None, devices=None, batched=False,
                num_epochs=num_epochs, batch_size=batch_size, eval_data=eval_data, eval_fn=eval_fn,
                eval_every=eval_every, snapshot_every=snapshot_every, workdir=workdir,
                checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
                chunk_epochs=chunk_epochs, drop_remainder=drop_remainder, progress=progress)


train.__doc__ = "Trains one run (one seed) and returns a TrainResult.\n" + _LOOP_DOC


def train_many(loss_fn, init, train_data, optimizer, *, seeds: Sequence[int],
               hparams: Mapping[str, Sequence[float]] | None = None, devices=None, num_epochs: int,
               batch_size: int | None = None, eval_data=None, eval_fn=None, eval_every: int = 1,
               snapshot_every: int | None = None, workdir: str | None = None, checkpoint_every: int | None = None,
               keep_checkpoints: int | None = 2, log_every: int | None = None, chunk_epochs: int | None = None,
               drop_remainder: bool = False, progress: bool = True) -> TrainResult:
    return _fit(loss_fn, init, train_data, optimizer, seeds=seeds, hparams=hparams, devices=devices, batched=True,
                num_epochs=num_epochs, batch_size=batch_size, eval_data=eval_data, eval_fn=eval_fn,
                eval_every=eval_every, snapshot_every=snapshot_every, workdir=workdir,
                checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
                chunk_epochs=chunk_epochs, drop_remainder=drop_remainder, progress=progress)


train_many.__doc__ = """Trains R runs at once with `vmap` and returns a TrainResult with a leading run axis.

    Run i uses `seeds[i]` and `{k: v[i] for k, v in hparams.items()}` (overrides of the
    optimizer's SWEEPABLE fields, e.g. {'weight_decay': [0.1, 1.0]}); its result equals
    `train(..., seed=seeds[i])` with those values in the optimizer config, up to
    floating-point reassociation in batched kernels. Use `grid` for products.

    The run axis is sharded over `devices` (default: every device JAX sees) with a
    1-D `Mesh` named 'runs' and `NamedSharding(mesh, P('runs'))`; data are replicated.
    R is padded to a multiple of the device count by repeating the last run (the
    copies are dropped). On several hosts, call `jax.distributed.initialize()` first
    in every process: `jax.devices()` then spans all hosts (see BUILD.md).
""" + _LOOP_DOC


def grid(seeds: Sequence[int], **hparams: Sequence[float]) -> tuple[list[int], dict[str, list[float]]]:
    """The product seeds x hparam values as (seeds, hparams) lists for `train_many`.

    `grid([0, 1], weight_decay=[0.1, 1.0])` -> ([0, 0, 1, 1], {'weight_decay': [0.1, 1.0, 0.1, 1.0]}).
    """
    names = list(hparams)
    combos = [(s, *vals) for s in seeds for vals in itertools.product(*(hparams[k] for k in names))]
    return [c[0] for c in combos], {k: [c[i + 1] for c in combos] for i, k in enumerate(names)}

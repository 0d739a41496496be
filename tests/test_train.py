"""Tests of toymech.train: optimizers and schedules against PyTorch / hand-computed
steps, minibatching, frozen parameters, resume after interruption, divergence guard,
vmapped and sharded runs."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import toymech as tm
from toymech import checkpoint as ckpt
from toymech import train as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- fixtures

CFG = tm.ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=5, n_ctx=4,
                     normalization_type="LN")


def seq_loss(cfg, params, batch):
    """Next-token cross-entropy on the last position, and its accuracy."""
    logits = tm.apply_unchecked(cfg, params, batch["tokens"])[0][:, -1]  # [batch, vocab]
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))
    return loss, {"acc": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


LOSS = functools.partial(seq_loss, CFG)
INIT = functools.partial(tm.init_params, CFG)


def seq_data(n, seed=0):
    tokens = np.random.default_rng(seed).integers(0, 5, size=(n, 4)).astype(np.int32)
    return {"tokens": tokens, "label": (tokens[:, 0] + tokens[:, 1]) % 5}


DATA, HELD_OUT = seq_data(40), seq_data(16, seed=1)
ADAMW = T.OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1, clip_norm=1.0, frozen=("b_",))
# The transformer tests share one compilation: same loss, optimizer structure, batch size,
# held-out data and 2-epoch chunks (compiling dominates their run time).
SHARED = dict(batch_size=16, eval_data=HELD_OUT, chunk_epochs=2, progress=False)


def regression(params, batch):
    """A loss whose gradient is easy to write in torch too: mean squared error of x @ W + b."""
    err = batch["x"] @ params["W"] + params["b"] - batch["y"]
    return jnp.mean(err**2), {}


def tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- optimizers vs torch


@pytest.mark.parametrize("kw", [
    dict(name="adam"),
    dict(name="adam", weight_decay=0.05),  # torch Adam's L2 weight_decay
    dict(name="adamw", weight_decay=0.3, b1=0.8, b2=0.98),
    dict(name="adamw", weight_decay=1.0, clip_norm=0.1),
    dict(name="sgd", momentum=0.9, weight_decay=0.01),
    dict(name="sgd"),
])
def test_optimizers_match_torch(kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    w0, b0 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    opt = T.OptimizerConfig(lr=0.05, **kw)

    tx = T.make_optimizer(opt)
    params = {"W": jnp.asarray(w0), "b": jnp.asarray(b0)}
    state = tx.init(params)
    for _ in range(6):
        grads = jax.grad(lambda p: regression(p, {"x": x, "y": y})[0])(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)

    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    common = dict(lr=0.05, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        topt = torch.optim.SGD([tw, tb], momentum=opt.momentum, **common)
    else:
        cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
        topt = cls([tw, tb], betas=(opt.b1, opt.b2), eps=opt.eps, **common)
    for _ in range(6):
        topt.zero_grad()
        torch.mean((torch.tensor(x) @ tw + tb - torch.tensor(y)) ** 2).backward()
        if opt.clip_norm:
            torch.nn.utils.clip_grad_norm_([tw, tb], opt.clip_norm)
        topt.step()
    np.testing.assert_allclose(params["W"], tw.detach().numpy(), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(params["b"], tb.detach().numpy(), rtol=2e-5, atol=2e-6)


# --------------------------------------------------------------------------- schedules


def reverse_lambda(epoch, warmup=5, total=40):
    """The reverse-task notebook's LambdaLR multiplier."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return 0.65 * (1 + np.cos(np.pi * (epoch - warmup) / (total - warmup)))


def torch_epoch_lrs(make_scheduler, epochs):
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


@pytest.mark.parametrize("kw,torch_sched", [
    (dict(schedule="warmup_cosine", warmup=5, total=40, peak=1.3, end=0.0),
     lambda o, torch: torch.optim.lr_scheduler.LambdaLR(o, reverse_lambda)),
    (dict(schedule="linear", peak=1.0, end=0.05, total=30),
     lambda o, torch: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=30)),
    (dict(schedule="warmup", warmup=4),
     lambda o, torch: torch.optim.lr_scheduler.LambdaLR(o, lambda e: min(1.0, (e + 1) / 4))),
    (dict(schedule="piecewise", boundaries=(10, 25), values=(1.0, 0.1, 0.01)),
     lambda o, torch: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 25], gamma=0.1)),
])
def test_per_epoch_schedules_match_torch(kw, torch_sched):
    torch = pytest.importorskip("torch")
    epochs, spe = 40, 3
    expected = torch_epoch_lrs(lambda o: torch_sched(o, torch), epochs)
    lr_fn = T.learning_rate_fn(T.OptimizerConfig(lr=0.1, schedule_unit="epoch", **kw), steps_per_epoch=spe)
    got = np.array([lr_fn(step) for step in range(epochs * spe)])
    np.testing.assert_allclose(got, np.repeat(expected, spe), rtol=1e-5, atol=1e-9)


def test_custom_schedule_and_step_clock_drive_the_update():
    # SGD on loss = <g, w> has constant gradient g, so w_T = w_0 - g * sum_t lr(t): hand-computable.
    mult = lambda c: 1.0 / (1.0 + c)
    opt = T.OptimizerConfig(name="sgd", lr=0.5, schedule="custom", multiplier_fn=mult)
    g = np.array([1.0, -2.0], np.float32)
    tx = T.make_optimizer(opt)
    w = jnp.zeros(2)
    state = tx.init(w)
    for _ in range(5):
        updates, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(w, -g * sum(0.5 * mult(t) for t in range(5)), rtol=1e-6)


def test_engine_records_per_epoch_lr():
    opt = T.OptimizerConfig(name="adamw", lr=0.1, schedule="linear", total=4, end=0.5, schedule_unit="epoch")
    data = {"x": np.ones((10, 2), np.float32), "y": np.zeros((10, 1), np.float32)}
    params = {"W": jnp.ones((2, 1)), "b": jnp.zeros(1)}
    r = T.train(regression, params, data, opt, num_epochs=5, batch_size=4, progress=False)
    np.testing.assert_allclose(r.train_history["lr"], 0.1 * np.array([1.0, 0.875, 0.75, 0.625, 0.5]), rtol=1e-6)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="name"):
        T.OptimizerConfig(name="adagrad")
    with pytest.raises(ValueError, match="warmup_cosine"):
        T.OptimizerConfig(schedule="warmup_cosine", warmup=5, total=5)
    with pytest.raises(ValueError, match="unknown fields"):
        T.OptimizerConfig.from_dict({"lr": 1e-3, "wd": 1.0})
    opt = T.OptimizerConfig.from_dict({"name": "adamw", "betas": [0.9, 0.98], "frozen": ["b_"]})
    assert (opt.b1, opt.b2, opt.frozen) == (0.9, 0.98, ("b_",))
    params = {"W": jnp.ones((2, 1)), "b": jnp.zeros(1)}
    with pytest.raises(ValueError, match="same leading .*'y'.*3"):
        T.train(regression, params, {"x": np.ones((4, 2)), "y": np.ones((3, 1))}, T.OptimizerConfig(),
                num_epochs=1, progress=False)
    with pytest.raises(ValueError, match="not used by this optimizer"):
        T.train_many(regression, params, {"x": np.ones((4, 2)), "y": np.ones((4, 1))},
                     T.OptimizerConfig(name="sgd"), seeds=[0, 1], hparams={"b1": [0.9, 0.8]}, num_epochs=1)
    with pytest.raises(ValueError, match="matches no parameter"):
        T.frozen_mask({"blocks_0": {"attn": {"b_Q": jnp.zeros(2)}}}, ["b_X"])
    mask = T.frozen_mask({"blocks_0": {"attn": {"b_Q": 0, "W_Q": 0}}, "unembed": {"b_U": 0}}, [r"blocks\.0\..*b_"])
    assert mask == {"blocks_0": {"attn": {"b_Q": True, "W_Q": False}}, "unembed": {"b_U": False}}


# --------------------------------------------------------------------------- the loop


def test_frozen_parameters_stay_bit_identical():
    params0 = INIT(jax.random.fold_in(jax.random.key(0), 0))
    params0 = jax.tree.map(lambda x: x + 0.01, params0)  # nonzero biases, so "unchanged" can fail
    r = T.train(LOSS, params0, DATA, ADAMW, num_epochs=4, **SHARED)
    flat0, flat1 = tm.flatten_params(params0), tm.flatten_params(r.params)
    for name in flat0:
        same = np.array_equal(flat0[name], flat1[name])
        assert same == ("b_" in name), name


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state():
    params0 = {"W": jnp.ones((2, 1)), "b": jnp.ones(1)}

    def loss(params, batch):  # the gradient at the frozen b would be NaN: sqrt'(0) * 0
        pred = batch["x"] @ params["W"] + jnp.sqrt(params["b"] - 1.0)
        return jnp.mean((pred - batch["y"]) ** 2), {}

    data = {"x": np.ones((4, 2), np.float32), "y": np.zeros((4, 1), np.float32)}
    opt = T.OptimizerConfig(name="adamw", weight_decay=0.5, frozen=("^b$",))
    r = T.train(loss, params0, data, opt, num_epochs=3, progress=False)
    assert np.isfinite(r.params["W"]).all() and not np.array_equal(r.params["W"], params0["W"])
    np.testing.assert_array_equal(r.params["b"], params0["b"])
    state_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(r.opt_state)[0]]
    assert any("'W'" in p for p in state_paths) and not any("'b'" in p for p in state_paths), state_paths
    trainable, frozen = T.partition_frozen(params0, T.frozen_mask(params0, opt.frozen))
    assert jax.tree.leaves(trainable) == [params0["W"]] and jax.tree.leaves(frozen) == [params0["b"]]
    assert T.combine_frozen(trainable, frozen) == params0


def visit_loss(params, batch):
    # d/dv sum(v[idx]) = counts of idx: SGD with lr 1 decrements v[i] once per visit.
    return jnp.sum(params["v"][batch["idx"]]), {}


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_minibatch_epochs_visit_every_example_once(drop_remainder):
    n, B = 30, 7
    data = {"idx": np.arange(n)}
    opt = T.OptimizerConfig(name="sgd", lr=1.0)
    r = T.train(visit_loss, {"v": jnp.zeros(n)}, data, opt, num_epochs=3, batch_size=B,
                drop_remainder=drop_remainder, progress=False)
    visits = -np.asarray(r.params["v"])
    if drop_remainder:  # 28 of 30 examples per epoch, a different 2 left out each epoch
        assert visits.sum() == 3 * (n - n % B) and visits.max() <= 3
    else:
        np.testing.assert_array_equal(visits, 3.0)


def test_history_eval_and_snapshots():
    r = T.train(LOSS, INIT, DATA, ADAMW, num_epochs=6, eval_every=4, snapshot_every=2, **SHARED)
    np.testing.assert_array_equal(r.train_history["epoch"], np.arange(1, 7))
    assert set(r.train_history) == {"epoch", "loss", "acc", "lr"}
    np.testing.assert_array_equal(r.eval_history["epoch"], [4, 6])  # every 4th and the last
    np.testing.assert_array_equal(r.snapshot_epochs, [2, 4, 6])
    assert tree_equal(jax.tree.map(lambda x: x[-1], r.snapshots), r.params)
    # the eval history holds the held-out loss of the params at that epoch
    final_eval = LOSS(r.params, HELD_OUT)
    np.testing.assert_allclose(r.eval_history["loss"][-1], final_eval[0], rtol=1e-6)
    np.testing.assert_allclose(r.eval_history["acc"][-1], final_eval[1]["acc"], rtol=1e-6)
    # snapshots stack over training time: one vmapped call evaluates all of them
    over_time = jax.vmap(lambda p: LOSS(p, HELD_OUT)[0])(r.snapshots)
    np.testing.assert_allclose(over_time[1], r.eval_history["loss"][0], rtol=1e-5)


def test_training_reduces_the_loss_and_is_deterministic(capsys):
    kw = dict(SHARED, num_epochs=8, log_every=4, progress=True)
    a = T.train(LOSS, INIT, DATA, ADAMW, **kw)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[train]")]
    assert len(lines) == 2 and "epoch 8/8" in lines[1] and "steps/s" in lines[1] and "ETA" in lines[1]
    assert a.train_history["loss"][-1] < 0.8 * a.train_history["loss"][0]
    b = T.train(LOSS, INIT, DATA, ADAMW, **dict(kw, progress=False))
    assert capsys.readouterr().err == ""
    assert tree_equal(a.params, b.params)
    c = T.train(LOSS, INIT, DATA, ADAMW, seed=1, **dict(kw, progress=False))
    assert not np.array_equal(a.params["embed"]["W_E"], c.params["embed"]["W_E"])


def test_loss_key_differs_per_step():
    def noisy(params, batch, key):
        return jnp.sum(params["w"] * jax.random.normal(key, (2,))), {}

    opt = T.OptimizerConfig(name="sgd", lr=1.0)
    r = T.train(noisy, {"w": jnp.zeros(2)}, {"i": np.arange(4)}, opt, num_epochs=3, batch_size=2, progress=False)
    step_key = jax.random.fold_in(jax.random.key(0), 2)
    expected = -sum(jax.random.normal(jax.random.fold_in(step_key, s), (2,)) for s in range(6))
    np.testing.assert_allclose(r.params["w"], expected, rtol=1e-6)


# --------------------------------------------------------------------------- divergence


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    # SGD on loss = -w raises w by 1 per step; the loss turns NaN once w reaches 5: at step 5.
    def blows_up(params, batch):
        w = params["w"]
        return jnp.where(w >= 5, jnp.nan, -w), {}

    opt = T.OptimizerConfig(name="sgd", lr=1.0)
    with pytest.raises(T.TrainingDivergedError, match=r"step 5 \(epoch 6") as err:
        T.train(blows_up, {"w": jnp.float32(0)}, {"x": np.zeros(3)}, opt, num_epochs=10,
                workdir=str(tmp_path), checkpoint_every=2, progress=False)
    last = str(tmp_path / "checkpoints" / "ckpt_00000004.msgpack")
    assert last in str(err.value)
    assert ckpt.latest_checkpoint(str(tmp_path / "checkpoints")) == last
    assert ckpt.list_checkpoints(str(tmp_path / "checkpoints")) == [2, 4]


# --------------------------------------------------------------------------- checkpoints and resume


class Interrupt(BaseException):
    pass


def test_progress_lines_keep_compilation_apart_and_say_when_a_run_resumes(tmp_path, capsys):
    kw = dict(SHARED, chunk_epochs=1, log_every=1, progress=True, workdir=str(tmp_path), checkpoint_every=1)
    T.train(LOSS, INIT, DATA, ADAMW, num_epochs=3, **kw)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "resumed" not in lines[0]
    assert "first chunks incl. compilation" in lines[0] and "epochs/s" not in lines[0], lines[0]
    assert all(re.search(r"epochs/s .*ETA .*\+ [\d.]+s first chunks incl\. compilation", l) for l in lines[1:]), lines
    T.train(LOSS, INIT, DATA, ADAMW, num_epochs=4, **kw)
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"\[train\] resumed from epoch 3 \(checkpoint .*ckpt_0*3\.msgpack\)", lines[0]), lines[0]
    assert lines[1].startswith("[train] epoch 4/4")


def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch):
    kw = dict(SHARED, num_epochs=8, eval_every=3, snapshot_every=2, checkpoint_every=2)
    full = T.train(LOSS, INIT, DATA, ADAMW, **kw)

    real_save, saves = ckpt.save_checkpoint, []

    def save_then_die(*args, **kwargs):  # the process dies right after the 2nd checkpoint
        real_save(*args, **kwargs)
        saves.append(args[1])
        if len(saves) == 2:
            raise Interrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        T.train(LOSS, INIT, DATA, ADAMW, workdir=str(tmp_path), **kw)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert saves == [2, 4]

    resumed = T.train(LOSS, INIT, DATA, ADAMW, workdir=str(tmp_path), **kw)
    assert tree_equal(resumed.params, full.params)
    on_disk, epochs = T.load_snapshots(str(tmp_path))
    assert tree_equal(on_disk, full.snapshots) and list(epochs) == [2, 4, 6, 8]
    assert tree_equal(resumed.opt_state, full.opt_state)
    assert tree_equal(resumed.snapshots, full.snapshots)
    for h in ("train_history", "eval_history"):
        a, b = getattr(resumed, h), getattr(full, h)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # a finished run's workdir just gives back the result
    again = T.train(LOSS, INIT, DATA, ADAMW, workdir=str(tmp_path), **kw)
    assert tree_equal(again.params, full.params)


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    kw = dict(SHARED, num_epochs=6, checkpoint_every=2, workdir=str(tmp_path))
    real_replace, calls = os.replace, []

    def replace_fails_on_second_checkpoint(src, dst):
        if dst.endswith("ckpt_00000004.msgpack"):
            calls.append(dst)
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_fails_on_second_checkpoint)
    with pytest.raises(ckpt.WriteError, match=r"ckpt_00000004\.msgpack: disk full \(simulated\)"):
        T.train(LOSS, INIT, DATA, ADAMW, **kw)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    ckpt_dir = str(tmp_path / "checkpoints")
    assert calls and ckpt.latest_checkpoint(ckpt_dir).endswith("ckpt_00000002.msgpack")
    assert ckpt.list_checkpoints(ckpt_dir) == [2]
    # a kill between write and rename leaves a stray temporary file: ignored
    (tmp_path / "checkpoints" / "ckpt_00000004.msgpack.tmp-deadbeef").write_bytes(b"half a checkp")
    resumed = T.train(LOSS, INIT, DATA, ADAMW, **kw)
    full = T.train(LOSS, INIT, DATA, ADAMW, **dict(kw, workdir=None))
    assert tree_equal(resumed.params, full.params)


def test_corrupt_or_mismatched_checkpoint_is_an_error_naming_the_file(tmp_path):
    kw = dict(SHARED, num_epochs=2, checkpoint_every=2, workdir=str(tmp_path))
    T.train(LOSS, INIT, DATA, ADAMW, **kw)
    path = ckpt.latest_checkpoint(str(tmp_path / "checkpoints"))

    with pytest.raises(ckpt.CheckpointError, match="seeds"):
        T.train(LOSS, INIT, DATA, ADAMW, seed=3, **kw)

    wider = tm.ModelConfig(**dict(CFG.to_dict(), d_mlp=32))
    with pytest.raises(ckpt.CheckpointError, match=r"blocks_0/mlp/W_in.*\[8, 16\].*\[8, 32\]") as err:
        T.train(functools.partial(seq_loss, wider), functools.partial(tm.init_params, wider), DATA, ADAMW,
                **dict(kw, num_epochs=4))
    assert path in str(err.value)

    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum") as err:
        T.train(LOSS, INIT, DATA, ADAMW, **dict(kw, num_epochs=4))
    assert path in str(err.value)


# --------------------------------------------------------------------------- many runs


def test_vmapped_runs_equal_individual_runs():
    seeds, wds = [0, 1, 2], [0.1, 0.5, 0.2]
    kw = dict(SHARED, num_epochs=4, snapshot_every=2)
    many = T.train_many(LOSS, INIT, DATA, ADAMW, seeds=seeds, hparams={"weight_decay": wds}, **kw)
    assert many.params["embed"]["W_E"].shape == (3, 5, 8)
    assert many.snapshots["embed"]["W_E"].shape == (3, 2, 5, 8)
    for i, (seed, wd) in enumerate(zip(seeds, wds)):
        alone = T.train(LOSS, INIT, DATA, dataclasses.replace(ADAMW, weight_decay=wd),
                        seed=seed, **kw)
        one = many.run(i)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.train_history["loss"], alone.train_history["loss"], rtol=1e-5)
        np.testing.assert_allclose(one.eval_history["acc"], alone.eval_history["acc"])


def test_grid():
    seeds, hp = T.grid([0, 1], weight_decay=[0.1, 1.0], lr=[1e-3])
    assert seeds == [0, 0, 1, 1]
    assert hp == {"weight_decay": [0.1, 1.0, 0.1, 1.0], "lr": [1e-3] * 4}


SHARDED_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    import test_train as t
    from toymech import train as T
    assert len(jax.devices()) == 8, jax.devices()
    kw = dict(seeds=[0, 1, 2, 3, 4, 5], hparams={{"lr": [1e-2, 2e-2] * 3}}, num_epochs=2, batch_size=16,
              eval_data=t.HELD_OUT, progress=False)
    sharded = T.train_many(t.LOSS, t.INIT, t.DATA, t.ADAMW, **kw)  # 6 runs padded to 8, one per device
    single = T.train_many(t.LOSS, t.INIT, t.DATA, t.ADAMW, devices=jax.devices()[:1], **kw)
    w = sharded.params["blocks_0"]["attn"]["W_Q"]
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)))
    print(json.dumps({{"n_devices": len(w.sharding.device_set), "shape": list(w.shape), "max_diff": diff,
                      "loss_diff": float(np.max(np.abs(sharded.train_history["loss"] - single.train_history["loss"])))}}))
""")


def test_sharded_over_8_host_devices_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = SHARDED_SCRIPT.format(tests=os.path.join(REPO, "tests"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n_devices"] == 8 and result["shape"] == [6, 2, 8, 4]
    assert result["max_diff"] < 1e-5 and result["loss_diff"] < 1e-5


MULTIPROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if process >= 0:
        jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process)
    import numpy as np
    from jax.experimental import multihost_utils
    sys.path.insert(0, {tests!r})
    import test_train as t
    from toymech import train as T
    kw = dict(seeds=[0, 1, 2, 3, 4, 5], hparams={{"lr": [1e-2, 2e-2] * 3}}, num_epochs=2, batch_size=16,
              eval_data=t.HELD_OUT, snapshot_every=1, progress=False)
    r = T.train_many(t.LOSS, t.INIT, t.DATA, t.ADAMW, **kw)
    params = multihost_utils.process_allgather(r.params, tiled=True) if process >= 0 else r.params
    flat = {{k: np.asarray(v) for k, v in T.flatten_params(params).items()}}
    np.savez(out, loss=r.train_history["loss"], acc=r.eval_history["acc"],
             snap=np.asarray(r.snapshots["embed"]["W_E"]), **flat)
    print(json.dumps({{"process_count": jax.process_count(), "devices": len(jax.devices()),
                      "local": len(jax.local_devices())}}))
""")


def test_train_many_across_two_processes_equals_one_process(tmp_path):
    """Two processes on this machine (jax.distributed with gloo CPU collectives, each
    seeing 2 of its own devices, 4 in all) give the single-process runs."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = MULTIPROCESS_SCRIPT.format(tests=os.path.join(REPO, "tests"))
    run = lambda i: subprocess.Popen([sys.executable, "-c", script, str(i), port, str(tmp_path / f"p{i}.npz")],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [run(0), run(1)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    assert [json.loads(o.strip().splitlines()[-1]) for o, _ in outs] == [{"process_count": 2, "devices": 4, "local": 2}] * 2
    single = subprocess.run([sys.executable, "-c", script, "-1", port, str(tmp_path / "single.npz")],
                            env=dict(env, XLA_FLAGS=""), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = np.load(tmp_path / "single.npz")
    for i in (0, 1):
        got = np.load(tmp_path / f"p{i}.npz")
        assert sorted(got.files) == sorted(expected.files)
        for name in expected.files:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=f"process {i}: {name}")

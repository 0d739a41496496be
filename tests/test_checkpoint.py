"""Tests of toymech.checkpoint: round trips, validation, corruption, atomicity, LATEST."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from toymech import checkpoint as ckpt


def opt_state_and_params():
    params = {"blocks_0": {"W": jnp.arange(6.0).reshape(2, 3), "b_in": jnp.ones(3)}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = tx.init(params)
    state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)[1]
    return {"params": params, "opt_state": state, "epoch": jnp.int32(7)}


def test_round_trip_with_template_keeps_structure_values_and_meta(tmp_path):
    tree = opt_state_and_params()
    path = str(tmp_path / "x.msgpack")
    ckpt.save_pytree(path, tree, {"epoch": 3})
    loaded = ckpt.load_pytree(path, template=tree)
    assert jax.tree.structure(loaded) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert ckpt.read_pytree(path)[1] == {"epoch": 3}


def test_load_without_template_gives_nested_dicts(tmp_path):
    path = str(tmp_path / "p.msgpack")
    params = {"embed": {"W_E": np.eye(3, dtype=np.float32)}, "unembed": {"b_U": np.zeros(2, np.float64)}}
    ckpt.save_pytree(path, params)
    loaded = ckpt.load_pytree(path)
    assert loaded.keys() == params.keys() and loaded["unembed"]["b_U"].dtype == np.float64
    np.testing.assert_array_equal(loaded["embed"]["W_E"], np.eye(3))


def test_mismatched_template_names_file_and_leaf(tmp_path):
    tree = opt_state_and_params()
    path = str(tmp_path / "x.msgpack")
    ckpt.save_pytree(path, tree)
    wrong_shape = jax.tree.map(lambda x: x, tree)
    wrong_shape["params"]["blocks_0"]["W"] = jnp.zeros((3, 3))
    with pytest.raises(ckpt.CheckpointError, match=r"x\.msgpack.*params/blocks_0/W.*\[2, 3\].*\[3, 3\]"):
        ckpt.load_pytree(path, template=wrong_shape)
    wrong_dtype = jax.tree.map(lambda x: x, tree)
    wrong_dtype["epoch"] = jnp.float32(0)
    with pytest.raises(ckpt.CheckpointError, match=r"'epoch'.*int32.*float32"):
        ckpt.load_pytree(path, template=wrong_dtype)
    with pytest.raises(ckpt.CheckpointError, match=r"missing leaves \['params/extra'\]"):
        ckpt.load_pytree(path, template={**tree, "params": {**tree["params"], "extra": jnp.zeros(1)}})


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_corrupt_files_are_errors_naming_the_file(tmp_path, damage):
    path = str(tmp_path / "c.msgpack")
    ckpt.save_pytree(path, {"w": np.arange(100.0)})
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) - 50]
    elif damage == "flip":
        data[-10] ^= 0x01
    else:
        data[:4] = b"PK\x03\x04"
    open(path, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="c.msgpack.*(checksum|bad header)"):
        ckpt.load_pytree(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_pytree(str(tmp_path / "missing.msgpack"))


def test_save_checkpoint_moves_latest_and_prunes(tmp_path):
    d = str(tmp_path / "ckpts")
    assert ckpt.latest_checkpoint(d) is None
    for step in (10, 20, 30):
        ckpt.save_checkpoint(d, step, {"w": np.full(2, step)}, keep=2)
    assert ckpt.list_checkpoints(d) == [20, 30]
    path = ckpt.latest_checkpoint(d)
    assert path == ckpt.checkpoint_path(d, 30)
    state, meta = ckpt.restore_checkpoint(path, {"w": np.zeros(2, np.int64)})
    assert meta["step"] == 30 and np.array_equal(state["w"], [30, 30])
    os.remove(path)
    with pytest.raises(ckpt.CheckpointError, match="LATEST: points to .*ckpt_00000030.msgpack"):
        ckpt.latest_checkpoint(d)


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    d = str(tmp_path)
    ckpt.save_checkpoint(d, 1, {"w": np.zeros(3)})
    real_fsync = os.fsync

    def die_while_writing(fd):  # the new file's bytes are written but never made durable/renamed
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "fsync", die_while_writing)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(d, 2, {"w": np.ones(3)})
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert sorted(os.listdir(d)) == ["LATEST", "ckpt_00000001.msgpack"]  # no temporary left behind
    state, meta = ckpt.restore_checkpoint(ckpt.latest_checkpoint(d), {"w": np.zeros(3)})
    assert meta["step"] == 1 and not state["w"].any()

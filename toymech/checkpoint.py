"""Atomic, verified checkpoints of pytrees on disk (training state, parameter snapshots).

Format and why. A checkpoint is one file: an 8-byte magic, the SHA-256 of the payload,
then the payload — a msgpack document (`flax.serialization.msgpack_serialize`) holding
a JSON metadata string and a flat `{path: array}` dict of the pytree's leaves. We
chose flax's msgpack with our own atomic rename over orbax's CheckpointManager because
the whole contract fits in this file and is easy to check: one file per checkpoint
(no directory of shards, no async threads, no version-dependent layout), no pickle,
any pytree (optax NamedTuple states included) through `jax.tree_util` paths, and a
checksum that turns a truncated or bit-flipped file into a clear error instead of
garbage numbers.

Atomicity. `save_pytree` writes to a temporary name in the target directory, fsyncs
it, and `os.replace`s it onto the final name (atomic on POSIX), then fsyncs the
directory. `save_checkpoint` additionally moves the `LATEST` pointer — itself written
the same way — only after the checkpoint file is complete, so a process killed at any
instant leaves either the old or the new "latest", never a half-written one.

Validation. `restore_checkpoint`/`load_pytree` given a template (a pytree of arrays or
`jax.ShapeDtypeStruct`s) check that the stored leaves have exactly the template's
paths, shapes and dtypes and raise `CheckpointError` naming the file and the first
mismatching leaf.

Layout under a checkpoint directory:
    LATEST                      text: the file name of the newest complete checkpoint
    ckpt_00001200.msgpack       one per saved step (older ones pruned to `keep`)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import serialization

MAGIC = b"TMCKPT01"
LATEST = "LATEST"
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.msgpack$")
_TMP_MARK = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match what the caller expects.

    The one base class for every checkpoint problem in toymech: this module's files,
    TransformerLens checkpoints read by `toymech.interop` (which subclasses it for
    refused pickles), and files that cannot be written (`WriteError`)."""


class WriteError(CheckpointError):
    """A file could not be written (disk full, read-only or unwritable directory); the
    previous version of the file, if any, is intact. `path` is the file, `reason` the
    OS's words."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = path, reason


# --------------------------------------------------------------------------- files


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or all of `data`.

    The bytes go to `<path>.tmp-<random>` in the same directory, are fsynced, and the
    temporary file is renamed onto `path`; on any error the temporary file is removed
    and `path` is untouched. An OSError (disk full, read-only directory) becomes
    `WriteError` naming `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as e:
        _remove_quietly(tmp)
        raise WriteError(path, e.strerror or str(e)) from e
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- pytrees


def _path_str(path) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def flatten_with_names(tree) -> dict[str, Any]:
    """`{'blocks_0/attn/W_Q': leaf, ...}`: every leaf of `tree` under its '/'-joined path."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_str(path): leaf for path, leaf in leaves}


def _nest(flat: Mapping[str, Any]) -> dict:
    """Rebuild nested dicts from '/'-joined paths (used when no template is given)."""
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def encode(tree, meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialize a pytree of arrays (plus JSON-able `meta`) to checkpoint bytes."""
    leaves = {name: np.asarray(jax.device_get(x)) for name, x in flatten_with_names(tree).items()}
    payload = serialization.msgpack_serialize(
        {"meta": json.dumps(dict(meta or {}), sort_keys=True), "leaves": leaves}
    )
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(data: bytes, path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Checkpoint bytes -> (flat {name: array}, meta). `path` names the file in errors."""
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a toymech checkpoint (bad header)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch; truncated or damaged)")
    try:
        doc = serialization.msgpack_restore(payload)
        meta = json.loads(doc["meta"])
        leaves = doc["leaves"]
    except Exception as e:  # a valid checksum over an unreadable payload: wrong writer
        raise CheckpointError(f"{path}: unreadable checkpoint payload: {e}") from e
    return {k: np.asarray(v) for k, v in leaves.items()}, meta


def conform(flat: Mapping[str, np.ndarray], template, path: str):
    """Arrange stored leaves into `template`'s structure, checking names, shapes, dtypes.

    Args:
        flat: `{name: array}` as returned by `decode`.
        template: pytree whose leaves have `.shape` and `.dtype` (arrays or
            `jax.ShapeDtypeStruct`).
        path: the file the leaves came from (for error messages).
    Raises:
        CheckpointError naming `path` and the first missing, unexpected or
        mismatching leaf.
    """
    expected = flatten_with_names(template)
    missing = [k for k in expected if k not in flat]
    extra = [k for k in flat if k not in expected]
    if missing or extra:
        raise CheckpointError(
            f"{path}: checkpoint does not match the expected state: "
            f"missing leaves {missing[:5]}, unexpected leaves {extra[:5]}"
        )
    for name, want in expected.items():
        got = flat[name]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            raise CheckpointError(
                f"{path}: leaf '{name}' is {got.dtype}{list(got.shape)} in the checkpoint but "
                f"{np.dtype(want.dtype)}{list(want.shape)} is expected"
            )
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[name] for name in expected])


def save_pytree(path: str, tree, meta: Mapping[str, Any] | None = None) -> None:
    """Atomically write one pytree (and optional JSON-able metadata) to `path`."""
    atomic_write_bytes(path, encode(tree, meta))


def read_pytree(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(flat {name: array}, meta) from a file written by `save_pytree`, checksum verified."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: checkpoint file not found") from e
    return decode(data, path)


def load_pytree_and_meta(path: str, template=None) -> tuple[Any, dict]:
    """(pytree, meta) saved by `save_pytree`.

    With `template`, the pytree has the template's structure (validated, numpy
    leaves); without, it is nested dicts rebuilt from the stored leaf paths.
    """
    flat, meta = read_pytree(path)
    return (_nest(flat) if template is None else conform(flat, template, path)), meta


def load_pytree(path: str, template=None):
    """The pytree saved by `save_pytree` at `path` (see `load_pytree_and_meta`)."""
    return load_pytree_and_meta(path, template)[0]


# --------------------------------------------------------------------------- checkpoint dirs


def checkpoint_path(directory: str, step: int) -> str:
    """File name used for the checkpoint of `step` in `directory`."""
    return os.path.join(directory, f"ckpt_{step:08d}.msgpack")


def list_checkpoints(directory: str) -> list[int]:
    """Steps of the complete checkpoint files in `directory`, ascending."""
    if not os.path.isdir(directory):
        return []
    steps = [int(m.group(1)) for f in os.listdir(directory) if (m := _CKPT_RE.match(f))]
    return sorted(steps)


def latest_checkpoint(directory: str) -> str | None:
    """Path of the checkpoint `LATEST` points to, or None when there is no checkpoint yet.

    Raises CheckpointError when `LATEST` exists but names a missing or malformed file.
    """
    pointer = os.path.join(directory, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    if not _CKPT_RE.match(name):
        raise CheckpointError(f"{pointer}: malformed pointer {name!r}")
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        raise CheckpointError(f"{pointer}: points to {path}, which does not exist")
    return path


def save_checkpoint(directory: str, step: int, state, meta: Mapping[str, Any] | None = None,
                    keep: int | None = 2) -> str:
    """Atomically save `state` as the checkpoint of `step` and make it the latest.

    Order: checkpoint file (tmp + rename) -> `LATEST` pointer (tmp + rename) -> prune
    checkpoints older than the newest `keep` (None keeps all) and stale temporary files.
    Returns the checkpoint's path.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1 or None, got {keep}")
    path = checkpoint_path(directory, step)
    save_pytree(path, state, dict(meta or {}, step=step))
    atomic_write_bytes(os.path.join(directory, LATEST), os.path.basename(path).encode())
    for f in os.listdir(directory):
        if _TMP_MARK in f:
            os.remove(os.path.join(directory, f))
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            if old != step:
                os.remove(checkpoint_path(directory, old))
    return path


def restore_checkpoint(path: str, template):
    """(state, meta) from checkpoint file `path`, validated against `template`."""
    flat, meta = read_pytree(path)
    return conform(flat, template, path), meta

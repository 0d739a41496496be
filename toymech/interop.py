"""TransformerLens checkpoints in and out, without needing PyTorch to read them.

Reading: `torch.save` writes a zip archive `<name>/data.pkl` (a pickle of the
object) plus one raw little-endian record `<name>/data/<key>` per storage; the
pickle refers to storages through `persistent_load` ids
`('storage', torch.<Type>Storage, key, location, numel)` and rebuilds tensors
with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
`read_torch_state_dict` reads that format with numpy alone. Its unpickler
resolves only the handful of globals a tensor state dict needs (the rebuild
functions, storage types and `collections.OrderedDict`), each mapped to a
harmless local stand-in, so a malicious pickle cannot run code: any other
global is refused with `UnsafeCheckpointError` before it is ever looked up.
Storages tagged with a CUDA device load like any other: the bytes are the
same, only the tag differs.

Mapping: a HookedTransformer state dict uses exactly the names of
`toymech.flatten_params`, plus two per-layer buffers that are not parameters,
`blocks.N.attn.mask` and `blocks.N.attn.IGNORE`. `config_from_state_dict`
infers everything the tensors determine and takes the rest from the caller;
`params_from_state_dict` checks every name and shape against the config.

Writing: `to_transformer_lens` gives a HookedTransformer state dict of numpy
arrays (parameters plus the mask buffers), `save_transformer_lens` writes it
as a `.pt` file through PyTorch, and `transformer_lens_config` the matching
`HookedTransformerConfig` arguments, so a model trained in toymech opens in
TransformerLens, and load(save(x)) == x exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pickle
import re
import zipfile
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toymech.checkpoint import CheckpointError
from toymech.config import ModelConfig
from toymech.model import init_params
from toymech.params import flatten_params, unflatten_params

# torch storage class name -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(jnp.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
# numpy dtype name -> ModelConfig.dtype for the float dtypes a checkpoint may hold.
_CONFIG_DTYPES = {"float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
_BUFFER_SUFFIXES = (".attn.mask", ".attn.IGNORE")
_LAYER_KEY = re.compile(r"blocks\.(\d+)\.")


# CheckpointError (from toymech.checkpoint, the one hierarchy): a file that is not a readable
# checkpoint, or a state dict that does not match its config; the message names the file,
# key and shapes involved.


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something other than tensors."""


# --- reading torch.save files without torch ---------------------------------


class _Storage(NamedTuple):
    """A storage's elements as a flat numpy array, tagged with its record key."""

    key: str
    data: np.ndarray  # [numel]


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """`torch._utils._rebuild_tensor_v2` for numpy: the (offset, size, stride)
    view of a storage (counted in elements), copied into its own array.
    The trailing arguments (requires_grad, hooks, metadata) do not matter here."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuild got a {type(storage).__name__} instead of a storage")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(n, int) for n in (storage_offset, *size, *stride)) or len(size) != len(stride):
        raise CheckpointError(f"malformed tensor view offset={storage_offset!r} size={size!r} stride={stride!r}")
    flat = storage.data
    if min((storage_offset, *size, *stride)) < 0 or math.prod(size) > flat.size:
        raise CheckpointError(
            f"tensor view offset={storage_offset} size={size} stride={stride} does not fit in storage "
            f"'{storage.key}' of {flat.size} elements"
        )
    if math.prod(size) > 0:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise CheckpointError(
                f"tensor view offset={storage_offset} size={size} stride={stride} reaches element {last} "
                f"of storage '{storage.key}', which holds {flat.size}"
            )
    view = np.lib.stride_tricks.as_strided(
        flat[storage_offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, *_):
    """`torch._utils._rebuild_parameter(_with_state)`: a Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"parameter rebuild got a {type(data).__name__} instead of a tensor")
    return data


class _Global(NamedTuple):
    """An allowed pickle global, as an inert stand-in: a storage type (`dtype`
    set) or a tensor-rebuild function (`rebuild` set). Being a tuple, it has no
    attributes a pickle's BUILD opcode could change."""

    name: str
    dtype: np.dtype | None = None
    rebuild: Callable | None = None

    def __call__(self, *args):
        if self.rebuild is None:
            raise CheckpointError(f"the pickle calls '{self.name}', which is not a function")
        return self.rebuild(*args)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Global("_rebuild_tensor_v2", rebuild=_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Global("_rebuild_parameter", rebuild=_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global(
        "_rebuild_parameter_with_state", rebuild=_rebuild_parameter
    ),
    **{("torch", name): _Global(name, dtype=dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a tensor state dict, refusing every global not in `_SAFE_GLOBALS`.

    `find_class` is the only way a pickle can reach a Python object (GLOBAL,
    STACK_GLOBAL, INST, OBJ and EXT opcodes all go through it), and here it
    returns local stand-ins instead of importing anything.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, where: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder, self._where = archive, prefix, byteorder, where
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._where}: refusing to unpickle global '{module}.{name}': only tensor state dicts "
                "(tensors, storages and OrderedDict) can be loaded, and nothing else is ever imported or run"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._where}: unknown persistent id {pid!r} (expected a torch storage)")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(storage_type, _Global) and storage_type.dtype is not None):
            raise CheckpointError(f"{self._where}: storage reference {pid!r} names no storage type")
        if not (isinstance(key, str) and isinstance(numel, int) and numel >= 0):
            raise CheckpointError(f"{self._where}: malformed storage reference {pid!r}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, numel)
        return self._storages[key]

    def _read_storage(self, storage_type: _Global, key: str, numel: int) -> _Storage:
        record = f"{self._prefix}/data/{key}"
        try:
            raw = self._archive.read(record)
        except KeyError:
            raise CheckpointError(f"{self._where}: storage record '{record}' is missing") from None
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(
                f"{self._where}: storage record '{record}' holds {len(raw)} bytes, but {numel} elements of "
                f"{storage_type.name} need {numel * dtype.itemsize}"
            )
        return _Storage(key, np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype))


def _archive_prefix(archive: zipfile.ZipFile, where: str) -> str:
    """The archive's top folder: the one holding `data.pkl`."""
    prefixes = [name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    prefixes = [p for p in prefixes if "/" not in p]
    if len(prefixes) != 1:
        raise CheckpointError(
            f"{where}: a zip archive but not a torch.save checkpoint (expected one '<name>/data.pkl', "
            f"found {len(prefixes)})"
        )
    return prefixes[0]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict into {name: numpy array}, without torch.

    Handles the zip format of torch >= 1.6 (every current file), any device tag
    (CUDA storages load on the CPU), strided and offset views of shared
    storages, and float64/32/16, bfloat16, integer and bool tensors. Legacy
    pre-1.6 files, truncated or corrupt archives, non-checkpoint files, pickles
    of anything but tensors, and non-dict contents raise `CheckpointError`
    naming the file and the problem.
    """
    where = os.fspath(path)
    with open(where, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(where):
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{where}: a bare pickle, not a zip-format torch.save checkpoint (legacy pre-1.6 torch.save "
                "files are not supported: re-save them with torch >= 1.6)"
            )
        if head == b"PK\x03\x04":
            raise CheckpointError(f"{where}: truncated or corrupt zip archive (no central directory)")
        raise CheckpointError(f"{where}: not a torch.save checkpoint (not a zip archive)")
    try:
        with zipfile.ZipFile(where) as archive:
            prefix = _archive_prefix(archive, where)
            names = set(archive.namelist())
            byteorder = "little"
            if f"{prefix}/byteorder" in names:
                byteorder = archive.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise CheckpointError(f"{where}: unknown byte order {byteorder!r}")
            with archive.open(f"{prefix}/data.pkl") as pkl:
                obj = _TensorUnpickler(pkl, archive, prefix, byteorder, where).load()
    except CheckpointError:
        raise
    except Exception as e:  # untrusted bytes: any failure to parse them means a corrupt file
        raise CheckpointError(f"{where}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: holds a {type(obj).__name__}, not a state dict of tensors")
    for name, value in obj.items():
        if not (isinstance(name, str) and isinstance(value, np.ndarray)):
            raise CheckpointError(
                f"{where}: entry {name!r} is of type {type(value).__name__}, not a tensor; expected a state dict "
                "(e.g. model.state_dict(), not a training checkpoint holding one)"
            )
    return dict(obj)


# --- state dict <-> (config, params) ----------------------------------------


def _parameter_entries(state_dict: dict) -> dict:
    """The state dict without the attention mask / IGNORE buffers."""
    return {k: v for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES)}


def _shape_of(state_dict: dict, key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"state dict has no '{key}', which every HookedTransformer has")
    shape = np.shape(state_dict[key])
    if len(shape) != ndim:
        raise CheckpointError(f"'{key}' has shape {shape}, expected {ndim} dimensions")
    return shape


def _n_layers(state_dict: dict) -> int:
    layers = sorted({int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))})
    if layers != list(range(len(layers))) or not layers:
        raise CheckpointError(f"state dict blocks must be numbered 0..n-1, found layers {layers}")
    return len(layers)


def _attention_dir_from_masks(state_dict: dict, n_layers: int, n_ctx: int) -> str | None:
    """'causal', 'bidirectional' or None (no mask saved) from `blocks.N.attn.mask`.

    TransformerLens before 3.0 saved a [n_ctx, n_ctx] lower-triangular mask in
    every model, bidirectional ones included (it applied it only when
    attention_dir == 'causal'), so a triangular mask reads as 'causal', the
    default, which the caller may override. An all-True mask is what
    `to_transformer_lens` writes for a bidirectional model. TransformerLens 3.x
    saves an empty buffer, which says nothing.
    """
    found = set()
    for layer in range(n_layers):
        key = f"blocks.{layer}.attn.mask"
        if key not in state_dict or np.size(state_dict[key]) == 0:
            continue
        mask = np.asarray(state_dict[key])
        if mask.shape != (n_ctx, n_ctx):
            raise CheckpointError(f"'{key}' has shape {mask.shape}, expected (n_ctx, n_ctx) = {(n_ctx, n_ctx)}")
        if mask.all():
            found.add("bidirectional")
        elif np.array_equal(mask.astype(bool), np.tril(np.ones((n_ctx, n_ctx), bool))):
            found.add("causal")
        else:
            raise CheckpointError(f"'{key}' is neither causal nor all-True (local attention is not supported)")
    if len(found) > 1:
        raise CheckpointError(f"the attention masks of different layers disagree: {sorted(found)}")
    return found.pop() if found else None


def config_from_state_dict(state_dict: dict, **overrides) -> ModelConfig:
    """The ModelConfig a HookedTransformer state dict determines, plus `overrides`.

    Inferred: n_layers, d_model, d_vocab (W_E), n_ctx (W_pos), n_heads, d_head
    (W_Q), d_mlp (W_in, or None: attention-only), d_vocab_out (W_U),
    normalization_type ('LN' when LayerNorm weights are saved, else None; pass
    'LNPre' for a model whose LayerNorm was folded), attention_dir (an all-True
    saved mask means 'bidirectional'; a triangular or empty one gives the
    default 'causal', which the caller overrides for a TransformerLens encoder,
    as TransformerLens saved the triangular mask in those too), dtype (of W_E;
    float32 for a float64 file unless JAX has x64 enabled). Not recorded in a
    state dict, so supplied by the caller: act_fn (required when the model has
    MLPs) and eps (default 1e-5). Any field may be overridden;
    `params_from_state_dict` then checks it against the tensors.
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise TypeError(f"unknown ModelConfig fields {sorted(unknown)}")
    d_vocab, d_model = _shape_of(state_dict, "embed.W_E", 2)
    n_ctx, _ = _shape_of(state_dict, "pos_embed.W_pos", 2)
    n_layers = _n_layers(state_dict)
    n_heads, _, d_head = _shape_of(state_dict, "blocks.0.attn.W_Q", 3)
    d_mlp = _shape_of(state_dict, "blocks.0.mlp.W_in", 2)[1] if "blocks.0.mlp.W_in" in state_dict else None
    _, d_vocab_out = _shape_of(state_dict, "unembed.W_U", 2)
    has_ln = any(k == "ln_final.w" or k.endswith((".ln1.w", ".ln2.w")) for k in state_dict)
    dtype = _CONFIG_DTYPES.get(np.asarray(state_dict["embed.W_E"]).dtype.name, "float32")
    if dtype == "float64" and not jax.config.read("jax_enable_x64"):
        dtype = "float32"  # what JAX would silently make of float64 arrays anyway
    saved_dir = _attention_dir_from_masks(state_dict, n_layers, overrides.get("n_ctx", n_ctx))
    if saved_dir == "bidirectional" and overrides.get("attention_dir", "bidirectional") != "bidirectional":
        raise CheckpointError(
            f"attention_dir={overrides['attention_dir']!r} contradicts the all-True (bidirectional) attention mask"
        )
    if d_mlp is not None and "act_fn" not in overrides:
        raise CheckpointError(
            "the state dict has MLP layers but does not record their activation function: pass act_fn=..."
        )
    inferred = dict(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab_out,
        n_ctx=n_ctx,
        normalization_type="LN" if has_ln else None,
        attention_dir=saved_dir or "causal",
        dtype=dtype,
    )
    return ModelConfig(**{**inferred, **overrides})


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """TL name -> shape of every parameter of a model with this config."""
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return {name: tuple(leaf.shape) for name, leaf in flatten_params(abstract).items()}


def _check_against_config(cfg: ModelConfig, flat: dict, what: str) -> None:
    """Raises CheckpointError naming every missing/extra key and mis-shaped tensor."""
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    for name in sorted(set(expected) & set(flat)):
        if tuple(np.shape(flat[name])) != expected[name]:
            problems.append(f"'{name}' has shape {tuple(np.shape(flat[name]))} but the config needs {expected[name]}")
    if problems:
        raise CheckpointError(f"{what} does not match {cfg}: " + "; ".join(problems))


def params_from_state_dict(cfg: ModelConfig, state_dict: dict) -> dict:
    """toymech params (nested, dtype cfg.dtype) from a HookedTransformer state dict.

    The mask/IGNORE buffers are dropped; every other key must be exactly a
    parameter of `cfg` with its shape (`CheckpointError` otherwise).
    """
    flat = _parameter_entries(state_dict)
    _check_against_config(cfg, flat, "state dict")
    return unflatten_params({k: jnp.asarray(v, dtype=cfg.dtype) for k, v in flat.items()})


def load_transformer_lens(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict]:
    """(cfg, params) from a `torch.save`d HookedTransformer state dict; no torch needed.

    `overrides` are ModelConfig fields the file does not record (act_fn, eps,
    'LNPre' normalization of a folded model, 'bidirectional' attention) or
    that should replace inferred ones; see `config_from_state_dict`.
    """
    state_dict = read_torch_state_dict(path)
    try:
        cfg = config_from_state_dict(state_dict, **overrides)
        return cfg, params_from_state_dict(cfg, state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{os.fspath(path)}: {e}") from None


# --- toymech -> TransformerLens ---------------------------------------------


def to_transformer_lens(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """A HookedTransformer state dict of numpy arrays for (cfg, params).

    Holds every parameter under its TransformerLens name, and per layer the
    buffers `attn.mask` (bool [n_ctx, n_ctx]: lower-triangular for causal,
    all-True for bidirectional models, so the attention direction survives a
    round trip) and `attn.IGNORE` (-inf). Loads into
    `HookedTransformer(HookedTransformerConfig(**transformer_lens_config(cfg)))`
    with `load_state_dict(..., strict=True)`.
    """
    flat = {name: np.array(leaf) for name, leaf in flatten_params(params).items()}  # writable copies
    _check_against_config(cfg, flat, "params")
    mask = np.ones((cfg.n_ctx, cfg.n_ctx), bool)
    if cfg.attention_dir == "causal":
        mask = np.tril(mask)
    for layer in range(cfg.n_layers):
        flat[f"blocks.{layer}.attn.mask"] = mask.copy()
        flat[f"blocks.{layer}.attn.IGNORE"] = np.array(-np.inf, np.float32)
    return flat


def transformer_lens_config(cfg: ModelConfig) -> dict:
    """Keyword arguments of the `HookedTransformerConfig` equivalent to `cfg`."""
    return dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        d_vocab_out=cfg.d_vocab_out,
        act_fn=cfg.act_fn,
        attn_only=cfg.attn_only,
        normalization_type=cfg.normalization_type,
        attention_dir=cfg.attention_dir,
        positional_embedding_type=cfg.positional_embedding_type,
        eps=cfg.eps,
    )


def save_transformer_lens(path: str | os.PathLike, cfg: ModelConfig, params: dict) -> None:
    """Writes `to_transformer_lens(cfg, params)` as a `.pt` file (needs PyTorch)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "save_transformer_lens writes a .pt file through PyTorch, which is not installed; "
            "to_transformer_lens(cfg, params) gives the same state dict as numpy arrays"
        ) from e
    state_dict = collections.OrderedDict()
    for name, value in to_transformer_lens(cfg, params).items():
        if value.dtype == jnp.bfloat16:  # torch.from_numpy has no bfloat16
            state_dict[name] = torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16)
        else:
            state_dict[name] = torch.from_numpy(value)
    torch.save(state_dict, os.fspath(path))

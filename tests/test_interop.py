"""TransformerLens checkpoints in and out: the torch-free reader against
torch.load, the five ARENA checkpoints against TransformerLens (raw and
processed), the sum model's study-4 numbers, the restricted unpickler, clear
errors for bad files and bad state dicts, and lossless round trips."""

import collections
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interop, weights
from toymech.interop import CheckpointError, UnsafeCheckpointError
from random_params import random_params

# The configurations documented in shared/models/arena/README.md:
# (n_layers, d_model, n_heads, d_head, d_mlp, normalization, d_vocab, d_vocab_out, n_ctx)
ARENA = {
    "sum_model": (2, 48, 3, 24, None, "LN", 12, 12, 14),
    "palindrome_classifier": (2, 28, 2, 14, None, "LN", 33, 2, 22),
    "first_unique_char_model": (2, 42, 3, 14, None, "LN", 11, 11, 20),
    "sorted_list_model": (1, 96, 2, 48, None, "LN", 52, 52, 21),
    "cumsum_model": (1, 24, 1, 12, 8, None, 11, 3, 20),
}
TOL = dict(rtol=2e-4, atol=2e-5)


def _arena_path(shared_dir, name):
    return shared_dir / "models" / "arena" / f"{name}.pt"


def _tokens(cfg, batch=4, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(batch, cfg.n_ctx))


def _assert_same_tree(a, b):
    """Same keys, shapes, dtypes and bit-identical values."""
    fa, fb = tm.flatten_params(a), tm.flatten_params(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        np.testing.assert_array_equal(np.asarray(fa[k], np.float32), np.asarray(fb[k], np.float32), err_msg=k)


def _write_zip(path, records):
    """A zip archive with the given {name: bytes} records, as torch.save lays them out."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, data)
    return path


# --- the five ARENA checkpoints ---------------------------------------------


@pytest.mark.parametrize("name", list(ARENA))
def test_arena_checkpoints_load_with_their_documented_configs(shared_dir, name):
    # All five were saved from cuda:0; they must load on a CPU-only machine.
    cfg, params = interop.load_transformer_lens(_arena_path(shared_dir, name), act_fn="relu")
    got = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.normalization_type,
           cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx)
    assert got == ARENA[name]
    assert cfg.attention_dir == "causal" and cfg.act_fn == "relu" and cfg.dtype == "float32"
    logits, _ = tm.apply(cfg, params, _tokens(cfg))
    assert logits.shape == (4, cfg.n_ctx, cfg.d_vocab_out) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", list(ARENA))
def test_reader_gives_exactly_what_torch_load_gives(shared_dir, name):
    torch = pytest.importorskip("torch")
    path = _arena_path(shared_dir, name)
    ours = interop.read_torch_state_dict(path)
    theirs = torch.load(path, map_location="cpu")
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert ours[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_reader_handles_views_dtypes_and_parameters(tmp_path):
    torch = pytest.importorskip("torch")
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    sd = collections.OrderedDict(
        contiguous=x, transposed=x.transpose(0, 2), offset_strided=x[1, 1:, ::2],
        bf16=torch.randn(5).to(torch.bfloat16), f16=torch.randn(3, dtype=torch.float16),
        f64=torch.randn(2, dtype=torch.float64), mask=torch.tensor([True, False]), i64=torch.arange(3),
        i32=torch.arange(3, dtype=torch.int32), u8=torch.arange(3, dtype=torch.uint8),
        parameter=torch.nn.Parameter(torch.ones(2)), empty=torch.empty(0, 3), scalar=torch.tensor(3.0),
    )
    torch.save(sd, tmp_path / "x.pt")
    got = interop.read_torch_state_dict(tmp_path / "x.pt")
    assert list(got) == list(sd)
    for k, v in sd.items():
        want = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
    assert got["bf16"].dtype == jnp.bfloat16 and got["f16"].dtype == np.float16


@pytest.mark.parametrize("name", list(ARENA))
@pytest.mark.parametrize("processed", [False, True])
def test_arena_checkpoints_match_transformer_lens(shared_dir, name, processed):
    pytest.importorskip("transformer_lens")
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    import tl_reference

    path = _arena_path(shared_dir, name)
    cfg, params = interop.load_transformer_lens(path, act_fn="relu")
    model = HookedTransformer(HookedTransformerConfig(**interop.transformer_lens_config(cfg), use_attn_result=True))
    state_dict = torch.load(path, map_location="cpu")
    if processed:
        model.load_and_process_state_dict(state_dict)  # TL's defaults: fold LN, center, fold value biases
        cfg, params = weights.process_weights(cfg, params)
    else:
        model.load_state_dict(state_dict)
    assert model.cfg.normalization_type == cfg.normalization_type

    tl_params = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}
    ours = tm.flatten_params(params)
    assert set(ours) == set(tl_params)
    for k, v in tl_params.items():
        np.testing.assert_allclose(ours[k], v, rtol=1e-5, atol=1e-6, err_msg=k)

    tokens = _tokens(cfg)
    with torch.no_grad():
        tl_logits, cache = model.run_with_cache(torch.tensor(tokens))
    logits, acts = tm.apply(cfg, params, tokens, capture="all")
    np.testing.assert_allclose(logits, tl_logits.numpy(), **TOL)
    ignore = model.blocks[0].attn.IGNORE.item()  # these files saved -1e5 as the masked-score fill; toymech uses -inf
    np.testing.assert_array_equal(acts["hook_tokens"], tokens)  # these models were built without hook_tokens
    # The split-input sites exist in TransformerLens only with its split options (tested against those in
    # test_model.py); with the checkpoints' own config they are copies of resid_pre (per head) / resid_mid.
    split = tl_reference.split_option_sites(cfg)
    assert set(acts) - set(cache.keys()) == {"hook_tokens"} | split
    for site, act in acts.items():
        if site == "hook_tokens":
            continue
        if site in split:
            layer = site.split(".")[1]
            resid = cache[f"blocks.{layer}.hook_resid_{'mid' if site.endswith('mlp_in') else 'pre'}"].numpy()
            want = resid if site.endswith("mlp_in") else np.broadcast_to(resid[:, :, None], act.shape)
        else:
            want = cache[site].numpy()
        if site.endswith("hook_attn_scores"):
            want = np.where(want == ignore, -np.inf, want)
        np.testing.assert_allclose(act, want, err_msg=site, **TOL)


def test_sum_model_reproduces_the_study_4_numbers(shared_dir):
    cfg, params = interop.load_transformer_lens(_arena_path(shared_dir, "sum_model"), act_fn="relu")
    cfg, params = weights.process_weights(cfg, params)
    tokens = np.loadtxt(shared_dir / "fixtures" / "arena_sum_eval_1000.txt", dtype=np.int32)
    assert tokens.shape == (1000, 14)
    logits, _ = tm.apply(cfg, params, tokens)
    # [a1..a4, +, b1..b4, =, c1..c4]: the sum digits c1..c4 are predicted from positions 9..12
    log_probs = jax.nn.log_softmax(logits[:, 9:13], axis=-1)
    correct = np.asarray(jnp.take_along_axis(log_probs, tokens[:, 10:14, None], axis=-1)[..., 0])  # [1000, 4]
    prob = np.exp(correct)
    got = [round(float(x), 3) for x in (-correct.mean(), prob.mean(), np.median(prob), prob.min())]
    assert got == [0.007, 0.993, 0.996, 0.759]


# --- the restricted unpickler ------------------------------------------------


class _RunsCode:
    """Unpickling this under plain pickle calls os.mkdir(path)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, protocol):
    payload = pickle.dumps(collections.OrderedDict([("embed.W_E", _RunsCode(str(tmp_path / "pwned")))]),
                           protocol=protocol)
    # Under plain pickle this payload really runs code:
    pickle.loads(payload)
    assert (tmp_path / "pwned").is_dir()
    os.rmdir(tmp_path / "pwned")

    path = _write_zip(tmp_path / "evil.pt", {"evil/data.pkl": payload, "evil/byteorder": b"little"})
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to unpickle global '{os.mkdir.__module__}.mkdir'"):
        interop.read_torch_state_dict(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "module, name", [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")])
def test_unpickler_allows_only_tensor_globals(tmp_path, module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    path = _write_zip(tmp_path / "x.pt", {"x/data.pkl": payload})
    with pytest.raises(UnsafeCheckpointError, match=f"'{module}.{name}'"):
        interop.read_torch_state_dict(path)


# --- errors for bad files -----------------------------------------------------


def test_truncated_checkpoint_is_a_clear_error(shared_dir, tmp_path):
    data = _arena_path(shared_dir, "sum_model").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: truncated or corrupt"):
        interop.load_transformer_lens(path)


def test_short_storage_record_is_a_clear_error(shared_dir, tmp_path):
    with zipfile.ZipFile(_arena_path(shared_dir, "sum_model")) as z:
        records = {n: z.read(n) for n in z.namelist()}
    records["sum_model/data/0"] = records["sum_model/data/0"][:-4]
    path = _write_zip(tmp_path / "short.pt", records)
    with pytest.raises(CheckpointError, match=r"'sum_model/data/0' holds 2300 bytes, but 576 elements"):
        interop.read_torch_state_dict(path)


@pytest.mark.parametrize("content, message", [
    (b"hello, I am a text file\n", "not a torch.save checkpoint"),
    (pickle.dumps({"embed.W_E": [1.0]}), "a bare pickle"),
])
def test_non_checkpoint_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        interop.read_torch_state_dict(path)


def test_zip_without_pickle_and_pickle_without_state_dict_are_clear_errors(tmp_path):
    path = _write_zip(tmp_path / "a.zip", {"a/readme.txt": b"hi"})
    with pytest.raises(CheckpointError, match="not a torch.save checkpoint"):
        interop.read_torch_state_dict(path)
    path = _write_zip(tmp_path / "b.pt", {"b/data.pkl": pickle.dumps(collections.OrderedDict(epoch=3), protocol=2)})
    with pytest.raises(CheckpointError, match="entry 'epoch' is of type int, not a tensor"):
        interop.read_torch_state_dict(path)


# --- state dicts that do not match the config --------------------------------

CFG = tm.ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=7, d_vocab_out=5, n_ctx=6)


def test_missing_extra_and_misshaped_tensors_name_key_and_shapes():
    sd = interop.to_transformer_lens(CFG, random_params(CFG))
    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.W_K"}
    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.attn.W_K'\]"):
        interop.params_from_state_dict(CFG, missing)
    extra = {**sd, "blocks.0.mlp.W_gate": np.zeros((8, 16), np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected \['blocks.0.mlp.W_gate'\]"):
        interop.params_from_state_dict(CFG, extra)
    misshaped = {**sd, "blocks.0.mlp.W_out": np.zeros((16, 9), np.float32)}
    message = r"'blocks.0.mlp.W_out' has shape \(16, 9\) but the config needs \(16, 8\)"
    with pytest.raises(CheckpointError, match=message):
        interop.params_from_state_dict(CFG, misshaped)


def test_overrides_that_contradict_the_checkpoint_are_clear_errors(shared_dir):
    path = _arena_path(shared_dir, "sum_model")
    message = r"sum_model.pt: .*'blocks.0.attn.W_Q' has shape \(3, 48, 24\) but the config needs \(4, 48, 24\)"
    with pytest.raises(CheckpointError, match=message):
        interop.load_transformer_lens(path, n_heads=4)
    with pytest.raises(CheckpointError, match=r"unexpected \['blocks.0.ln1.b'"):
        interop.load_transformer_lens(path, normalization_type="LNPre")
    with pytest.raises(CheckpointError, match="pass act_fn"):
        interop.load_transformer_lens(_arena_path(shared_dir, "cumsum_model"))


def test_attention_direction_comes_from_the_saved_mask():
    sd = interop.to_transformer_lens(CFG, random_params(CFG))
    assert interop.config_from_state_dict(sd, act_fn="relu").attention_dir == "causal"
    # TransformerLens 3.x saves an empty mask buffer: no information, default causal
    empty = {**sd, "blocks.0.attn.mask": np.zeros((0, 0), bool), "blocks.1.attn.mask": np.zeros((0, 0), bool)}
    assert interop.config_from_state_dict(empty, act_fn="relu").attention_dir == "causal"
    # Older TransformerLens saved the triangular mask for bidirectional models too: the user says so
    told = interop.config_from_state_dict(sd, act_fn="relu", attention_dir="bidirectional")
    assert told.attention_dir == "bidirectional"
    bidir = interop.to_transformer_lens(CFG.replace(attention_dir="bidirectional"), random_params(CFG))
    assert interop.config_from_state_dict(bidir, act_fn="relu").attention_dir == "bidirectional"
    with pytest.raises(CheckpointError, match="contradicts"):
        interop.config_from_state_dict(bidir, act_fn="relu", attention_dir="causal")
    banded = {**sd, "blocks.1.attn.mask": np.triu(np.tril(np.ones((6, 6), bool)), -2)}
    with pytest.raises(CheckpointError, match="'blocks.1.attn.mask' is neither causal nor all-True"):
        interop.config_from_state_dict(banded, act_fn="relu")


# --- round trips --------------------------------------------------------------

ROUND_TRIP_CONFIGS = {
    "ln_mlp_causal": CFG,
    "attn_only_bidirectional": CFG.replace(d_mlp=None, attention_dir="bidirectional", d_vocab_out=7),
    "no_norm_gelu": CFG.replace(normalization_type=None, act_fn="gelu", n_layers=1),
    "lnpre_silu_bidirectional": CFG.replace(normalization_type="LNPre", act_fn="silu", attention_dir="bidirectional"),
}


def _reload_overrides(cfg):
    """What a state dict cannot say: the activation (of MLP models) and LNPre."""
    overrides = {} if cfg.attn_only else {"act_fn": cfg.act_fn}
    if cfg.normalization_type == "LNPre":
        overrides["normalization_type"] = "LNPre"
    return overrides


@pytest.mark.parametrize("name", list(ROUND_TRIP_CONFIGS))
def test_state_dict_round_trip_is_lossless(name):
    cfg = ROUND_TRIP_CONFIGS[name]
    params = random_params(cfg)
    sd = interop.to_transformer_lens(cfg, params)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    cfg2 = interop.config_from_state_dict(sd, **_reload_overrides(cfg))
    assert cfg2 == cfg
    _assert_same_tree(interop.params_from_state_dict(cfg2, sd), params)


@pytest.mark.parametrize("name", list(ROUND_TRIP_CONFIGS))
def test_saved_file_loads_in_transformer_lens_and_back_in_toymech(tmp_path, name):
    pytest.importorskip("transformer_lens")
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = ROUND_TRIP_CONFIGS[name]
    params = random_params(cfg)
    path = tmp_path / "model.pt"
    interop.save_transformer_lens(path, cfg, params)

    model = HookedTransformer(HookedTransformerConfig(**interop.transformer_lens_config(cfg)))
    model.load_state_dict(torch.load(path), strict=True)
    tokens = _tokens(cfg)
    with torch.no_grad():
        tl_logits = model(torch.tensor(tokens)).numpy()
    np.testing.assert_allclose(tm.apply(cfg, params, tokens)[0], tl_logits, **TOL)

    cfg2, params2 = interop.load_transformer_lens(path, **_reload_overrides(cfg))
    assert cfg2 == cfg
    _assert_same_tree(params2, params)


def test_bfloat16_round_trip_through_a_file(tmp_path):
    pytest.importorskip("torch")
    cfg = CFG.replace(dtype="bfloat16")
    params = random_params(cfg)
    interop.save_transformer_lens(tmp_path / "bf16.pt", cfg, params)
    cfg2, params2 = interop.load_transformer_lens(tmp_path / "bf16.pt", act_fn="relu")
    assert cfg2 == cfg
    _assert_same_tree(params2, params)


def test_save_without_torch_says_how_to_get_the_state_dict(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match="to_transformer_lens"):
        interop.save_transformer_lens(tmp_path / "x.pt", CFG, random_params(CFG))


def test_loading_needs_no_torch(shared_dir):
    import subprocess
    import sys

    path = str(_arena_path(shared_dir, "sum_model"))
    script = (
        "import sys; sys.modules['torch'] = sys.modules['transformer_lens'] = None\n"  # `import torch` now fails
        "from toymech import interop, weights\n"
        f"cfg, params = weights.process_weights(*interop.load_transformer_lens({path!r}))\n"
        "print(cfg.normalization_type, any(sys.modules[m] for m in list(sys.modules) if m.startswith('torch')))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.split() == ["LNPre", "False"]

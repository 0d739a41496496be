"""The persistent compilation cache: a second process loads what the first compiled."""

import os
import subprocess
import sys
import textwrap

import pytest

from toymech import compilation_cache

SCRIPT = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, numpy as np
    import toymech as tm
    from toymech import compilation_cache
    compilation_cache.enable(sys.argv[1])
    cfg = tm.ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=None, d_vocab=5, n_ctx=4)
    logits, _ = tm.apply(cfg, tm.init_params(cfg, jax.random.key(0)), np.zeros((2, 4), np.int32))
    print(float(logits.sum()))
""")


def _run(directory):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def _entries(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith("."))


def test_a_second_process_reuses_the_first_ones_programs(tmp_path):
    first = _run(tmp_path)
    written = _entries(tmp_path)
    assert written, "the first process cached nothing"
    assert _run(tmp_path) == first
    assert _entries(tmp_path) == written, "the second process compiled programs the first had cached"


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
    assert compilation_cache.default_dir() == str(tmp_path / "c")
    monkeypatch.delenv(compilation_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_dir() == os.path.join(str(tmp_path), "toymech", "jax")


def test_an_uncreatable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot create the compilation cache folder .*file/cache"):
        compilation_cache.enable(str(blocker / "cache"))

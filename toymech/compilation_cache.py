"""JAX's persistent compilation cache, switched on for toymech runs.

XLA compiles every new program shape, and on a CPU a training chunk or an
analysis sweep can take longer to compile than to run. With the persistent
cache, a second process that builds the same programs (a rerun of a study, the
same notebook tomorrow) loads them from disk instead. The experiment binaries
call `enable()` at start-up (their `--compilation_cache_dir` flag picks the
folder, and `--nocompilation_cache` switches it off); research code turns it on
the same way:

    import toymech
    toymech.compilation_cache.enable()          # ~/.cache/toymech/jax, or $TOYMECH_CACHE_DIR
    toymech.compilation_cache.enable("/scratch/jax-cache")

Entries are keyed by the program, the JAX/XLA versions and the device kind, so
a stale entry is never used. The folder may be deleted at any time.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "TOYMECH_CACHE_DIR"


def default_dir() -> str:
    """$TOYMECH_CACHE_DIR, else $XDG_CACHE_HOME/toymech/jax (~/.cache/toymech/jax)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "toymech", "jax")


def enable(directory: str | None = None) -> str:
    """Caches every compiled program under `directory` (default `default_dir()`).

    Returns the folder. Raises OSError naming it if it cannot be created.
    """
    directory = os.path.abspath(directory or default_dir())
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the compilation cache folder {directory}: {e.strerror}") from e
    jax.config.update("jax_compilation_cache_dir", directory)
    # Small programs are the common case here: cache them all, however quick to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory

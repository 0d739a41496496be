"""What both benchmarks share: wall-clock timing, the machine's float32 matmul
throughput (the "peak" that FLOP rates are quoted against), the load average with a
loud warning when other work is running, and medians of pairwise ratios."""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn) -> float:
    """Seconds one call of `fn()` takes, its result made ready (JAX's async dispatch)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of float32 GFLOP/s of a jitted [n, n] @ [n, n] (after warm-up calls)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    for _ in range(3):
        dot(a, a).block_until_ready()
    return 2 * n**3 / min(timed(lambda: dot(a, a)) for _ in range(repeats)) / 1e9


def load_average() -> float:
    """The 1-minute load average; above the core count, a warning on stderr says the
    ratios do not describe an idle machine (PyTorch slows more than JAX when loaded)."""
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} exceeds the {os.cpu_count()} cores: other work is running, "
              "and these ratios do not describe an idle machine", file=sys.stderr, flush=True)
    return load


def median_ratio(numerators, denominators) -> float:
    """The median of the pairwise ratios of two alternating series (A B A B ...)."""
    return float(np.median([a / b for a, b in zip(numerators, denominators, strict=True)]))


def machine() -> dict:
    """What the numbers were measured on."""
    import platform
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(), "devices": len(jax.devices())}

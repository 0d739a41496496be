r"""Training throughput of toymech against TransformerLens/PyTorch on the studies' models.

  python -m experiments.benchmark_training --out=/tmp/benchmark_training.json
  python -m experiments.benchmark_training --studies=reverse --seed_counts=1,8 --out=/tmp/b.json

For each study's model configuration (synthetic data of the study's shapes), trains a
fixed number of optimizer steps with `toymech.train.train` (compiled once in a warm-up
call, then timed) and, when transformer_lens is installed, the same configuration as a
plain `HookedTransformerConfig` (no use_attn_result / use_split_qkv_input /
use_hook_tokens, which slow it ~10x) with a standard PyTorch loop, in the same process
with the same thread count. Prints and writes (JSON) steps/s of both and their ratio,
float32 matmul throughput (a large jitted `jnp.dot`), the grokking step's analytic
forward+backward FLOPs and its fraction of that throughput, and seed-steps/s of
`train_many` with 1, 8 and 32 vmapped seeds. Takes a few minutes on 2 CPU cores.
"""

import dataclasses
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import toymech as tm
from toymech import train as T

_STUDIES = flags.DEFINE_list("studies", ["reverse", "sum", "grokking"], "Which study models to benchmark.")
_STEPS = flags.DEFINE_list("steps", ["reverse=1000", "sum=100", "grokking=10"],
                           "Timed optimizer steps per study (study=steps).")
_SEED_COUNTS = flags.DEFINE_list("seed_counts", ["1", "8", "32"], "Numbers of vmapped seeds for train_many.")
_SEED_STEPS = flags.DEFINE_list("seed_steps", ["reverse=100", "sum=20", "grokking=1"],
                                "Optimizer steps per seed-count measurement (study=steps).")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "torch intra-op threads (JAX uses every core).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time TransformerLens/PyTorch when installed.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the square float32 matmul timed for peak GFLOP/s.")
_OUT = flags.DEFINE_string("out", "benchmark_training.json", "Where to write the JSON results.")


@dataclasses.dataclass(frozen=True)
class Study:
    """A study's model, batch and optimizer; targets are `tokens[:, target_slice]`
    predicted by `logits[:, logit_slice]` of the model run on `tokens[:, :n_input]`."""

    cfg: tm.ModelConfig
    batch_size: int | None  # None: full batch of n_examples
    n_examples: int
    n_input: int
    logit_slice: tuple[int, int]
    target_slice: tuple[int, int]
    opt: T.OptimizerConfig


STUDIES = {
    # Reverse-and-increment: AdamW (torch default wd 0.01) lr 6e-3, clip 1, batch 256.
    "reverse": Study(tm.ModelConfig(n_layers=2, d_model=4, n_heads=1, d_head=2, d_mlp=16, d_vocab=5, n_ctx=17,
                                    act_fn="relu", normalization_type="LN"),
                     256, 256 * 20, 16, (8, 16), (9, 17),
                     T.OptimizerConfig(name="adamw", lr=6e-3, weight_decay=0.01, clip_norm=1.0)),
    # Sum of two 4-digit numbers: attention-only, Adam with L2 weight decay 1e-3, batch 512.
    "sum": Study(tm.ModelConfig(n_layers=2, d_model=48, n_heads=3, d_head=24, d_mlp=None, d_vocab=12, n_ctx=14,
                                normalization_type="LN"),
                 512, 512 * 10, 14, (9, 13), (10, 14),
                 T.OptimizerConfig(name="adam", lr=2e-3, weight_decay=1e-3)),
    # Grokking mod 113: full batch of 0.3 * 113^2 pairs, AdamW wd 1, betas (0.9, 0.98), biases frozen.
    "grokking": Study(tm.ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=114,
                                     d_vocab_out=113, n_ctx=3, act_fn="relu", normalization_type=None),
                      None, int(0.3 * 113**2), 3, (2, 3), (3, 4),
                      T.OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1.0, b1=0.9, b2=0.98,
                                        frozen=("b_",))),
}


def synthetic_tokens(study: Study, seed: int = 0) -> np.ndarray:
    """Random tokens [n_examples, n_input + targets] of the study's shapes (a grokking
    example is [a, b, =] followed by its label)."""
    c = study.cfg
    width = max(study.n_input, study.target_slice[1])
    return np.random.default_rng(seed).integers(0, min(c.d_vocab, c.d_vocab_out), (study.n_examples, width),
                                                dtype=np.int32)


def cross_entropy(study: Study, params, batch):
    """Mean cross-entropy of the study's target tokens."""
    tokens = batch["tokens"]
    logits = tm.apply_unchecked(study.cfg, params, tokens[:, : study.n_input])[0]  # [b, p, v]
    logits = logits[:, study.logit_slice[0]: study.logit_slice[1]]  # [b, k, v]
    targets = tokens[:, study.target_slice[0]: study.target_slice[1]]  # [b, k]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1)), {}


def forward_flops(cfg: tm.ModelConfig, batch: int, pos: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over [batch, pos] tokens,
    all positions unembedded (as HookedTransformer does)."""
    he = cfg.n_heads * cfg.d_head
    per_token = (2 * cfg.d_model * 3 * he  # W_Q, W_K, W_V
                 + 2 * 2 * cfg.n_heads * pos * cfg.d_head  # scores and pattern @ v (all key positions)
                 + 2 * he * cfg.d_model  # W_O
                 + (4 * cfg.d_model * cfg.d_mlp if cfg.d_mlp else 0))  # W_in, W_out
    return batch * pos * (cfg.n_layers * per_token + 2 * cfg.d_model * cfg.d_vocab_out)


def matmul_gflops(n: int, repeats: int = 5) -> float:
    """Best-of float32 GFLOP/s of a jitted [n, n] @ [n, n]."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = min(_timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _epochs(study: Study, steps: int) -> tuple[int, int]:
    """(epochs, epochs per compiled chunk) for about `steps` optimizer steps: chunks of
    about a tenth of the run, so that the compiling warm-up call is short."""
    spe = study.n_examples // (study.batch_size or study.n_examples)
    epochs = max(1, steps // spe)
    return epochs, max(d for d in range(1, max(1, epochs // 10) + 1) if epochs % d == 0)


def toymech_steps_per_s(study: Study, steps: int) -> tuple[float, dict]:
    """Steps/s of `train` on the study, timed after a one-chunk call that compiles."""
    data = {"tokens": synthetic_tokens(study)}
    B = study.batch_size or study.n_examples
    spe = study.n_examples // B
    epochs, chunk = _epochs(study, steps)
    loss = functools.partial(cross_entropy, study)
    params = tm.init_params(study.cfg, jax.random.key(0))
    run = lambda n: jax.block_until_ready(T.train(loss, params, data, study.opt, num_epochs=n, chunk_epochs=chunk,
                                                  batch_size=study.batch_size, progress=False).params)
    run(chunk)  # compiles
    seconds = _timed(lambda: run(epochs))
    steps = epochs * spe
    # XLA's own count for one step, as a check on the analytic FLOPs
    tx = T.make_optimizer(study.opt, spe)
    batch = {"tokens": jnp.asarray(data["tokens"][:B])}

    def one_step(p, s):
        g = jax.grad(lambda q: loss(q, batch)[0])(p)
        u, s = tx.update(g, s, p)
        return T.apply_updates(p, u), s

    cost = jax.jit(one_step).lower(params, tx.init(params)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return steps / seconds, {"seconds": seconds, "xla_flops_per_step": float(cost.get("flops", float("nan")))}


def seed_steps_per_s(study: Study, n_seeds: int, steps: int) -> float:
    """Seed-steps/s of `train_many` over `n_seeds` vmapped seeds (timed after compiling)."""
    data = {"tokens": synthetic_tokens(study)}
    spe = study.n_examples // (study.batch_size or study.n_examples)
    epochs, chunk = _epochs(study, steps)
    loss = functools.partial(cross_entropy, study)
    params = tm.init_params(study.cfg, jax.random.key(0))
    run = lambda n: jax.block_until_ready(T.train_many(
        loss, params, data, study.opt, seeds=list(range(n_seeds)), num_epochs=n, chunk_epochs=chunk,
        batch_size=study.batch_size, progress=False).params)
    run(chunk)  # compiles
    return n_seeds * epochs * spe / _timed(lambda: run(epochs))


def torch_steps_per_s(study: Study, steps: int, threads: int) -> float | None:
    """Steps/s of a plain TransformerLens HookedTransformer with a standard torch loop."""
    try:
        import torch
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = study.cfg
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_head=c.d_head, d_mlp=c.d_mlp,
        attn_only=c.attn_only, d_vocab=c.d_vocab, d_vocab_out=c.d_vocab_out, n_ctx=c.n_ctx, act_fn=c.act_fn,
        normalization_type=c.normalization_type, attention_dir=c.attention_dir, device="cpu", seed=0))
    named = dict(model.named_parameters())
    frozen = T.frozen_mask(named, study.opt.frozen) if study.opt.frozen else {}
    for name, p in named.items():
        p.requires_grad_(not frozen.get(name, False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    o = study.opt
    if o.name == "adamw":
        opt = torch.optim.AdamW(trainable, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam(trainable, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    tokens = torch.tensor(synthetic_tokens(study), dtype=torch.long)
    B = study.batch_size or study.n_examples
    (l0, l1), (t0, t1) = study.logit_slice, study.target_slice

    def step(i):
        rows = tokens[(i * B) % len(tokens): (i * B) % len(tokens) + B]
        logits = model(rows[:, : study.n_input])[:, l0:l1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, t0:t1].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, o.clip_norm)
        opt.step()

    for i in range(3):
        step(i)
    return steps / _timed(lambda: [step(i) for i in range(steps)])


def _per_study(values: list[str], name: str) -> dict[str, int]:
    out = {}
    for item in values:
        study, _, n = item.partition("=")
        if study not in STUDIES or not n.isdigit():
            raise app.UsageError(f"--{name}: expected study=int with study in {list(STUDIES)}, got {item!r}")
        out[study] = int(n)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(_STUDIES.value) - set(STUDIES)
    if unknown:
        raise app.UsageError(f"--studies: unknown {sorted(unknown)}; choose from {list(STUDIES)}")
    steps, seed_steps = _per_study(_STEPS.value, "steps"), _per_study(_SEED_STEPS.value, "seed_steps")
    peak = matmul_gflops(_MATMUL_N.value)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
                           "devices": len(jax.devices()), "torch_threads": _THREADS.value},
               "matmul_gflops": peak, "studies": {}}
    print(f"float32 matmul ({_MATMUL_N.value}^3): {peak:.1f} GFLOP/s")
    for name in _STUDIES.value:
        study = STUDIES[name]
        B = study.batch_size or study.n_examples
        flops = 3 * forward_flops(study.cfg, B, study.n_input)
        peak = matmul_gflops(_MATMUL_N.value)  # again, next to the timing: other load on the machine varies
        ours, extra = toymech_steps_per_s(study, steps[name])
        theirs = torch_steps_per_s(study, max(3, steps[name] // 10), _THREADS.value) if _TORCH.value else None
        r = {"batch_size": B, "load_average_1min": os.getloadavg()[0], "matmul_gflops": peak,
             "toymech_steps_per_s": ours, "transformer_lens_steps_per_s": theirs,
             "ratio": None if theirs is None else ours / theirs, "analytic_flops_per_step": flops,
             "toymech_gflops": flops * ours / 1e9, "fraction_of_matmul_peak": flops * ours / 1e9 / peak, **extra,
             "seed_steps_per_s": {}}
        for n in map(int, _SEED_COUNTS.value):
            r["seed_steps_per_s"][n] = seed_steps_per_s(study, n, seed_steps[name])
        results["studies"][name] = r
        tl = "n/a" if theirs is None else f"{theirs:.1f}"
        ratio = "n/a" if theirs is None else f"{ours / theirs:.1f}x"
        print(f"{name:9s} batch {B:5d} (load {r['load_average_1min']:.1f}): toymech {ours:8.1f} steps/s | TransformerLens {tl} steps/s | {ratio} | "
              f"{r['toymech_gflops']:.1f} GFLOP/s = {r['fraction_of_matmul_peak']:.0%} of matmul | seeds "
              + ", ".join(f"{n}: {v:.1f}" for n, v in r["seed_steps_per_s"].items()) + " seed-steps/s")
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

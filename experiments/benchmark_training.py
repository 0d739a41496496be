r"""Training throughput: toymech's engine, a hand-written scan and TransformerLens, side by side.

  python -m experiments.benchmark_training --out=/tmp/benchmark_training.json
  python -m experiments.benchmark_training --studies=grokking --rounds=5 --out=/tmp/b.json

For each study's model (synthetic data of the study's shapes, the study's loss on
the positions it reads and its optimizer), in one process and alternating
(A B C A B C ... for --rounds rounds):

  A  `toymech.train.train` (chunks of compiled epochs, as the studies run it);
  B  a hand-written `jax.lax.scan` of the same model, loss and optimizer (batch
     and frozen parameters passed as arguments, minibatches reshuffled per epoch,
     compiled with the engine's XLA options, `train.compiler_options()`):
     what the engine costs over the bare loop;
  C  TransformerLens: a plain `HookedTransformer` with a standard PyTorch loop
     (logits at every position, as HookedTransformer computes them).

Reported per study: the median steps/s of each, the median of the per-round
ratios A/C and A/B, the steps/s including compilation (the engine's first call
after clearing JAX's caches, compilation + the timed steps), the analytic FLOPs a
step needs (only the positions the loss reads) as a fraction of a float32 matmul's
throughput measured beside it, `train_many` seed-steps/s, and the 1-minute load
average before and after. A load above the core count is reported loudly: the
ratios then say little (PyTorch slows more than JAX on a busy machine). Runs
unchanged on GPU/TPU backends (the PyTorch reference stays on the CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import toymech as tm
from experiments.benchmarking import load_average, machine, matmul_gflops, median_ratio, timed
from toymech import train as T

_STUDIES = flags.DEFINE_list("studies", ["grokking", "sum", "reverse"], "Which study models to benchmark.")
_STEPS = flags.DEFINE_list("steps", ["reverse=400", "sum=100", "grokking=100"],
                           "Timed optimizer steps per round per study (study=steps).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (A B C) per study.")
_SEED_COUNTS = flags.DEFINE_list("seed_counts", ["1", "8"], "Numbers of vmapped seeds for train_many.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "torch intra-op threads (JAX uses every core).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time TransformerLens/PyTorch when installed.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the square float32 matmul timed for peak GFLOP/s.")
_OUT = flags.DEFINE_string("out", "benchmark_training.json", "Where to write the JSON results.")


@dataclasses.dataclass(frozen=True)
class Study:
    """A study's model, batch and optimizer; targets are `tokens[:, target_slice]`
    predicted by the logits at `logit_slice` of the model run on `tokens[:, :n_input]`."""

    cfg: tm.ModelConfig
    batch_size: int | None  # None: full batch of n_examples
    n_examples: int
    n_input: int
    logit_slice: tuple[int, int]
    target_slice: tuple[int, int]
    opt: T.OptimizerConfig

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(range(*self.logit_slice))


STUDIES = {
    # Grokking mod 113: full batch of 0.3 * 113^2 pairs, AdamW wd 1, betas (0.9, 0.98), biases frozen.
    "grokking": Study(tm.ModelConfig(n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=114,
                                     d_vocab_out=113, n_ctx=3, act_fn="relu", normalization_type=None),
                      None, int(0.3 * 113**2), 3, (2, 3), (3, 4),
                      T.OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1.0, b1=0.9, b2=0.98,
                                        frozen=("b_",))),
    # Sum of two 4-digit numbers: attention-only, Adam with L2 weight decay 1e-3, batch 512.
    "sum": Study(tm.ModelConfig(n_layers=2, d_model=48, n_heads=3, d_head=24, d_mlp=None, d_vocab=12, n_ctx=14,
                                normalization_type="LN"),
                 512, 512 * 10, 14, (9, 13), (10, 14),
                 T.OptimizerConfig(name="adam", lr=2e-3, weight_decay=1e-3)),
    # Reverse-and-increment: AdamW (torch default wd 0.01) lr 6e-3, clip 1, batch 256.
    "reverse": Study(tm.ModelConfig(n_layers=2, d_model=4, n_heads=1, d_head=2, d_mlp=16, d_vocab=5, n_ctx=17,
                                    act_fn="relu", normalization_type="LN"),
                     256, 256 * 20, 16, (8, 16), (9, 17),
                     T.OptimizerConfig(name="adamw", lr=6e-3, weight_decay=0.01, clip_norm=1.0)),
}


def synthetic_tokens(study: Study, seed: int = 0) -> np.ndarray:
    """Random tokens [n_examples, n_input + targets] of the study's shapes."""
    c = study.cfg
    width = max(study.n_input, study.target_slice[1])
    return np.random.default_rng(seed).integers(0, min(c.d_vocab, c.d_vocab_out), (study.n_examples, width),
                                                dtype=np.int32)


def cross_entropy(study: Study, params, batch):
    """Mean cross-entropy of the study's targets, from the logits at the positions it reads."""
    tokens = batch["tokens"]
    logits = tm.apply_unchecked(study.cfg, params, tokens[:, : study.n_input],
                                output_positions=study.positions)[0]  # [b, k, v]
    targets = tokens[:, study.target_slice[0]: study.target_slice[1]]  # [b, k]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1)), {}


def step_flops(study: Study) -> float:
    """Matmul FLOPs (2 per multiply-add) of one training step (forward + backward
    = 3 x forward) that the loss needs: the last block after its keys and values,
    and the unembedding, at the read positions only; the first block's Q/K/V on the
    embedding tables' rows when toymech projects those (no LayerNorm)."""
    c, B, p, k = study.cfg, study.batch_size or study.n_examples, study.n_input, len(study.positions)
    he = c.n_heads * c.d_head
    mlp = 4 * c.d_model * c.d_mlp if c.d_mlp else 0
    total = 0.0
    for layer in range(c.n_layers):
        q_rows = B * (k if layer == c.n_layers - 1 else p)
        tables = layer == 0 and c.normalization_type is None
        qkv_rows = (c.d_vocab + p) if tables else B * p
        total += 2 * c.d_model * he * (qkv_rows * 3 if tables else qkv_rows * 2 + q_rows)
        total += q_rows * (2 * 2 * he * p + 2 * he * c.d_model + mlp)  # scores, pattern @ v, W_O, MLP
    total += B * k * 2 * c.d_model * c.d_vocab_out
    return 3 * total


def _plan(study: Study, steps: int) -> tuple[int, int, int]:
    """(steps per epoch, epochs, epochs per compiled chunk) for about `steps` steps."""
    spe = study.n_examples // (study.batch_size or study.n_examples)
    epochs = max(1, steps // spe)
    return spe, epochs, max(d for d in range(1, max(1, epochs // 4) + 1) if epochs % d == 0)


def engine_runner(study: Study, steps: int):
    """`n_epochs -> None` running `train.train` (compiled on first use)."""
    data = {"tokens": synthetic_tokens(study)}
    _, _, chunk = _plan(study, steps)
    loss = functools.partial(cross_entropy, study)
    params = tm.init_params(study.cfg, jax.random.key(0))
    return lambda n: jax.block_until_ready(T.train(loss, params, data, study.opt, num_epochs=n, chunk_epochs=chunk,
                                                   batch_size=study.batch_size, progress=False).params)


def hand_runner(study: Study, steps: int):
    """`n_epochs -> None` running a hand-written scan of the same loss and optimizer."""
    spe, _, chunk = _plan(study, steps)
    B = study.batch_size or study.n_examples
    params = tm.init_params(study.cfg, jax.random.key(0))
    tx = T.make_optimizer(study.opt, spe)
    if study.opt.frozen:
        trainable, frozen = T.partition_frozen(params, T.frozen_mask(params, study.opt.frozen))
    else:
        trainable, frozen = params, None
    merge = T.combine_frozen if study.opt.frozen else (lambda t, f: t)
    loss = functools.partial(cross_entropy, study)

    @functools.partial(jax.jit, compiler_options=T.compiler_options())
    def epochs(trainable, state, frozen, tokens, key):  # `chunk` epochs of `spe` steps
        def epoch(carry, key):
            rows = tokens if spe == 1 else tokens[jax.random.permutation(key, len(tokens))]
            def step(carry, batch):
                trainable, state = carry
                grads = jax.grad(lambda t: loss(merge(t, frozen), {"tokens": batch})[0])(trainable)
                updates, state = tx.update(grads, state, trainable)
                return (optax.apply_updates(trainable, updates), state), None
            return jax.lax.scan(step, carry, rows[: spe * B].reshape(spe, B, -1))[0], None
        return jax.lax.scan(epoch, (trainable, state), jax.random.split(key, chunk))[0]

    tokens, state = jnp.asarray(synthetic_tokens(study)), tx.init(trainable)

    def run(n):
        carry = (trainable, state)
        for i in range(n // chunk):
            carry = epochs(*carry, frozen, tokens, jax.random.key(i))
        jax.block_until_ready(carry)
    return run


def torch_runner(study: Study, threads: int):
    """`n_steps -> None` training a plain TransformerLens HookedTransformer, or None."""
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
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    opt = cls(trainable, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
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
    return lambda n: [step(i) for i in range(n)]


def seed_steps_per_s(study: Study, n_seeds: int, steps: int) -> float:
    """Seed-steps/s of `train_many` over `n_seeds` vmapped seeds (timed after compiling)."""
    data = {"tokens": synthetic_tokens(study)}
    spe, epochs, chunk = _plan(study, steps)
    loss = functools.partial(cross_entropy, study)
    params = tm.init_params(study.cfg, jax.random.key(0))
    run = lambda n: jax.block_until_ready(T.train_many(
        loss, params, data, study.opt, seeds=list(range(n_seeds)), num_epochs=n, chunk_epochs=chunk,
        batch_size=study.batch_size, progress=False).params)
    run(chunk)  # compiles
    return n_seeds * epochs * spe / timed(lambda: run(epochs))


def benchmark(name: str, steps: int, rounds: int) -> dict:
    study = STUDIES[name]
    spe, epochs, chunk = _plan(study, steps)
    n_steps = epochs * spe
    load_before = load_average()
    # With compilation: the engine's first call in a fresh JAX cache, and its chunk program's compile time.
    jax.clear_caches()
    T._compiled_chunk.cache_clear()
    engine = engine_runner(study, steps)
    first = timed(lambda: engine(epochs))
    hand = hand_runner(study, steps)
    hand_first = timed(lambda: hand(epochs))
    torch_run = torch_runner(study, _THREADS.value) if _TORCH.value else None
    times = {"toymech": [], "hand_scan": [], "transformer_lens": []}
    for _ in range(rounds):  # A B C, A B C, ...
        times["toymech"].append(timed(lambda: engine(epochs)))
        times["hand_scan"].append(timed(lambda: hand(epochs)))
        if torch_run is not None:
            times["transformer_lens"].append(timed(lambda: torch_run(n_steps)))
    rate = {k: [n_steps / t for t in v] for k, v in times.items() if v}
    peak = matmul_gflops(_MATMUL_N.value)
    flops = step_flops(study)
    median = lambda v: float(np.median(v))
    r = {"batch_size": study.batch_size or study.n_examples, "steps_per_round": n_steps, "rounds": rounds,
         "load_average_1min_before": load_before, "matmul_gflops": peak, "analytic_flops_per_step": flops,
         "steps_per_s": {k: median(v) for k, v in rate.items()}, "steps_per_s_all_rounds": rate,
         "toymech_steps_per_s_incl_compile": n_steps / first, "hand_scan_steps_per_s_incl_compile": n_steps / hand_first,
         "engine_over_hand_scan": median_ratio(rate["toymech"], rate["hand_scan"])}
    if "transformer_lens" in rate:
        r["ratio_vs_transformer_lens"] = median_ratio(rate["toymech"], rate["transformer_lens"])
        r["ratio_vs_transformer_lens_incl_compile"] = (n_steps / first) / r["steps_per_s"]["transformer_lens"]
    r["fraction_of_matmul_peak"] = flops * r["steps_per_s"]["toymech"] / 1e9 / peak
    r["seed_steps_per_s"] = {n: seed_steps_per_s(study, n, steps) for n in map(int, _SEED_COUNTS.value)}
    r["load_average_1min_after"] = load_average()
    return r


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
    steps = _per_study(_STEPS.value, "steps")
    results = {"machine": machine() | {"torch_threads": _THREADS.value}, "studies": {}}
    print(f"{'study':9s} {'load':>5s} {'toymech':>9s} {'hand scan':>9s} {'TL':>8s} {'vs TL':>6s} {'vs TL+c':>7s} "
          f"{'eng/hand':>8s} {'peak':>5s}  (steps/s; +c: toymech including compilation; peak: needed FLOPs / matmul)")
    for name in _STUDIES.value:
        r = benchmark(name, steps.get(name, 100), _ROUNDS.value)
        results["studies"][name] = r
        s = r["steps_per_s"]
        tl = s.get("transformer_lens")
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
        print(f"{name:9s} {r['load_average_1min_before']:5.2f} {s['toymech']:9.1f} {s['hand_scan']:9.1f} "
              f"{fmt(tl, '8.1f'):>8s} {fmt(r.get('ratio_vs_transformer_lens'), '5.2f'):>5s}x "
              f"{fmt(r.get('ratio_vs_transformer_lens_incl_compile'), '6.2f'):>6s}x {r['engine_over_hand_scan']:8.2f} "
              f"{r['fraction_of_matmul_peak']:5.0%}  seeds "
              + ", ".join(f"{n}: {v:.1f}" for n, v in r["seed_steps_per_s"].items()) + " seed-steps/s", flush=True)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

r"""Benchmark: toymech's batched analyses against the reference loops they replace.

  python -m experiments.benchmark_analysis --out=/tmp/benchmark_analysis.json

Times, side by side in one run on one machine (a few minutes on a 2-core CPU):

1. head x position mean-ablation sweep on the study-4 sum model
   (models/arena/sum_model.pt, the 1,000 sequences of
   fixtures/arena_sum_eval_1000.txt, loss on the four sum digits):
   `sweeps.ablation_sweep` vs TransformerLens `run_with_hooks` in a loop over
   (layer, head, position);
2. degree-2 polynomial fits of all 512 MLP neurons' pre-activations on
   (PC1, PC2)(a, b) over the study-3a grid (p = 10): `probes.polynomial_fit`
   vs the notebook's scikit-learn loop (`LinearRegression` per neuron);
3. ridge probes at every (layer, position) of a study-1 encoder (2,000
   problems, 75/25 split): `probes.probe` vs a scikit-learn `Ridge` loop;
4. restricted and excluded loss (Nanda et al.) of 250 grokking checkpoints
   (p = 113): `tasks.grokking.grokking_progress` (which computes every progress
   measure) vs the notebook's loop of `load_state_dict` + `run_with_cache`
   + the restricted/excluded computation (both losses from one forward pass
   per checkpoint);
5. exact patching of every edge of the sum model (`edges.edge_patching`, the
   1,000 sequences of item 1 against partners with digit a3 changed, loss on
   the sum digits), one compiled call, vs a TransformerLens loop of the same
   edge patches (use_split_qkv_input + use_attn_result, one run_with_hooks per
   edge adding the sender's corrupted-minus-clean output at the receiver);
6. EAP over all edges (`discovery.edge_attribution`) against one forward +
   backward pass of the same loss (jax.grad wrt the params) on the same tokens:
   "x steady" is then (forward + backward) / EAP, so 1 / it is EAP's cost in
   forward + backward passes.

Each item is timed by `measure`: toymech's first call (compilation included;
with a warm persistent cache, --compilation_cache_dir, compilation is a cache
read), then --rounds alternating rounds of toymech's steady-state call and the
reference loop (A B A B ...), quoting the median of the per-round ratios. The
references have no compilation; they run at the faster of 1 thread and all
cores for PyTorch / BLAS (on a busy machine, 2 spinning threads made
TransformerLens 7x slower than 1). Reference loops that would take long run on
a prefix of their iterations (--tl_sweep_targets, --tl_checkpoints) and are
scaled linearly to the full count; the JSON says how many ran. Every item also
checks that both sides computed the same numbers, and quotes XLA's FLOP count
of toymech's program as a fraction of a float32 matmul's throughput measured in
the same process ("n/a" where the call does host work between programs). The
1-minute load average is recorded per item, with a warning when it exceeds the
core count. Models 2-4 have random weights: the timings do not depend on them.

For the three compilation figures of an item (a cold process, a second process
with the cache warm, steady state), run twice with the same fresh
--compilation_cache_dir: the first run's "first" column is the cold process, the
second run's is the warm one, and "steady" is the same in both.
Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import toymech as tm
import toymech.interop
from experiments.benchmarking import load_average, machine, matmul_gflops, median_ratio, timed
from toymech.analysis import discovery, edges, linalg, probes, sweeps
from toymech.tasks import grokking, sum_digits, text_sum

_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared")

_OUT = flags.DEFINE_string("out", "/tmp/benchmark_analysis.json", "Where to write the JSON results.")
_SHARED_DIR = flags.DEFINE_string("shared", os.path.normpath(_SHARED), "The shared folder (models, fixtures).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (toymech, reference) per item; medians reported.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the square float32 matmul timed for peak GFLOP/s.")
_TL_SWEEP_TARGETS = flags.DEFINE_integer(
    "tl_sweep_targets", 0, "Reference sweep: run this many (layer, head, pos) targets and scale (0 = all).")
_N_CHECKPOINTS = flags.DEFINE_integer("n_checkpoints", 250, "Grokking checkpoints for restricted/excluded loss.")
_TL_CHECKPOINTS = flags.DEFINE_integer(
    "tl_checkpoints", 25, "Reference progress loop: run this many checkpoints and scale (0 = all).")
_TL_EDGE_TARGETS = flags.DEFINE_integer(
    "tl_edge_targets", 0, "Reference edge-patching loop: run this many edges and scale (0 = all).")
_ITEMS = flags.DEFINE_list("items", ["sweep", "polyfit", "probes", "progress", "edges", "eap"], "Which items to run.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", "", "Enable JAX's persistent compilation cache in this folder (run twice: the first "
    "process fills it, the second's first calls show the warm-cache cost); empty: no persistent cache.")

KEY_FREQS = (14, 35, 41, 42, 52)  # Nanda et al.'s; any frequencies time the same


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _blas_threads(n: int):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n)


def _xla_flops(fn) -> float | None:
    """XLA's FLOP count of `fn` lowered as one program (counted before compilation, so
    nothing is constant-folded), or None where `fn` does host work (checks, numpy)
    that cannot be traced as a whole."""
    try:
        cost = jax.jit(fn).lower().cost_analysis()
    except (jax.errors.JAXTypeError, jax.errors.ConcretizationTypeError, TypeError):
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


@dataclasses.dataclass(frozen=True)
class Item:
    """One benchmark item: toymech's call and the reference loop it replaces.

    `ours()` runs toymech's analysis; `reference()` the reference loop over
    `ran` of its `total` iterations (scaled linearly to `total`); `reference_one()`
    one iteration, used to pick the reference's faster thread count; `threads(n)`
    a context manager limiting the reference to n threads; `check(ours_out,
    reference_out)` the largest difference between the two sides' numbers."""
    name: str
    what: str
    ours: Callable[[], object]
    reference_name: str
    reference: Callable[[], object]
    reference_one: Callable[[], object]
    threads: Callable
    check: Callable[[object, object], dict]
    ran: int = 1
    total: int = 1


def measure(item: Item, rounds: int, peak_gflops: float) -> dict:
    """Times `item`: toymech's first call (compilation included; with a warm persistent
    cache, compilation is a cache read), then `rounds` alternating rounds of toymech's
    steady-state call and the reference loop (A B A B ...), the reference at the faster
    of 1 thread and all cores (timed on one warmed-up iteration of each). Quotes the
    median of the per-round ratios, the ratio counting toymech's first call, and
    toymech's FLOP rate as a fraction of the machine's matmul throughput."""
    load_before = load_average()
    start = time.perf_counter()
    ours = jax.block_until_ready(item.ours())
    first = time.perf_counter() - start
    trial = {}
    for n in sorted({1, os.cpu_count() or 1}):
        with item.threads(n):
            item.reference_one()
            trial[n] = timed(item.reference_one)
    threads = min(trial, key=trial.get)
    steady, reference, theirs = [], [], None
    with item.threads(threads):
        for _ in range(rounds):
            steady.append(timed(item.ours))
            start = time.perf_counter()
            theirs = item.reference()
            reference.append((time.perf_counter() - start) * item.total / item.ran)
    flops = _xla_flops(item.ours)
    tm_steady, ref_s = float(np.median(steady)), float(np.median(reference))
    return dict(item=item.name, what=item.what, rounds=rounds, toymech_first_s=first, toymech_steady_s=tm_steady,
                toymech_steady_all_s=steady, reference=item.reference_name, reference_threads=threads,
                reference_s=ref_s, reference_all_s=reference, reference_iterations_run=item.ran,
                reference_iterations_total=item.total, speedup_steady=median_ratio(reference, steady),
                speedup_incl_compile=ref_s / first, xla_flops=flops, matmul_gflops=peak_gflops,
                fraction_of_matmul_peak=None if flops is None else flops / tm_steady / 1e9 / peak_gflops,
                load_average_1min_before=load_before, load_average_1min_after=load_average(),
                check=item.check(ours, theirs))


def _tl_model(cfg, state_dict, **flags):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    model = HookedTransformer(HookedTransformerConfig(**tm.interop.transformer_lens_config(cfg), device="cpu", **flags))
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=False)
    return model.eval()


def _sum_model(shared: str):
    """The study-4 sum model (path, cfg, params), its 1,000 evaluation sequences [1000, 14], and
    the positions whose logits predict the four sum digits."""
    path = os.path.join(shared, "models", "arena", "sum_model.pt")
    cfg, params = tm.interop.load_transformer_lens(path)
    tokens = np.loadtxt(os.path.join(shared, "fixtures", "arena_sum_eval_1000.txt"), dtype=np.int32)
    return path, cfg, params, tokens, sum_digits.OUTPUT_POSITIONS


def _tl_loss(logits, labels, pos) -> float:
    """Mean cross-entropy of labels [b, n_pos] at positions pos, from TransformerLens logits."""
    return -logits[:, pos].log_softmax(-1).gather(-1, labels[..., None]).mean().item()


# --- 1. head x position mean-ablation sweep ----------------------------------


def bench_sweep(shared: str, tl_targets: int) -> Item:
    import torch
    path, cfg, params, tokens, pos = _sum_model(shared)
    metric = sweeps.loss_metric(tokens[:, pos + 1], pos)
    run = lambda: sweeps.ablation_sweep(cfg, params, tokens, metric, site="z", kind="mean", by_pos=True).values

    model = _tl_model(cfg, torch.load(path, map_location="cpu"))
    toks, labels = torch.tensor(tokens, dtype=torch.long), torch.tensor(tokens[:, pos + 1], dtype=torch.long)
    targets = list(np.ndindex(cfg.n_layers, cfg.n_heads, tokens.shape[1]))
    ran = targets[:tl_targets] if tl_targets else targets

    def tl_target(layer, head, p):
        def mean_ablate(z, hook):
            z[:, p, head] = z[:, p, head].mean(0, keepdim=True)
            return z
        with torch.inference_mode():
            logits = model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", mean_ablate)])
        return _tl_loss(logits, labels, pos)

    check = lambda ours, theirs: {"max_abs_diff_loss": float(np.max(np.abs(
        np.asarray(ours).reshape(-1)[:len(ran)] - np.asarray(theirs))))}
    return Item("sweep", f"mean-ablate hook_z at every (layer, head, pos): {len(targets)} runs x {tokens.shape}",
                run, "TransformerLens run_with_hooks loop", lambda: [tl_target(*t) for t in ran],
                lambda: tl_target(*ran[0]), _torch_threads, check, len(ran), len(targets))


# --- 2. polynomial fits of 512 neurons -----------------------------------------


def bench_polyfit() -> Item:
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import PolynomialFeatures
    task = grokking.AdditionTask(p=10, modular=False)
    cfg = grokking.model_config(task)
    params = tm.init_params(cfg, jax.random.key(999))
    pre_site = tm.get_act_name("pre", 0)
    _, acts = tm.apply(cfg, params, grokking.all_inputs(task), capture=(pre_site,))
    pre = acts[pre_site][:, -1]  # [100, 512]
    scores = linalg.pca(params["embed"]["W_E"][:task.p], 2).scores  # [p, 2]: PC1, PC2 of each number token
    a, b = np.divmod(np.arange(task.n_examples), task.p)
    x = jnp.stack([scores[a, 0], scores[b, 0], scores[a, 1], scores[b, 1]], axis=-1)  # [100, 4]
    fit = jax.jit(functools.partial(probes.polynomial_fit, degree=2))

    x_np, y_np = np.asarray(x, np.float64), np.asarray(pre, np.float64)

    def sklearn_loop():
        feats = PolynomialFeatures(degree=2, include_bias=True).fit_transform(x_np)
        out = np.zeros(y_np.shape[1])
        for i in range(y_np.shape[1]):
            out[i] = LinearRegression(fit_intercept=False).fit(feats, y_np[:, i]).score(feats, y_np[:, i])
        return out

    check = lambda ours, theirs: {"max_abs_diff_r2": float(np.max(np.abs(np.asarray(ours[1]) - theirs)))}
    return Item("polyfit", f"degree-2 fits of {y_np.shape[1]} neurons on 4 features, {len(x_np)} inputs",
                lambda: fit(x, pre), "scikit-learn LinearRegression loop", sklearn_loop, sklearn_loop,
                _blas_threads, check)


# --- 3. probes at every (layer, position) ------------------------------------


def bench_probes() -> Item:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    (x, y), _ = text_sum.generate_split(2000, 10, 999, seed=0)
    data = text_sum.make_dataset(x, y, x + y)
    cfg = text_sum.model_config()
    params = tm.init_params(cfg, jax.random.key(0))
    sites = ("blocks.0.hook_resid_pre",) + tuple(f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layers))
    _, acts = tm.apply(cfg, params, data.tokens, capture=sites, key_padding_mask=data.mask)
    stacked = jnp.stack([acts[s] for s in sites])  # [layer, n, pos, d]
    target = jnp.asarray(data.z / text_sum.SCALE, jnp.float32)
    key = jax.random.key(1)
    run = jax.jit(lambda a, t: probes.probe(a, t, sample_axis=1, alpha=1.0, key=key).r2)

    train, test = (np.asarray(i) for i in probes.train_test_split(key, len(target)))
    acts_np, y_np = np.asarray(stacked, np.float64), np.asarray(target, np.float64)

    def sklearn_loop():
        out = np.zeros(acts_np.shape[0:1] + acts_np.shape[2:3])
        for layer in range(acts_np.shape[0]):
            for p in range(acts_np.shape[2]):
                xs = acts_np[layer, :, p]
                model = Ridge(alpha=1.0).fit(xs[train], y_np[train])
                out[layer, p] = r2_score(y_np[test], model.predict(xs[test]))
        return out

    check = lambda ours, theirs: {"max_abs_diff_r2": float(np.max(np.abs(np.asarray(ours) - theirs)))}
    n_sites = acts_np.shape[0] * acts_np.shape[2]
    return Item("probes", f"ridge probes at {acts_np.shape[0]} layers x {acts_np.shape[2]} positions "
                f"({n_sites} sites), {len(y_np)} samples x d_model {acts_np.shape[-1]}",
                lambda: run(stacked, target), "scikit-learn Ridge loop", sklearn_loop, sklearn_loop, _blas_threads,
                check)


# --- 4. restricted / excluded loss over checkpoints --------------------------


def _tl_restricted_excluded(model, tokens, labels, train, test, p):
    """The grokking notebook's get_restricted_loss and get_excluded_loss, on
    one forward pass."""
    import torch

    def loss_fn(logits, y):
        logp = logits.to(torch.float64).log_softmax(-1)
        return -logp.gather(-1, y[:, None])[:, 0].mean()

    logits, cache = model.run_with_cache(tokens)
    logits = logits[:, -1]
    acts = cache["post", 0, "mlp"][:, -1]
    approx = torch.zeros_like(acts)
    a, b = torch.arange(p)[:, None], torch.arange(p)[None, :]
    for freq in KEY_FREQS:
        for fn in (torch.cos, torch.sin):
            vec = fn(freq * 2 * torch.pi / p * (a + b))
            vec = (vec / vec.norm()).reshape(p * p, 1)
            approx += (acts * vec).sum(0) * vec
    W_logit = model.blocks[0].mlp.W_out @ model.unembed.W_U
    restricted = (approx + acts.mean(0)) @ W_logit
    restricted += logits.mean(0, keepdim=True) - restricted.mean(0, keepdim=True)
    excluded = ((acts - approx) @ model.blocks[0].mlp.W_out + model.blocks[0].mlp.b_out
                + cache["resid_mid", 0][:, -1]) @ model.unembed.W_U + model.unembed.b_U
    return loss_fn(restricted[test], labels[test]).item(), loss_fn(excluded[train], labels[train]).item()


def bench_progress(n_checkpoints: int, tl_checkpoints: int) -> Item:
    import torch
    task = grokking.AdditionTask(p=113)
    cfg = grokking.model_config(task)
    dataset = grokking.make_dataset(task, 0.3, seed=598)
    keys = jax.random.split(jax.random.key(999), n_checkpoints)
    stacked = jax.vmap(lambda k: tm.init_params(cfg, k))(keys)  # [n_ckpt, ...] every leaf
    run = lambda: grokking.grokking_progress(cfg, stacked, dataset, KEY_FREQS)

    n_ran = tl_checkpoints or n_checkpoints
    state_dicts = [tm.interop.to_transformer_lens(cfg, jax.tree.map(lambda x: x[i], stacked)) for i in range(n_ran)]
    state_dicts = [{k: torch.as_tensor(v) for k, v in sd.items()} for sd in state_dicts]
    model = _tl_model(cfg, state_dicts[0])
    tokens, labels = torch.tensor(dataset.tokens, dtype=torch.long), torch.tensor(dataset.labels, dtype=torch.long)
    train, test = torch.tensor(dataset.train, dtype=torch.long), torch.tensor(dataset.test, dtype=torch.long)

    def tl_checkpoint(sd):
        with torch.inference_mode():
            model.load_state_dict(sd)
            return _tl_restricted_excluded(model, tokens, labels, train, test, task.p)

    def check(ours, theirs):  # theirs [n_ran, 2]
        mine = np.stack([np.asarray(ours.restricted_loss[:n_ran]), np.asarray(ours.excluded_loss[:n_ran])], -1)
        return {"max_rel_diff_loss": float(np.max(np.abs(mine - theirs) / np.abs(theirs)))}

    return Item("progress", f"restricted + excluded loss of {n_checkpoints} checkpoints, p={task.p} "
                f"({task.n_examples} inputs each; toymech computes every progress measure)",
                run, "TransformerLens load_state_dict + run_with_cache loop",
                lambda: np.array([tl_checkpoint(sd) for sd in state_dicts]), lambda: tl_checkpoint(state_dicts[0]),
                _torch_threads, check, n_ran, n_checkpoints)


# --- 5. exact patching of every edge; 6. EAP against one forward + backward -------


def _sum_edge_inputs(shared: str):
    """The sum model, its 1,000 evaluation sequences, their corrupted partners (digit a3 changed)
    and the per-example loss on the four sum digits."""
    path, cfg, params, tokens, pos = _sum_model(shared)
    clean, corrupted = sum_digits.corrupt_a_digit(tokens, 2, seed=0)
    return path, cfg, params, clean, corrupted, pos, edges.loss_metric(clean[:, pos + 1], pos)


def bench_edges(shared: str, tl_targets: int) -> Item:
    import torch
    path, cfg, params, clean, corrupted, pos, metric = _sum_edge_inputs(shared)
    run = lambda: edges.edge_patching(cfg, params, clean, corrupted, metric).values

    model = _tl_model(cfg, torch.load(path, map_location="cpu"), use_split_qkv_input=True, use_attn_result=True)
    g = edges.graph(cfg)
    toks, labels = torch.tensor(clean, dtype=torch.long), torch.tensor(clean[:, pos + 1], dtype=torch.long)
    with torch.inference_mode():
        base_logits, clean_cache = model.run_with_cache(toks)
        _, corrupted_cache = model.run_with_cache(torch.tensor(corrupted, dtype=torch.long))
    loss = lambda logits: _tl_loss(logits, labels, pos)
    ran = list(range(tl_targets or g.n_edges))

    def tl_edge(e):  # the receiver's input gets the sender's corrupted - clean output
        sender_site, sender_head, site, head = g.edge_sites(e)
        delta = corrupted_cache[sender_site] - clean_cache[sender_site]
        delta = delta if sender_head is None else delta[:, :, sender_head]
        hook = (lambda x, hook: x + delta) if head is None else (lambda x, hook: x.index_add_(
            2, torch.tensor([head]), delta[:, :, None]))
        with torch.inference_mode():
            return loss(model.run_with_hooks(toks, fwd_hooks=[(site, hook)])) - loss(base_logits)

    check = lambda ours, theirs: {"max_abs_diff_loss": float(np.max(np.abs(
        np.asarray(ours)[:len(ran)] - np.asarray(theirs))))}
    return Item("edges", f"exact patching of all {g.n_edges} edges of the sum model, {clean.shape} tokens", run,
                "TransformerLens split-qkv run_with_hooks loop", lambda: [tl_edge(e) for e in ran],
                lambda: tl_edge(ran[0]), _torch_threads, check, len(ran), g.n_edges)


def bench_eap(shared: str) -> Item:
    _, cfg, params, clean, corrupted, pos, metric = _sum_edge_inputs(shared)
    run = lambda: discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap").values
    labels = clean[:, pos + 1]
    grad = jax.jit(jax.grad(lambda p, t: sweeps.token_losses(tm.apply_unchecked(cfg, p, t)[0], labels, pos).mean()))
    check = lambda ours, theirs: {"eap_finite": float(np.isfinite(np.asarray(ours)).all()),
                                  "grad_finite": float(all(np.isfinite(x).all() for x in jax.tree.leaves(theirs)))}
    forward_backward = lambda: jax.block_until_ready(grad(params, clean))
    return Item("eap", f"EAP over all {edges.graph(cfg).n_edges} edges, {clean.shape} tokens", run,
                "toymech forward + backward (jax.grad of the loss)", forward_backward, forward_backward,
                lambda n: contextlib.nullcontext(), check)


# --- main ----------------------------------------------------------------------


def _table(rows) -> str:
    head = (f"{'item':9} {'load':>5} {'toymech first':>14} {'toymech steady':>15} {'reference':>11} "
            f"{'x steady':>9} {'x w/ compile':>13} {'peak':>5}  check")
    lines = [head, "-" * len(head)]
    for r in rows:
        ran = "" if r["reference_iterations_run"] == r["reference_iterations_total"] else \
            f" ({r['reference_iterations_run']}/{r['reference_iterations_total']} run, scaled)"
        check = ", ".join(f"{k}={v:.2g}" for k, v in r["check"].items()) + f", ref threads {r['reference_threads']}"
        peak = "n/a" if r["fraction_of_matmul_peak"] is None else f"{r['fraction_of_matmul_peak']:.1%}"
        lines.append(f"{r['item']:9} {r['load_average_1min_before']:5.2f} {r['toymech_first_s']:13.3f}s "
                     f"{r['toymech_steady_s']:14.4f}s {r['reference_s']:10.2f}s {r['speedup_steady']:8.1f}x "
                     f"{r['speedup_incl_compile']:12.1f}x {peak:>5}  {check}{ran}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    benches = {
        "sweep": lambda: bench_sweep(_SHARED_DIR.value, _TL_SWEEP_TARGETS.value),
        "polyfit": bench_polyfit,
        "probes": bench_probes,
        "progress": lambda: bench_progress(_N_CHECKPOINTS.value, _TL_CHECKPOINTS.value),
        "edges": lambda: bench_edges(_SHARED_DIR.value, _TL_EDGE_TARGETS.value),
        "eap": lambda: bench_eap(_SHARED_DIR.value),
    }
    unknown = set(_ITEMS.value) - set(benches)
    if unknown:
        raise app.UsageError(f"unknown --items {sorted(unknown)}; choose from {sorted(benches)}")
    warm = None
    if _CACHE_DIR.value:
        cache = tm.compilation_cache.enable(_CACHE_DIR.value)
        warm = any(not f.startswith(".") for f in os.listdir(cache))
        print(f"persistent compilation cache {cache} ({'warm' if warm else 'empty: a cold process'})", flush=True)
    peak = matmul_gflops(_MATMUL_N.value)
    rows = []
    for name in _ITEMS.value:
        print(f"running {name} ...", flush=True)
        rows.append(measure(benches[name](), _ROUNDS.value, peak))
    import torch
    info = machine() | dict(torch=torch.__version__, matmul_gflops=peak, compilation_cache_dir=_CACHE_DIR.value or None,
                            compilation_cache_warm_at_start=warm)
    print(_table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

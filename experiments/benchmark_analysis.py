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
   same 1,000 sequences against their partners with digit a3 changed, loss on
   the sum digits), one compiled call, vs a TransformerLens loop of the same
   edge patches (use_split_qkv_input + use_attn_result, one run_with_hooks per
   edge adding the sender's corrupted-minus-clean output at the receiver);
6. EAP over all edges (`discovery.edge_attribution`) against one forward +
   backward pass of the loss (jax.grad wrt params) on the same tokens: the
   ratio, and EAP's correlation with item 5's exact effects.

The toymech side is timed on its first call (compilation included) and in
steady state (median of --repeats calls); the references have no compilation
and are timed once after a warm-up, with the faster of 1 thread and all
cores for PyTorch / BLAS (on a busy machine, 2 spinning threads made
TransformerLens 7x slower than 1). Reference loops that would
take long run on a prefix of their iterations (--tl_sweep_targets,
--tl_checkpoints) and are scaled linearly to the full count; the JSON says
how many ran. Every item also checks that both sides computed the same
numbers. Models 2-4 have random weights: the timings do not depend on them.
Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import contextlib
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
import toymech.interop
from toymech.analysis import discovery, edges, linalg, probes, sweeps
from toymech.tasks import grokking, sum_digits, text_sum

_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared")

_OUT = flags.DEFINE_string("out", "/tmp/benchmark_analysis.json", "Where to write the JSON results.")
_SHARED_DIR = flags.DEFINE_string("shared", os.path.normpath(_SHARED), "The shared folder (models, fixtures).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Steady-state calls timed per toymech item (median reported).")
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


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def _time_toymech(fn, repeats: int):
    """(output, first call seconds, median steady-state seconds)."""
    out, first = _timed(fn)
    steady = [_timed(fn)[1] for _ in range(repeats)]
    return out, first, float(np.median(steady))


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


def _time_reference(loop, first, threads):
    """Times `loop()` (a reference loop; returns its results) with the faster
    of 1 thread and all cores, chosen by timing `first()` (one iteration,
    after a warm-up call) under each. Returns (results, seconds, threads)."""
    trial = {}
    for n in sorted({1, os.cpu_count() or 1}):
        with threads(n):
            first()
            trial[n] = _timed(first)[1]
    best = min(trial, key=trial.get)
    with threads(best):
        out, seconds = _timed(loop)
    return out, seconds, best


def _row(name, what, tm_first, tm_steady, reference, ref, ref_ran, ref_total, check):
    ref_seconds, ref_threads = ref
    ref_full = ref_seconds * ref_total / ref_ran
    return dict(item=name, what=what, toymech_first_s=tm_first, toymech_steady_s=tm_steady,
                reference=reference, reference_threads=ref_threads, reference_s=ref_full,
                reference_measured_s=ref_seconds, reference_iterations_run=ref_ran,
                reference_iterations_total=ref_total, speedup_steady=ref_full / tm_steady,
                speedup_incl_compile=ref_full / tm_first, check=check)


def _tl_model(cfg, state_dict, **flags):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    model = HookedTransformer(HookedTransformerConfig(**tm.interop.transformer_lens_config(cfg), device="cpu", **flags))
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=False)
    return model.eval()


# --- 1. head x position mean-ablation sweep ----------------------------------


def bench_sweep(shared: str, repeats: int, tl_targets: int) -> dict:
    import torch
    path = os.path.join(shared, "models", "arena", "sum_model.pt")
    cfg, params = tm.interop.load_transformer_lens(path)
    tokens = np.loadtxt(os.path.join(shared, "fixtures", "arena_sum_eval_1000.txt"), dtype=np.int32)
    pos = np.arange(9, 13)  # the '=' and first three answer digits predict the four answer digits
    metric = sweeps.loss_metric(tokens[:, pos + 1], pos)
    run = lambda: sweeps.ablation_sweep(cfg, params, tokens, metric, site="z", kind="mean", by_pos=True).values
    ours, first, steady = _time_toymech(run, repeats)

    model = _tl_model(cfg, torch.load(path, map_location="cpu"))
    toks, labels = torch.tensor(tokens, dtype=torch.long), torch.tensor(tokens[:, pos + 1], dtype=torch.long)
    targets = list(np.ndindex(cfg.n_layers, cfg.n_heads, tokens.shape[1]))
    ran = targets[:tl_targets] if tl_targets else targets

    def tl_target(layer, head, p):
        def mean_ablate(z, hook):
            z[:, p, head] = z[:, p, head].mean(0, keepdim=True)
            return z
        logits = model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", mean_ablate)])
        logp = logits[:, pos].log_softmax(-1)
        return -logp.gather(-1, labels[..., None]).mean().item()

    with torch.no_grad():
        theirs, seconds, threads = _time_reference(lambda: [tl_target(*t) for t in ran],
                                                   lambda: tl_target(*ran[0]), _torch_threads)
    diff = float(np.max(np.abs(np.asarray(ours).reshape(-1)[:len(ran)] - np.asarray(theirs))))
    return _row("sweep", f"mean-ablate hook_z at every (layer, head, pos): {len(targets)} runs x {tokens.shape}",
                first, steady, "TransformerLens run_with_hooks loop", (seconds, threads), len(ran), len(targets),
                {"max_abs_diff_loss": diff})


# --- 2. polynomial fits of 512 neurons -----------------------------------------


def bench_polyfit(repeats: int) -> dict:
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
    (_, r2), first, steady = _time_toymech(lambda: fit(x, pre), repeats)

    x_np, y_np = np.asarray(x, np.float64), np.asarray(pre, np.float64)

    def sklearn_loop():
        feats = PolynomialFeatures(degree=2, include_bias=True).fit_transform(x_np)
        out = np.zeros(y_np.shape[1])
        for i in range(y_np.shape[1]):
            out[i] = LinearRegression(fit_intercept=False).fit(feats, y_np[:, i]).score(feats, y_np[:, i])
        return out

    theirs, seconds, threads = _time_reference(sklearn_loop, sklearn_loop, _blas_threads)
    diff = float(np.max(np.abs(np.asarray(r2) - theirs)))
    return _row("polyfit", f"degree-2 fits of {y_np.shape[1]} neurons on 4 features, {len(x_np)} inputs",
                first, steady, "scikit-learn LinearRegression loop", (seconds, threads), 1, 1,
                {"max_abs_diff_r2": diff})


# --- 3. probes at every (layer, position) ------------------------------------


def bench_probes(repeats: int) -> dict:
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
    r2, first, steady = _time_toymech(lambda: run(stacked, target), repeats)

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

    theirs, seconds, threads = _time_reference(sklearn_loop, sklearn_loop, _blas_threads)
    diff = float(np.max(np.abs(np.asarray(r2) - theirs)))
    n_sites = acts_np.shape[0] * acts_np.shape[2]
    return _row("probes", f"ridge probes at {acts_np.shape[0]} layers x {acts_np.shape[2]} positions "
                f"({n_sites} sites), {len(y_np)} samples x d_model {acts_np.shape[-1]}",
                first, steady, "scikit-learn Ridge loop", (seconds, threads), 1, 1, {"max_abs_diff_r2": diff})


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


def bench_progress(repeats: int, n_checkpoints: int, tl_checkpoints: int) -> dict:
    import torch
    task = grokking.AdditionTask(p=113)
    cfg = grokking.model_config(task)
    dataset = grokking.make_dataset(task, 0.3, seed=598)
    keys = jax.random.split(jax.random.key(999), n_checkpoints)
    stacked = jax.vmap(lambda k: tm.init_params(cfg, k))(keys)  # [n_ckpt, ...] every leaf
    run = lambda: grokking.grokking_progress(cfg, stacked, dataset, KEY_FREQS)
    ours, first, steady = _time_toymech(run, repeats)

    n_ran = tl_checkpoints or n_checkpoints
    state_dicts = [tm.interop.to_transformer_lens(cfg, jax.tree.map(lambda x: x[i], stacked)) for i in range(n_ran)]
    state_dicts = [{k: torch.as_tensor(v) for k, v in sd.items()} for sd in state_dicts]
    model = _tl_model(cfg, state_dicts[0])
    tokens, labels = torch.tensor(dataset.tokens, dtype=torch.long), torch.tensor(dataset.labels, dtype=torch.long)
    train, test = torch.tensor(dataset.train, dtype=torch.long), torch.tensor(dataset.test, dtype=torch.long)

    def tl_checkpoint(sd):
        model.load_state_dict(sd)
        return _tl_restricted_excluded(model, tokens, labels, train, test, task.p)

    with torch.no_grad():
        theirs, seconds, threads = _time_reference(lambda: np.array([tl_checkpoint(sd) for sd in state_dicts]),
                                                   lambda: tl_checkpoint(state_dicts[0]), _torch_threads)
    mine = np.stack([np.asarray(ours.restricted_loss[:n_ran]), np.asarray(ours.excluded_loss[:n_ran])], -1)
    diff = float(np.max(np.abs(mine - theirs) / np.abs(theirs)))  # theirs [n_ran, 2]
    return _row("progress", f"restricted + excluded loss of {n_checkpoints} checkpoints, p={task.p} "
                f"({task.n_examples} inputs each; toymech computes every progress measure)",
                first, steady, "TransformerLens load_state_dict + run_with_cache loop", (seconds, threads), n_ran,
                n_checkpoints, {"max_rel_diff_loss": diff})


# --- 5. exact patching of every edge; 6. EAP against one forward + backward -------


def _sum_edge_inputs(shared: str):
    """The sum model, its 1,000 evaluation sequences, their corrupted partners (digit a3 changed)
    and the loss metric on the four sum digits (per example)."""
    path = os.path.join(shared, "models", "arena", "sum_model.pt")
    cfg, params = tm.interop.load_transformer_lens(path)
    tokens = np.loadtxt(os.path.join(shared, "fixtures", "arena_sum_eval_1000.txt"), dtype=np.int32)
    clean, corrupted = sum_digits.corrupt_a_digit(tokens, 2, seed=0)
    pos = sum_digits.OUTPUT_POSITIONS
    return path, cfg, params, clean, corrupted, pos, edges.loss_metric(clean[:, pos + 1], pos)


def bench_edges(shared: str, repeats: int, tl_targets: int) -> dict:
    import torch
    path, cfg, params, clean, corrupted, pos, metric = _sum_edge_inputs(shared)
    run = lambda: edges.edge_patching(cfg, params, clean, corrupted, metric).values
    ours, first, steady = _time_toymech(run, repeats)

    model = _tl_model(cfg, torch.load(path, map_location="cpu"), use_split_qkv_input=True, use_attn_result=True)
    g = edges.graph(cfg)
    toks, labels = torch.tensor(clean, dtype=torch.long), torch.tensor(clean[:, pos + 1], dtype=torch.long)
    with torch.no_grad():
        base_logits, clean_cache = model.run_with_cache(toks)
        _, corrupted_cache = model.run_with_cache(torch.tensor(corrupted, dtype=torch.long))
    loss = lambda logits: -logits[:, pos].log_softmax(-1).gather(-1, labels[..., None]).mean().item()
    ran = range(tl_targets or g.n_edges)

    def tl_edge(e):  # the receiver's input gets the sender's corrupted - clean output
        sender_site, sender_head, site, head = g.edge_sites(e)
        delta = corrupted_cache[sender_site] - clean_cache[sender_site]
        delta = delta if sender_head is None else delta[:, :, sender_head]
        hook = (lambda x, hook: x + delta) if head is None else (lambda x, hook: x.index_add_(
            2, torch.tensor([head]), delta[:, :, None]))
        return loss(model.run_with_hooks(toks, fwd_hooks=[(site, hook)])) - loss(base_logits)

    with torch.no_grad():
        theirs, seconds, threads = _time_reference(lambda: [tl_edge(e) for e in ran], lambda: tl_edge(0),
                                                   _torch_threads)
    diff = float(np.max(np.abs(np.asarray(ours)[:len(ran)] - np.asarray(theirs))))
    return _row("edges", f"exact patching of all {g.n_edges} edges of the sum model, {clean.shape} tokens",
                first, steady, "TransformerLens split-qkv run_with_hooks loop", (seconds, threads), len(ran),
                g.n_edges, {"max_abs_diff_loss": diff})


def bench_eap(shared: str, repeats: int) -> dict:
    _, cfg, params, clean, corrupted, pos, metric = _sum_edge_inputs(shared)
    run = lambda: discovery.edge_attribution(cfg, params, clean, corrupted, metric, method="eap").values
    ours, first, steady = _time_toymech(run, repeats)
    labels = clean[:, pos + 1]
    grad = jax.jit(jax.grad(lambda p, t: sweeps.token_losses(tm.apply_unchecked(cfg, p, t)[0], labels, pos).mean()))
    _, ref_first, ref_steady = _time_toymech(lambda: grad(params, clean), repeats)
    exact = edges.edge_patching(cfg, params, clean, corrupted, metric).values
    corr = float(np.corrcoef(np.asarray(ours), np.asarray(exact))[0, 1])
    row = _row("eap", f"EAP over all {edges.graph(cfg).n_edges} edges, {clean.shape} tokens (the reference: one "
               "forward + backward of the loss wrt params, steady)", first, steady,
               "toymech forward + backward", (ref_steady, 1), 1, 1,
               {"eap_over_fwd_bwd": steady / ref_steady, "fwd_bwd_first_s": ref_first, "corr_with_exact": corr})
    return row


# --- main ----------------------------------------------------------------------


def _table(rows) -> str:
    head = (f"{'item':9} {'toymech first':>14} {'toymech steady':>15} {'reference':>11} "
            f"{'x steady':>9} {'x w/ compile':>13}  check")
    lines = [head, "-" * len(head)]
    for r in rows:
        ran = "" if r["reference_iterations_run"] == r["reference_iterations_total"] else \
            f" ({r['reference_iterations_run']}/{r['reference_iterations_total']} run, scaled)"
        check = ", ".join(f"{k}={v:.2g}" for k, v in r["check"].items()) + f", ref threads {r['reference_threads']}"
        lines.append(f"{r['item']:9} {r['toymech_first_s']:13.3f}s {r['toymech_steady_s']:14.4f}s "
                     f"{r['reference_s']:10.2f}s {r['speedup_steady']:8.1f}x {r['speedup_incl_compile']:12.1f}x  "
                     f"{check}{ran}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import torch
    benches = {
        "sweep": lambda: bench_sweep(_SHARED_DIR.value, _REPEATS.value, _TL_SWEEP_TARGETS.value),
        "polyfit": lambda: bench_polyfit(_REPEATS.value),
        "probes": lambda: bench_probes(_REPEATS.value),
        "progress": lambda: bench_progress(_REPEATS.value, _N_CHECKPOINTS.value, _TL_CHECKPOINTS.value),
        "edges": lambda: bench_edges(_SHARED_DIR.value, _REPEATS.value, _TL_EDGE_TARGETS.value),
        "eap": lambda: bench_eap(_SHARED_DIR.value, _REPEATS.value),
    }
    unknown = set(_ITEMS.value) - set(benches)
    if unknown:
        raise app.UsageError(f"unknown --items {sorted(unknown)}; choose from {sorted(benches)}")
    if _CACHE_DIR.value:
        cache = tm.compilation_cache.enable(_CACHE_DIR.value)
        warm = any(not f.startswith(".") for f in os.listdir(cache))
        print(f"persistent compilation cache {cache} ({'warm' if warm else 'empty: a cold process'})", flush=True)
    load_at_start = os.getloadavg()
    if load_at_start[0] > (os.cpu_count() or 1):
        print(f"WARNING: load average {load_at_start[0]:.1f} exceeds the {os.cpu_count()} cores: these ratios do "
              "not describe an idle machine", flush=True)
    rows = []
    for name in _ITEMS.value:
        print(f"running {name} ...", flush=True)
        rows.append(benches[name]())
    machine = dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                   jax=jax.__version__, jax_backend=jax.default_backend(), torch=torch.__version__,
                   load_average_1_5_15min_at_start=load_at_start, load_average_1_5_15min_at_end=os.getloadavg(),
                   compilation_cache_dir=_CACHE_DIR.value or None)
    print(_table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump({"machine": machine, "results": rows}, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

"""Ablation and activation-patching sweeps, each one compiled program.

A sweep runs the model once per target -- every (layer, head), every
(layer, head, position), every (layer, position), per Q/K/V site -- with
that target ablated or patched, and reduces each run's logits to a metric.
Instead of a Python loop over runs, the targets are data: bool masks over
heads and positions, one row per run, all-False for the sites of its layer
that a run does not edit (an all-False mask leaves a site as it was). One
jitted function maps over the masks, builds each run's `Intervention`,
runs the model (`tm.apply_unchecked`) and applies the metric, so only the
metric values leave the program. Two things keep it cheap:

* runs are grouped by layer, and a run of layer l starts from the clean
  run's residual stream entering layer l (a full patch of hook_resid_pre,
  so the layers before it are dead code); a run that edits head outputs
  (hook_z, hook_result) starts after layer l's attention, from its clean
  hook_attn_out plus the edit's change, and
* under vmap, whatever an edit does not reach (e.g. layer l up to the
  ablated site) is computed once per chunk, not once per run.

Replacement values (a source run's activations) are shared by all runs,
not copied per run. Runs go in chunks of `chunk_size` (`jax.lax.map` with a
batch size: vmapped within a chunk, scanned over chunks, still one program)
to bound memory (default: about `CHUNK_TOKENS` token positions per chunk;
on an accelerator larger chunks may pay). The clean run, computed anyway,
gives the baseline metric.

* `ablation_sweep`: zero, mean (this batch's mean at each position, as
  TransformerLens's usual mean-ablation hook) or resample ablation
  (activations of the same batch in a permuted order,
  `jax.random.permutation(key, batch)`) of each head / position / layer.
  `site=("q", "k", "v")` sweeps the three in one call (study 4's Q/K/V
  ablations per head).
* `patching_sweep`: activation patching, as TransformerLens's `patching`
  module: run `tokens` (the corrupted input) and patch in the activation of
  `source_tokens` (the clean input) at each target; swap the two for
  denoising / noising.
* `intervention_sweep`: the same machinery for any stacked intervention
  (`toymech.interventions.stack`).

Sites are short names expanded per layer with `tm.get_act_name` ("z",
"result", "q", "k", "v", "pattern", "attn_scores" have a head axis;
"resid_pre", "attn_out", "mlp_out", "resid_mid", "resid_post", "pre",
"post", ... are swept per layer and position).

Metrics are functions `metric(logits [batch, pos, d_vocab_out]) -> array`
(a scalar, or e.g. one value per position); the sweep's values have shape
[*target axes, *metric shape]. `loss_metric`, `accuracy_metric` and
`logit_diff_metric` build `Metric`s whose arrays (labels, positions) are
arguments of the compiled sweep, so new labels do not recompile. A plain
function works too; it is compiled once per function object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from toymech import interventions as iv
from toymech.analysis.attribution import logit_diff
from toymech.config import ModelConfig
from toymech.model import check_inputs, apply, apply_unchecked
from toymech.sites import AXES, check_sites, get_act_name, site_layout

Array = jax.Array

ABLATIONS = ("zero", "mean", "resample")
# Default chunk: about this many token positions (runs x batch x pos) per
# vmapped chunk. Bounds memory, and leaves tiny sweeps a single vmap; on a
# 2-core CPU, runs of the sum model (1000 x 14 tokens) went fastest one at a
# time (chunks of 1, 2, 4, 8 runs: 2.9, 3.2, 3.7, 4.0 s for 42 runs).
CHUNK_TOKENS = 1 << 14


# --- metrics -----------------------------------------------------------------


@struct.dataclass
class Metric:
    """metric(logits) = fn(logits, *args): `fn` is static (part of the
    compiled program), `args` (arrays) are traced inputs."""

    fn: Callable = struct.field(pytree_node=False)
    args: tuple = ()

    def __call__(self, logits: Array) -> Array:
        return self.fn(logits, *self.args)


def positions_and_labels(pos, labels, what: str) -> tuple[Array, Array]:
    """Checked positions [n_pos] and int labels [batch, n_pos] ([batch] for one position) of a metric."""
    pos = np.atleast_1d(np.asarray(pos))
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"{what}: pos must be an int position or 1-D int array of positions, got {pos!r}")
    labels = np.asarray(labels)
    if labels.ndim == 1 and len(pos) == 1:  # [batch] for a single position
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[1] != len(pos) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be int [batch, {len(pos)}] (one per position in pos), "
                         f"got {labels.dtype} {labels.shape}")
    if (labels < 0).any():
        raise ValueError(f"{what}: labels must be token ids >= 0, got {labels.min()}")
    return jnp.asarray(pos), jnp.asarray(labels)


def _pick(logits, ids):
    """logits[..., ids] along the last axis; NaN for ids past the vocabulary
    (never a silently clamped index)."""
    return jnp.take_along_axis(logits, ids[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]


def token_losses(logits, labels, pos):  # -> [b, n_pos]
    """Cross-entropy of `labels` [b, n_pos] at positions `pos` [n_pos]."""
    return -_pick(jax.nn.log_softmax(logits[:, pos].astype(jnp.float32), axis=-1), labels)


def _mean_loss(logits, labels, pos):
    return token_losses(logits, labels, pos).mean()


def _loss_per_position(logits, labels, pos):
    return token_losses(logits, labels, pos).mean(0)


def _hits(logits, labels, pos):  # -> [b, n_pos]
    return (logits[:, pos].argmax(-1) == labels).astype(jnp.float32)


def _mean_accuracy(logits, labels, pos):
    return _hits(logits, labels, pos).mean()


def _accuracy_per_position(logits, labels, pos):
    return _hits(logits, labels, pos).mean(0)


def _mean_logit_diff(logits, correct, incorrect, pos):
    return logit_diff(logits[:, pos], correct, incorrect).mean()


def loss_metric(labels, pos, *, per_position: bool = False) -> Metric:
    """Mean cross-entropy of `labels` [batch, n_pos] at positions `pos`
    [n_pos] (e.g. pos = 8..12, labels = tokens[:, 9:13] for next-token loss):
    a scalar, or [n_pos] with per_position."""
    pos, labels = positions_and_labels(pos, labels, "loss_metric")
    return Metric(_loss_per_position if per_position else _mean_loss, (labels, pos))


def accuracy_metric(labels, pos, *, per_position: bool = False) -> Metric:
    """Fraction of argmax predictions at `pos` [n_pos] equal to `labels`
    [batch, n_pos]: a scalar, or [n_pos] with per_position."""
    pos, labels = positions_and_labels(pos, labels, "accuracy_metric")
    return Metric(_accuracy_per_position if per_position else _mean_accuracy, (labels, pos))


def logit_diff_metric(correct, incorrect, pos) -> Metric:
    """Mean of logit[correct] - logit[incorrect] at positions `pos` [n_pos];
    correct / incorrect int [batch, n_pos] ([batch] for a single position)."""
    _, correct = positions_and_labels(pos, correct, "logit_diff_metric (correct)")
    pos, incorrect = positions_and_labels(pos, incorrect, "logit_diff_metric (incorrect)")
    return Metric(_mean_logit_diff, (correct, incorrect, pos))


def as_metric(metric) -> Metric:
    """`metric` as a `Metric` (a plain function becomes one with no array arguments)."""
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise TypeError(f"metric must be a callable logits -> array, got {type(metric).__name__}")
    return Metric(metric)


# --- the compiled sweeps ----------------------------------------------------


def _map_runs(cfg, params, tokens, key_padding_mask, metric, xs, build, chunk_size):
    """metric(logits) of a run with intervention build(x) for each x along
    the leading axis of `xs`, `chunk_size` runs vmapped at a time (traced:
    call inside jit).  # [n, *metric shape]"""
    def one(x):
        logits, _ = apply_unchecked(cfg, params, tokens, intervention=build(x), key_padding_mask=key_padding_mask)
        return metric(logits)

    return map_chunked(one, xs, chunk_size)


def map_chunked(fn, xs, chunk_size: int):
    """fn(x) for each x along the leading axis of the pytree `xs`, `chunk_size`
    at a time vmapped and the chunks scanned (traced: call inside jit).  # [n, ...]"""
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk_size = min(chunk_size, n)
    pad = -n % chunk_size  # repeat the last run up to whole chunks: one loop body, no remainder copy
    xs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), xs)
    return jax.tree.map(lambda y: y[:n], jax.lax.map(fn, xs, batch_size=chunk_size))


@functools.partial(jax.jit, static_argnames=("cfg", "chunk_size"))
def _run_interventions(cfg, params, tokens, key_padding_mask, metric, interventions, *, chunk_size):
    return _map_runs(cfg, params, tokens, key_padding_mask, metric, interventions, lambda x: x, chunk_size)


def _edit(kind: str, site: str, values, pos, head) -> iv.Intervention:
    if kind == "patch":
        return iv.patch(site, values[site], pos=pos, head=head)
    return getattr(iv, kind)(site, pos=pos, head=head)


@functools.partial(jax.jit, static_argnames=("cfg", "kind", "sites", "chunk_size"))
def _run_site_sweep(cfg, params, tokens, key_padding_mask, metric, masks, values, *, kind, sites, chunk_size):
    """The runs of a site sweep, grouped by layer.

    sites[l]: the swept sites of layer l; masks[l]: {site: (pos [n_l, pos],
    head [n_l, n_heads] | None)}, one row per run of layer l (each run edits
    one site of its layer, the masks of the others being all-False);
    values: {site: replacement activation} for kind 'patch', else None.
    A run of layer l starts from the clean run's hook_resid_pre of layer l
    (a full patch, so the layers before l are not computed again), and under
    vmap whatever its edit does not reach is computed once per chunk. When
    every swept site is a head output (hook_z, hook_result), a run instead
    patches layer l's hook_attn_out with the clean one plus what its edit
    changes there, so layer l's attention is not run again either.
    Returns (baseline metric, [metric values [n_l, ...] for each layer]).
    """
    starts = tuple(f"blocks.{layer}.hook_resid_pre" for layer in range(1, cfg.n_layers))
    head_outputs = all(site.endswith(_HEAD_OUTPUTS) for layer_sites in sites for site in layer_sites)
    attn_outs = tuple(f"blocks.{layer}.hook_attn_out" for layer in range(cfg.n_layers))
    also = attn_outs + sum(sites, ()) if head_outputs else ()  # the clean values the runs start from
    logits, clean = apply_unchecked(cfg, params, tokens, capture=starts + also, key_padding_mask=key_padding_mask)
    per_layer = []
    for layer, (layer_sites, layer_masks) in enumerate(zip(sites, masks)):
        start = iv.patch(starts[layer - 1], clean[starts[layer - 1]]) if layer else None

        def build(m, layer=layer, layer_sites=layer_sites, start=start):
            edits = [_edit(kind, site, values, *m[site]) for site in layer_sites]
            if head_outputs:  # the heads' edited outputs enter the residual stream through hook_attn_out
                out = f"blocks.{layer}.hook_attn_out"
                changed = clean[out] + sum(_head_output_change(cfg, params, layer, site, clean[site], e.edits[site])
                                           for site, e in zip(layer_sites, edits))
                return iv.combine(start, iv.patch(out, changed))
            return iv.combine(start, *edits)

        per_layer.append(_map_runs(cfg, params, tokens, key_padding_mask, metric, layer_masks, build, chunk_size))
    return metric(logits), per_layer


_HEAD_OUTPUTS = ("attn.hook_z", "attn.hook_result")


def _head_output_change(cfg, params, layer, site, x, edits):
    """What edits of a layer's hook_z or hook_result (x: its clean activation) add to its
    hook_attn_out: [b, p, d]. A sweep of head outputs patches hook_attn_out with the clean one
    plus this, so the attention itself (dead code then) is not run again."""
    change = iv.apply_edits(site, x, edits) - x  # [b, p, h, e] (hook_z) or [b, p, h, d] (hook_result)
    if site.endswith("hook_z"):
        return jnp.einsum("bphe,hed->bpd", change, params[f"blocks_{layer}"]["attn"]["W_O"])
    return change.sum(2)


def runs_per_chunk(chunk_size: int | None, tokens_shape) -> int:
    """Runs per vmapped chunk: chunk_size, or by default as many as keep
    about CHUNK_TOKENS token positions in flight (at least 1)."""
    if chunk_size is None:
        return max(1, CHUNK_TOKENS // int(np.prod(tokens_shape)))
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


def intervention_sweep(cfg: ModelConfig, params: dict, tokens, interventions: iv.Intervention, metric, *,
                       key_padding_mask=None, chunk_size: int | None = None) -> Array:
    """metric(logits) for each intervention of a stacked batch
    (`interventions.stack`): [n, *metric shape], in one compiled call that
    returns only the metric values."""
    check_inputs(cfg, tokens, interventions, key_padding_mask, check_values=True, batched=True)
    return _run_interventions(cfg, params, jnp.asarray(tokens), key_padding_mask, as_metric(metric),
                              interventions, chunk_size=runs_per_chunk(chunk_size, np.shape(tokens)))


# --- site sweeps ---------------------------------------------------------------


@struct.dataclass
class SweepResult:
    """A sweep's metric values, labelled.

    values: [*sizes of `axes`, *metric shape], e.g. axes ('layer', 'head') ->
      [n_layers, n_heads]; ('site', 'layer', 'head', 'pos') when several
      sites were swept at once.
    baseline: [*metric shape], the metric without any intervention.
    axes: the names of the target axes of `values`.
    sites: the short site names swept (the 'site' axis, when present).
    kind: 'zero', 'mean', 'resample' or 'patch'.
    """

    values: Array
    baseline: Array
    axes: tuple[str, ...] = struct.field(pytree_node=False)
    sites: tuple[str, ...] = struct.field(pytree_node=False)
    kind: str = struct.field(pytree_node=False)


def _swept_sites(cfg: ModelConfig, site) -> tuple[tuple[str, ...], bool, list[list[str]]]:
    """Short names, whether they have a head axis, full names [site][layer]."""
    short = (site,) if isinstance(site, str) else tuple(site)
    if not short:
        raise ValueError("site: give a short site name ('z', 'resid_pre', ...) or a sequence of them")
    full = [[get_act_name(s, layer) for layer in range(cfg.n_layers)] for s in short]
    check_sites(cfg, [name for names in full for name in names], "swept site")
    has_head = {"head" in AXES[site_layout(names[0])] for names in full}
    if len(has_head) > 1:
        raise ValueError(f"sites {short} mix per-head and per-layer sites; sweep them separately")
    return short, has_head.pop(), full


def _layer_masks(n_sites: int, has_head: bool, n_heads: int, n_pos: int, by_pos: bool):
    """The masks of one layer's runs, one run per (site[, head][, pos]) in C
    order: for each site i, (pos [n, n_pos], head [n, n_heads] | None),
    all-False on the runs of the other sites; and the runs' grid shape."""
    grid = (n_sites,) + ((n_heads,) if has_head else ()) + ((n_pos,) if by_pos else ())
    index = np.indices(grid).reshape(len(grid), -1)  # [axis, n]
    masks = []
    for i in range(n_sites):
        active = (index[0] == i)[:, None]  # [n, 1]
        pos = active & (index[-1][:, None] == np.arange(n_pos)) if by_pos else active
        head = jnp.asarray(active & (index[1][:, None] == np.arange(n_heads))) if has_head else None
        masks.append((jnp.asarray(np.broadcast_to(pos, (index.shape[1], n_pos))), head))
    return masks, grid


def _site_sweep(cfg, params, tokens, metric, site, kind, by_pos, source_tokens, key_padding_mask,
                source_key_padding_mask, chunk_size, short_kind) -> SweepResult:
    check_inputs(cfg, tokens, None, key_padding_mask, check_values=True)
    short, has_head, full = _swept_sites(cfg, site)
    tokens = jnp.asarray(tokens)
    site_masks, grid = _layer_masks(len(short), has_head, cfg.n_heads, tokens.shape[1], by_pos)
    sites = tuple(tuple(names[layer] for names in full) for layer in range(cfg.n_layers))  # [layer][site]
    masks = [dict(zip(layer_sites, site_masks)) for layer_sites in sites]
    values = None
    if kind == "patch":
        if np.shape(source_tokens) != tokens.shape:
            raise ValueError(f"source_tokens must have the tokens' shape {tokens.shape}, "
                             f"got {np.shape(source_tokens)}")
        _, values = apply(cfg, params, source_tokens, capture=sum(sites, ()),
                          key_padding_mask=source_key_padding_mask)
    baseline, per_layer = _run_site_sweep(cfg, params, tokens, key_padding_mask, as_metric(metric), masks, values,
                                          kind=kind, sites=sites, chunk_size=runs_per_chunk(chunk_size, tokens.shape))
    out = jnp.stack([v.reshape(grid + v.shape[1:]) for v in per_layer], axis=1)  # [site, layer, ...]
    axes = ("site", "layer") + (("head",) if has_head else ()) + (("pos",) if by_pos else ())
    if isinstance(site, str):
        out, axes = out[0], axes[1:]
    return SweepResult(out, baseline, axes, short, short_kind)


def ablation_sweep(cfg: ModelConfig, params: dict, tokens, metric, *, site: str | Sequence[str] = "z",
                   kind: str = "mean", by_pos: bool = False, key=None, key_padding_mask=None,
                   chunk_size: int | None = None) -> SweepResult:
    """Ablates each head (or layer) in turn and measures `metric`.

    tokens: int [batch, pos]. metric: logits [batch, pos, vocab] -> array.
    site: a short site name expanded per layer ('z' by default: a head's
      output; 'result' gives the same numbers; 'q' / 'k' / 'v' / 'pattern';
      or a per-layer site such as 'attn_out', 'mlp_out', 'resid_pre'), or a
      sequence of names of the same kind, adding a leading 'site' axis.
    kind: 'zero'; 'mean' (the batch mean at each position, over `tokens`);
      'resample' (the activations of tokens[perm], perm =
      jax.random.permutation(key, batch); needs `key`).
    by_pos: ablate one position at a time too.
    key_padding_mask: bool [batch, pos] as in `tm.apply`.
    chunk_size: runs per vmapped chunk (default: about CHUNK_TOKENS token
      positions per chunk).
    Returns a SweepResult with values [n_layers, n_heads] for head sites
    ([n_layers, n_heads, pos] with by_pos), [n_layers] / [n_layers, pos] for
    per-layer sites, with a leading [n_sites] for a sequence of sites, each
    followed by the metric's own shape.
    """
    if kind not in ABLATIONS:
        raise ValueError(f"ablation_sweep: kind must be one of {ABLATIONS}, got {kind!r}")
    source_tokens = source_mask = None
    if kind == "resample":
        if key is None:
            raise ValueError("ablation_sweep: kind='resample' needs a PRNG key (key=jax.random.key(...))")
        perm = jax.random.permutation(key, np.shape(tokens)[0])
        source_tokens = jnp.asarray(tokens)[perm]
        source_mask = None if key_padding_mask is None else jnp.asarray(key_padding_mask)[perm]
    return _site_sweep(cfg, params, tokens, metric, site, "patch" if kind == "resample" else kind, by_pos,
                       source_tokens, key_padding_mask, source_mask, chunk_size, kind)


def patching_sweep(cfg: ModelConfig, params: dict, tokens, source_tokens, metric, *,
                   site: str | Sequence[str] = "resid_pre", by_pos: bool = True, key_padding_mask=None,
                   source_key_padding_mask=None, chunk_size: int | None = None) -> SweepResult:
    """Activation patching: runs `tokens` with the activation of
    `source_tokens` (same shape) patched in at each target, and measures
    `metric`. As TransformerLens's `patching.get_act_patch_*` with tokens =
    corrupted tokens and source_tokens = the clean run's tokens:

      site='resid_pre' (or 'attn_out', 'mlp_out', 'resid_mid'), by_pos=True
        -> [n_layers, pos]                   get_act_patch_resid_pre, ...
      site='z', by_pos=False -> [n_layers, n_heads]
                                             get_act_patch_attn_head_out_all_pos
      site='z', by_pos=True  -> [n_layers, n_heads, pos]  (TransformerLens:
                                [n_layers, pos, n_heads])
                                             get_act_patch_attn_head_out_by_pos
      site='q' / 'k' / 'v' / 'pattern' likewise (pattern: pos = query).
    key_padding_mask / source_key_padding_mask and chunk_size as in
    `ablation_sweep`. Returns a SweepResult (values, baseline = metric of
    the unpatched run).
    """
    return _site_sweep(cfg, params, tokens, metric, site, "patch", by_pos, source_tokens, key_padding_mask,
                       source_key_padding_mask, chunk_size, "patch")

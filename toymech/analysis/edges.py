"""A transformer's computational graph, the edge-level forward pass, exact edge patching and path patching.

The graph (`graph(cfg)`), with TransformerLens-style names:

  senders    `embed`, `pos_embed` (hook_embed, hook_pos_embed), `blocks.L.attn.head.H` (head H's
             hook_result, without b_O), `blocks.L.mlp` (hook_mlp_out)
  receivers  `blocks.L.attn.head.H.q` / `.k` / `.v` (head H's query / key / value input,
             hook_q_input ...), `blocks.L.mlp` (hook_mlp_in), `logits` (the final residual
             stream before ln_final)
  edges      `"<sender> -> <receiver>"` from every sender to every receiver downstream of it
             in the residual stream: a head of layer L feeds the MLP of layer L, everything
             in later layers, and the logits; an MLP of layer L feeds layers > L and the logits.

The edge-level forward pass (`edge_forward`) gives each edge a weight w. Every receiver reads

    input_r = sum over its senders s of  w[s, r] * clean_s + (1 - w[s, r]) * corrupted_s  (+ the biases b_O)

where clean_s is sender s's output in this same forward pass (so edges patched upstream change
it, as in ACDC) and corrupted_s its output in a run on the corrupted input; the receiver
applies its own LayerNorm to that input (TransformerLens's use_split_qkv_input). It is the
model's own forward pass (`toymech.model.Transformer`) with a `Sites` object that rewrites the
split-input sites -- the same per-head input path as an edit of hook_q_input, not a second
implementation. Since the residual stream is the sum of the senders' outputs and the biases,
the rewrite is input_r = resid - sum_s (1 - w[s, r]) (clean_s - corrupted_s). Weights are an
array [n_edges], so the pass is jit-, vmap- and grad-able; all ones give the clean logits and
all zeros the corrupted ones.

`edge_patching` switches each edge to corrupted alone (one compiled call, vmapped in chunks)
and `path_patching` sets a chosen set of sender -> receiver edges to corrupted (Wang et al.'s
path patching; see its docstring for TransformerLens 4's approximate version).

Metrics are per example: `metric(logits [batch, pos, d_vocab_out]) -> [batch]` (a function or a
`sweeps.Metric`; `kl_metric`, `loss_metric`, `logit_diff_metric` build them); the analyses
report its mean over the batch.

Einsum letters: s sender, c receiver column (head), b batch, p position, h head, d d_model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from toymech.analysis import sweeps
from toymech.analysis.attribution import logit_diff
from toymech.config import ModelConfig
from toymech import interventions as iv
from toymech.model import Sites, Transformer, apply_unchecked, check_inputs, check_params, head_result

Array = jax.Array
ROLES = ("q", "k", "v")


# --- the graph -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """The nodes and edges of a model's graph (see the module docstring).

    senders [S] and receivers [R] are in forward order; the senders upstream of a
    receiver are a prefix of `senders` (`n_upstream[r]` of them), and receiver r's
    edges are edges[offset[r]: offset[r] + n_upstream[r]], in sender order.
    """

    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    n_upstream: np.ndarray  # [R] int
    offset: np.ndarray  # [R] int
    sender_sites: tuple[str, ...]  # the model site each sender block is read at, forward order
    receiver_sites: dict  # model site -> (first receiver, number of receivers, per head)
    sender_at: tuple[tuple[str, int | None], ...]  # per sender: (site, head or None)
    receiver_at: tuple[tuple[str, int | None], ...]  # per receiver: (site, head or None)

    @property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    @functools.cached_property
    def edge_sender(self) -> np.ndarray:  # [E] sender index
        return np.concatenate([np.arange(n) for n in self.n_upstream])

    @functools.cached_property
    def edge_receiver(self) -> np.ndarray:  # [E] receiver index
        return np.repeat(np.arange(len(self.receivers)), self.n_upstream)

    @functools.cached_property
    def edges(self) -> tuple[str, ...]:
        return tuple(f"{self.senders[s]} -> {self.receivers[r]}" for s, r in zip(self.edge_sender, self.edge_receiver))

    def edge_sites(self, e: int) -> tuple[str, int | None, str, int | None]:
        """Where edge e sits in a forward pass with split inputs (toymech's and TransformerLens's
        hook names): (sender site, sender head or None, receiver site, receiver head or None).
        Patching the edge alone adds the sender's corrupted - clean output to the receiver's input."""
        return self.sender_at[self.edge_sender[e]] + self.receiver_at[self.edge_receiver[e]]

    def site_edges(self, site: str) -> np.ndarray:
        """The edges into the receivers read at model site `site` (`receiver_sites`), in edge
        order: receiver by receiver, each receiver's senders in order. [n]"""
        first, n, _ = self.receiver_sites[site]
        return np.arange(self.offset[first], self.offset[first] + self.n_upstream[first: first + n].sum())

    def edge_indices(self, names: Sequence[str]) -> np.ndarray:
        """Indices of the edges called `names`; raises ValueError listing the valid ones."""
        return _indices(self.edges, names, "edge")

    def sender_indices(self, names: Sequence[str]) -> np.ndarray:
        return _indices(self.senders, names, "sender")

    def receiver_indices(self, names: Sequence[str]) -> np.ndarray:
        """Receivers called `names`; a head's name (`blocks.1.attn.head.0`) stands for its q, k and v."""
        names = [names] if isinstance(names, str) else names
        expanded = [n for name in names for n in ([f"{name}.{r}" for r in ROLES]
                                                   if f"{name}.q" in self.receivers else [name])]
        return _indices(self.receivers, expanded, "receiver")


def _indices(valid: tuple[str, ...], names, what: str) -> np.ndarray:
    if isinstance(names, str):
        names = [names]
    where = {n: i for i, n in enumerate(valid)}
    unknown = [n for n in names if n not in where]
    if unknown:
        raise ValueError(f"unknown {what} name(s) {unknown}. Valid {what}s are:\n  " + "\n  ".join(valid))
    return np.asarray([where[n] for n in names], dtype=np.int32)


@functools.lru_cache(maxsize=None)
def graph(cfg: ModelConfig) -> Graph:
    """The graph of a model with this config."""
    H = cfg.n_heads
    senders, receivers, n_up, receiver_sites = [], [], [], {}
    sender_at, receiver_at = [], []

    def add_senders(site, names, per_head):
        senders.extend(names)
        sender_at.extend((site, h if per_head else None) for h in range(len(names)))

    def add_receivers(site, names, per_head):
        receiver_sites[site] = (len(receivers), len(names), per_head)
        receivers.extend(names)
        receiver_at.extend((site, h if per_head else None) for h in range(len(names)))
        n_up.extend([len(senders)] * len(names))

    add_senders("hook_embed", ["embed"], False)
    add_senders("hook_pos_embed", ["pos_embed"], False)
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        for role in ROLES:
            add_receivers(f"{b}.hook_{role}_input", [f"{b}.attn.head.{h}.{role}" for h in range(H)], True)
        add_senders(f"{b}.attn.hook_result", [f"{b}.attn.head.{h}" for h in range(H)], True)
        if not cfg.attn_only:
            add_receivers(f"{b}.hook_mlp_in", [f"{b}.mlp"], False)
            add_senders(f"{b}.hook_mlp_out", [f"{b}.mlp"], False)
    add_receivers(f"blocks.{cfg.n_layers - 1}.hook_resid_post", ["logits"], False)
    n_up = np.asarray(n_up)
    sender_sites = tuple(dict.fromkeys(site for site, _ in sender_at))
    return Graph(tuple(senders), tuple(receivers), n_up, np.concatenate([[0], np.cumsum(n_up)[:-1]]),
                 sender_sites, receiver_sites, tuple(sender_at), tuple(receiver_at))


# --- the edge-level forward pass ------------------------------------------------------


def _as_senders(x: Array) -> Array:
    """A sender site's activation as sender blocks: [b, p, d] -> [1, b, p, d]; [b, p, h, d] -> [h, b, p, d]."""
    return x[None] if x.ndim == 3 else x.transpose(2, 0, 1, 3)


class _EdgeSites(Sites):
    """Rewrites each receiver's input from its senders' clean and corrupted outputs (see the module docstring)."""

    def __init__(self, g: Graph, weights: Array, corrupted: Array, start: _Start | None = None):
        super().__init__(None, ())  # weights [E], corrupted [S, b, p, d]
        self.graph, self.weights, self.corrupted, self.start = g, weights, corrupted, start
        self.deltas: list[Array] = []  # clean - corrupted, [n, b, p, d] per sender site
        self.n_seen = 0

    def wanted(self, name: str) -> bool:
        return name in self.graph.sender_sites or super().wanted(name)

    def edited(self, name: str) -> bool:
        return name in self.graph.receiver_sites

    def __call__(self, name: str, x: Array) -> Array:
        if self.start is not None and name == self.start.site:
            x = self.start.resid  # what came before is the clean run's: dead code from here on
        if name in self.graph.sender_sites:
            out, n = _as_senders(x), self.n_seen
            if self.start is not None and n < self.start.n_senders:
                out = self.start.senders[n: n + out.shape[0]]
            self.deltas.append(out - self.corrupted[n: n + out.shape[0]])
            self.n_seen += out.shape[0]
        elif name in self.graph.receiver_sites:
            first, n, per_head = self.graph.receiver_sites[name]
            delta = jnp.concatenate(self.deltas)  # [s, b, p, d]: every sender so far, all upstream
            cols = np.arange(first, first + n)
            edge = self.graph.offset[cols][None] + np.arange(delta.shape[0])[:, None]  # [s, c]
            off = 1.0 - self.weights[edge]  # [s, c]
            if per_head:
                return x - jnp.einsum("sc,sbpd->bpcd", off, delta)  # x [b, p, h, d]
            return x - jnp.einsum("s,sbpd->bpd", off[:, 0], delta)
        return x


@struct.dataclass
class _Start:
    """Where an edge-level pass with every edge upstream of `site` at weight 1 may begin: the
    clean run's residual stream there, resid [b, p, d], and its first n_senders sender outputs
    (senders [S, b, p, d]), which are all that is upstream."""

    resid: Array
    senders: Array
    site: str = struct.field(pytree_node=False)
    n_senders: int = struct.field(pytree_node=False)


def _starts(cfg: ModelConfig, clean_acts: dict, clean_senders: Array) -> list[_Start]:
    """One `_Start` per receiver layer (each layer's resid_pre, then the logits' input at the last
    resid_post), from a clean run's captures (`_start_sites`)."""
    g = graph(cfg)
    firsts = [g.receiver_sites[f"blocks.{layer}.hook_q_input"][0] for layer in range(cfg.n_layers)]
    sites = _start_sites(cfg)
    n_senders = [int(g.n_upstream[r]) for r in firsts] + [len(g.senders)]
    return [_Start(clean_acts[site], clean_senders, site, n) for site, n in zip(sites, n_senders)]


def clean_starts(cfg: ModelConfig, params: dict, clean, key_padding_mask=None) -> tuple[Array, list[_Start]]:
    """A clean run: (its logits, one `_Start` per receiver layer, indexed by `receiver_layer`) (traceable)."""
    logits, senders, acts = _sender_run(cfg, params, clean, key_padding_mask, _start_sites(cfg))
    return logits, _starts(cfg, acts, senders)


def receiver_layer(cfg: ModelConfig, receiver: str) -> int:
    """The layer a receiver reads in (n_layers for the logits)."""
    return cfg.n_layers if receiver == "logits" else int(receiver.split(".")[1])


def _start_sites(cfg: ModelConfig) -> tuple[str, ...]:
    return tuple(f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)) + (
        f"blocks.{cfg.n_layers - 1}.hook_resid_post",)


def sender_run(cfg: ModelConfig, params: dict, tokens, key_padding_mask=None) -> tuple[Array, Array]:
    """A plain run on `tokens`: (logits, every sender's output stacked in `graph(cfg).senders`
    order [S, b, p, d]) (traceable)."""
    return _sender_run(cfg, params, tokens, key_padding_mask)[:2]


def _sender_run(cfg, params, tokens, key_padding_mask, also=()):
    """`sender_run`, and the activations captured at the sites `also`."""
    sites = graph(cfg).sender_sites
    logits, acts = apply_unchecked(cfg, params, tokens, capture=tuple(dict.fromkeys(sites + also)),
                                   key_padding_mask=key_padding_mask)
    return logits, stacked_senders(cfg, acts), acts


def stacked_senders(cfg: ModelConfig, acts) -> Array:
    """Every sender's output from a run's captures of `graph(cfg).sender_sites`, stacked in
    `graph(cfg).senders` order: [S, b, p, d]."""
    return jnp.concatenate([_as_senders(acts[s]) for s in graph(cfg).sender_sites])


def edge_logits(cfg: ModelConfig, params: dict, tokens, corrupted_senders: Array, weights: Array,
                key_padding_mask=None, start: _Start | None = None) -> Array:
    """The edge-level forward pass on validated inputs (traceable): logits [b, p, d_vocab_out].

    corrupted_senders: `sender_run`'s senders on the corrupted input [S, b, p, d]; weights [E];
    start: begin from the clean run at a layer whose upstream edges are all at weight 1.
    """
    sites = _EdgeSites(graph(cfg), weights, corrupted_senders, start)
    return Transformer(cfg).apply({"params": params}, tokens, sites, key_padding_mask)


def check_pair(cfg: ModelConfig, params: dict, clean, corrupted, key_padding_mask=None):
    """Validates a clean / corrupted pair of token batches (same shape, in the vocabulary) and the
    params; returns them as arrays. Raises ValueError naming both shapes when they differ."""
    clean = check_inputs(cfg, clean, None, key_padding_mask, check_values=True)
    corrupted = check_inputs(cfg, corrupted, None, key_padding_mask, check_values=True)
    if np.shape(clean) != np.shape(corrupted):
        raise ValueError(f"clean and corrupted tokens must have the same shape: clean {tuple(np.shape(clean))}, "
                         f"corrupted {tuple(np.shape(corrupted))}")
    check_params(cfg, params)
    return jnp.asarray(clean), jnp.asarray(corrupted)


def check_weights(cfg: ModelConfig, weights) -> Array:
    """weights as a float array [n_edges] (raises ValueError for another shape)."""
    n = graph(cfg).n_edges
    if np.shape(weights) != (n,):
        raise ValueError(f"edge weights must have shape [n_edges] = ({n},), got {tuple(np.shape(weights))}")
    return jnp.asarray(weights, dtype=cfg.dtype)


def edge_forward(cfg: ModelConfig, params: dict, clean, corrupted, weights, *, key_padding_mask=None) -> Array:
    """The edge-level forward pass: logits [batch, pos, d_vocab_out] of `clean` with every edge e
    reading w[e] * clean + (1 - w[e]) * corrupted (see the module docstring).

    clean, corrupted: int [batch, pos], the same shape; weights: [n_edges] (`graph(cfg).edges` order).
    """
    clean, corrupted = check_pair(cfg, params, clean, corrupted, key_padding_mask)
    return _edge_forward(cfg, params, clean, corrupted, check_weights(cfg, weights), key_padding_mask)


@functools.partial(jax.jit, static_argnums=0)
def _edge_forward(cfg, params, clean, corrupted, weights, key_padding_mask):
    _, corrupted_senders = sender_run(cfg, params, corrupted, key_padding_mask)
    return edge_logits(cfg, params, clean, corrupted_senders, weights, key_padding_mask)


# --- metrics per example -------------------------------------------------------------


def check_metric(metric, logits_shape, dtype) -> sweeps.Metric:
    """`metric` as a `sweeps.Metric`, after checking (abstractly) that it maps logits of this
    shape to one scalar per example [batch]; raises ValueError with the shape it returned."""
    metric = sweeps.as_metric(metric)
    try:
        out = jax.eval_shape(metric, jax.ShapeDtypeStruct(logits_shape, dtype))
    except Exception as e:  # noqa: BLE001 -- reported with the shapes it was given
        raise ValueError(f"the metric failed on logits of shape {tuple(logits_shape)}: {e}") from e
    shapes = [leaf.shape for leaf in jax.tree.leaves(out)]
    if shapes != [(logits_shape[0],)]:
        raise ValueError(f"the metric must return one scalar per example, shape ({logits_shape[0]},) for logits "
                         f"{tuple(logits_shape)}; it returned {shapes[0] if len(shapes) == 1 else shapes}")
    return metric


def _kl(logits, clean_logits, pos):
    log_p = jax.nn.log_softmax(clean_logits[:, pos].astype(jnp.float32), axis=-1)  # [b, n_pos, v]
    log_q = jax.nn.log_softmax(logits[:, pos].astype(jnp.float32), axis=-1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum(-1).mean(-1)


def kl_metric(clean_logits, pos) -> sweeps.Metric:
    """Per example: KL(clean output || this output) at positions `pos` [n_pos], averaged over them ->
    [batch] (ACDC's metric; clean_logits [batch, pos, d_vocab_out] from `tm.apply` on the clean input)."""
    return sweeps.Metric(_kl, (jnp.asarray(clean_logits), jnp.atleast_1d(jnp.asarray(pos))))


def _example_loss(logits, labels, pos):
    return sweeps.token_losses(logits, labels, pos).mean(-1)


def loss_metric(labels, pos) -> sweeps.Metric:
    """Per example: mean cross-entropy of `labels` [batch, n_pos] at positions `pos` [n_pos] -> [batch]."""
    pos, labels = sweeps.positions_and_labels(pos, labels, "loss_metric")
    return sweeps.Metric(_example_loss, (labels, pos))


def _example_logit_diff(logits, correct, incorrect, pos):
    return logit_diff(logits[:, pos], correct, incorrect).mean(-1)


def logit_diff_metric(correct, incorrect, pos) -> sweeps.Metric:
    """Per example: logit[correct] - logit[incorrect] at positions `pos`, averaged over them -> [batch]."""
    _, correct = sweeps.positions_and_labels(pos, correct, "logit_diff_metric (correct)")
    pos, incorrect = sweeps.positions_and_labels(pos, incorrect, "logit_diff_metric (incorrect)")
    return sweeps.Metric(_example_logit_diff, (correct, incorrect, pos))


# --- exact patching -------------------------------------------------------------------


@struct.dataclass
class EdgeScores:
    """A value per edge: the change in the (batch-mean) metric when that edge alone reads the
    corrupted sender instead of the clean one -- measured (`edge_patching`) or estimated
    (`toymech.analysis.discovery.edge_attribution`).

    values [n_edges] (`edges` order); clean, corrupted: the metric of the clean and the corrupted run.
    """

    values: Array
    clean: Array
    corrupted: Array
    edges: tuple[str, ...] = struct.field(pytree_node=False)
    method: str = struct.field(pytree_node=False)

    def __getitem__(self, edge: str) -> Array:
        return self.values[_indices(self.edges, [edge], "edge")[0]]


def prepared(cfg, params, clean, corrupted, metric, key_padding_mask, chunk_size):
    """The checked inputs of an edge analysis: (clean, corrupted, metric, runs per chunk)."""
    clean, corrupted = check_pair(cfg, params, clean, corrupted, key_padding_mask)
    metric = check_metric(metric, clean.shape + (cfg.d_vocab_out,), jnp.dtype(cfg.dtype))
    return clean, corrupted, metric, sweeps.runs_per_chunk(chunk_size, clean.shape)


def metric_of_weights(cfg, params, clean, corrupted_senders, metric, key_padding_mask, start=None):
    """w [E] -> the batch-mean metric of the edge-level pass (traceable)."""
    return lambda w: metric(edge_logits(cfg, params, clean, corrupted_senders, w, key_padding_mask, start)).mean()


def clean_and_corrupted(cfg, params, clean, corrupted, metric, key_padding_mask):
    """(corrupted senders [S, b, p, d], clean metric, corrupted metric) from a plain run of each (traceable)."""
    clean_logits, _ = apply_unchecked(cfg, params, clean, key_padding_mask=key_padding_mask)
    corrupted_logits, senders = sender_run(cfg, params, corrupted, key_padding_mask)
    return senders, metric(clean_logits).mean(), metric(corrupted_logits).mean()


def edge_patching(cfg: ModelConfig, params: dict, clean, corrupted, metric, *, key_padding_mask=None,
                  chunk_size: int | None = None) -> EdgeScores:
    """Exact patching of every edge: the metric change with each edge alone switched to the
    corrupted sender (weight 0, all others 1), for all edges in one compiled call (vmapped in
    chunks of `chunk_size` runs; default: about `sweeps.CHUNK_TOKENS` token positions per chunk).

    clean, corrupted: int [batch, pos]; metric: logits -> [batch]. Returns `EdgeScores` with
    values [n_edges] = metric(edge e corrupted) - metric(clean). With one edge patched only its
    receiver reads a changed input, so each run recomputes that receiver alone (one head, one
    MLP or the logits) from the clean run's activations and then runs the plain model after it;
    the result equals `edge_forward` with that edge's weight at 0 (tests/test_edges.py).
    """
    clean, corrupted, metric, chunk = prepared(cfg, params, clean, corrupted, metric, key_padding_mask, chunk_size)
    values, m_clean, m_corrupted = _edge_patching(cfg, params, clean, corrupted, metric, key_padding_mask, chunk)
    return EdgeScores(values, m_clean, m_corrupted, graph(cfg).edges, "exact")


@functools.partial(jax.jit, static_argnums=(0, 6))
def _edge_patching(cfg, params, clean, corrupted, metric, key_padding_mask, chunk):
    """With one edge patched, only its receiver reads a changed input: every other receiver
    reads the residual stream of this pass as it is. So each run takes the clean run's
    activations up to the receiver, recomputes the receiver alone on its patched input (a
    head through `model.head_result`, an MLP or the logits through the model itself), and
    runs the plain model from there on (`iv.patch` of the clean values at the receiver's
    block; XLA drops what those patches make dead). One group of runs per receiver layer
    and kind, each `lax.map`ped over its edges in chunks."""
    g, L = graph(cfg), cfg.n_layers - 1
    b = lambda layer, site: f"blocks.{layer}.{site}"
    sites = tuple(b(layer, site) for layer in range(cfg.n_layers) for site in (
        "hook_resid_pre", "hook_attn_out") + (() if cfg.attn_only else ("hook_resid_mid",)))
    clean_logits, clean_senders, acts = _sender_run(cfg, params, clean, key_padding_mask,
                                                     sites + (b(L, "hook_resid_post"),))
    corrupted_logits, corrupted_senders = sender_run(cfg, params, corrupted, key_padding_mask)
    deltas = corrupted_senders - clean_senders  # [S, b, p, d]: what patching an edge adds to its receiver's input
    run = lambda *patches: metric(apply_unchecked(cfg, params, clean, intervention=iv.combine(*patches),
                                                  key_padding_mask=key_padding_mask)[0]).mean()
    groups = []
    for layer in range(cfg.n_layers):
        resid_pre, attn_out = acts[b(layer, "hook_resid_pre")], acts[b(layer, "hook_attn_out")]

        def head_edge(s, head, role, layer=layer, resid_pre=resid_pre, attn_out=attn_out):
            inputs = [resid_pre + (role == r) * deltas[s] for r in range(3)]  # q, k, v inputs [b, p, d]
            new = head_result(cfg, params, layer, head, *inputs, key_padding_mask)
            old = clean_senders[g.senders.index(f"blocks.{layer}.attn.head.0") + head]  # [b, p, d]
            return run(iv.patch(b(layer, "hook_resid_pre"), resid_pre),
                       iv.patch(b(layer, "hook_attn_out"), attn_out + new - old))

        es = np.concatenate([g.site_edges(b(layer, f"hook_{role}_input")) for role in ROLES])
        rec = g.edge_receiver[es] - g.receiver_sites[b(layer, "hook_q_input")][0]  # role * n_heads + head
        groups.append((es, head_edge, (g.edge_sender[es], rec % cfg.n_heads, rec // cfg.n_heads)))
        if not cfg.attn_only:
            mid = acts[b(layer, "hook_resid_mid")]

            def mlp_edge(s, layer=layer, mid=mid):
                return run(iv.patch(b(layer, "hook_resid_mid"), mid),
                           iv.patch(b(layer, "hook_mlp_in"), mid + deltas[s]))

            es = g.site_edges(b(layer, "hook_mlp_in"))
            groups.append((es, mlp_edge, (g.edge_sender[es],)))
    post = acts[b(L, "hook_resid_post")]
    es = g.site_edges(b(L, "hook_resid_post"))
    groups.append((es, lambda s: run(iv.patch(b(L, "hook_resid_post"), post + deltas[s])), (g.edge_sender[es],)))

    m_clean = metric(clean_logits).mean()
    out = jnp.zeros(g.n_edges, m_clean.dtype)
    for es, edge_fn, args in groups:
        args = tuple(jnp.asarray(a, jnp.int32) for a in args)
        out = out.at[es].set(sweeps.map_chunked(lambda a: edge_fn(*a), args, chunk))
    return out - m_clean, m_clean, metric(corrupted_logits).mean()


def path_patching(cfg: ModelConfig, params: dict, clean, corrupted, metric, senders: Sequence[str],
                  receivers: Sequence[str], *, each_sender: bool = False, key_padding_mask=None,
                  chunk_size: int | None = None):
    """Path patching (Wang et al. 2022, the IOI paper): the metric when the direct paths from
    `senders` to `receivers` carry the senders' corrupted outputs and every other path carries
    the clean ones. Returns (patched metric - clean metric): a scalar, or [n_senders] with
    `each_sender` (one run per sender, in one vmapped call).

    senders: node names (`graph(cfg).senders`); receivers: receiver names, or a head's name for
    its q, k and v inputs together. The receivers' inputs are rebuilt (their LayerNorms
    recomputed on the patched input) and everything downstream of them is recomputed, with
    non-receiver nodes seeing clean inputs -- Wang et al.'s freeze-and-patch runs, done exactly
    in one edge-level pass with those edges' weights at 0.

    TransformerLens 4's `path_patch` instead adds the sender's corrupted-minus-clean output,
    scaled by the receiver's clean LayerNorm scale (the LN frozen as a linear map), to the
    receiver's input: the two agree without LayerNorm and to first order in the patch with it;
    this one is exact.
    """
    clean, corrupted, metric, chunk = prepared(cfg, params, clean, corrupted, metric, key_padding_mask, chunk_size)
    g = graph(cfg)
    s_idx, r_idx = g.sender_indices(senders), g.receiver_indices(receivers)
    where = {(s, r): e for e, (s, r) in enumerate(zip(g.edge_sender, g.edge_receiver))}
    rows = [[where[s, r] for r in r_idx if (s, r) in where] for s in s_idx]  # the existing direct edges
    if not any(rows):
        raise ValueError(f"no edge runs from {list(senders)} to {list(receivers)}: senders must be upstream of "
                         "the receivers")
    off = np.zeros((len(rows) if each_sender else 1, g.n_edges), bool)
    for i, row in enumerate(rows):
        off[i if each_sender else 0, row] = True
    values, m_clean, _ = patched_sets(cfg, params, clean, corrupted, metric, jnp.asarray(off), key_padding_mask,
                                      chunk)
    return values - m_clean if each_sender else values[0] - m_clean


@functools.partial(jax.jit, static_argnums=(0, 7))
def patched_sets(cfg, params, clean, corrupted, metric, off, key_padding_mask, chunk):
    """On checked inputs (`prepared`): (metric with the edges off[i] corrupted and the rest clean,
    for each row of off [n, E] (bool) -> [n], the clean metric, the corrupted metric); one
    compiled call, `chunk` rows vmapped at a time."""
    senders, m_clean, m_corrupted = clean_and_corrupted(cfg, params, clean, corrupted, metric, key_padding_mask)
    run = metric_of_weights(cfg, params, clean, senders, metric, key_padding_mask)
    return sweeps.map_chunked(lambda o: run(1.0 - o.astype(senders.dtype)), off, chunk), m_clean, m_corrupted

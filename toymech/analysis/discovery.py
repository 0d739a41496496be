"""Circuit discovery on the edge graph of `toymech.analysis.edges`: attribution patching, ACDC,
top-k circuits, faithfulness curves, and the `Circuit` they return.

Attribution patching estimates patching effects from gradients instead of one run per target:

* `node_attribution`: heads (per position; sum over positions for a head as a whole), MLP
  neurons and residual-stream positions, from one forward and backward pass on the clean input
  and one forward pass on the corrupted one: effect ~ (corrupted - clean) . d metric / d act.
* `edge_attribution(method="eap")`: EAP, effect of edge e ~ -d metric / d w_e at w = 1 (the
  edge-level pass's input moves by (corrupted - clean) as w_e goes from 1 to 0), from one clean
  forward + backward (the gradient at every receiver's input) and one corrupted forward.
* `edge_attribution(method="eap-ig", steps=m)`: EAP-IG, the same gradient averaged over m
  points alpha = (k + 1/2) / m of the straight path from all-corrupted (w = 0) to clean
  (w = 1), vmapped; the scores sum to about metric(all corrupted) - metric(clean).

Circuit search:

* `acdc`: ACDC-style pruning (Conmy et al. 2023). Starting with every edge, visit the receivers
  from the logits backwards; for each, evaluate removing each of its remaining incoming edges
  from the current circuit (one vmapped call per receiver) and remove those whose removal changes
  the metric by less than `tau` (in absolute value). All candidates of a receiver are judged
  against the same current circuit and removed together, where the original removes one at a
  time; the whole search is one compiled program (a scan over each layer's receivers).
* `top_k`: the k edges of largest |score| (EAP or EAP-IG, or exact).
* `faithfulness_curve`: the metric of the top-k circuit for every k, one vmapped call over k.

A circuit keeps its edges at clean (w = 1) and sends every other edge the corrupted sender
(w = 0). Its `recovered` fraction is (metric(circuit) - metric(corrupted)) /
(metric(clean) - metric(corrupted)).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from toymech import interventions as iv
from toymech.analysis import edges, sweeps
from toymech.config import ModelConfig
from toymech.model import apply_unchecked
from toymech.sites import site_shape

Array = jax.Array


# --- node-level attribution -----------------------------------------------------------


@struct.dataclass
class NodeAttribution:
    """Estimated metric change from patching in each node's corrupted activation.

    heads [n_layers, pos, n_heads] (hook_z), neurons [n_layers, pos, d_mlp] (mlp.hook_post; None
    in attention-only models), resid [n_layers, pos] (hook_resid_pre); sum over `pos` for a
    node patched at every position.
    """

    heads: Array
    neurons: Array | None
    resid: Array


def _node_sites(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    layers = range(cfg.n_layers)
    return {"heads": tuple(f"blocks.{l}.attn.hook_z" for l in layers),
            "neurons": () if cfg.attn_only else tuple(f"blocks.{l}.mlp.hook_post" for l in layers),
            "resid": tuple(f"blocks.{l}.hook_resid_pre" for l in layers)}


def node_attribution(cfg: ModelConfig, params: dict, clean, corrupted, metric, *,
                     key_padding_mask=None) -> NodeAttribution:
    """Attribution patching of heads, MLP neurons and residual positions (see the module
    docstring): (corrupted - clean) . gradient of the batch-mean metric, summed over the
    activation's features and averaged over the batch. metric: logits -> [batch]."""
    clean, corrupted, metric, _ = edges.prepared(cfg, params, clean, corrupted, metric, key_padding_mask, None)
    return _node_attribution(cfg, params, clean, corrupted, metric, key_padding_mask)


@functools.partial(jax.jit, static_argnums=0)
def _node_attribution(cfg, params, clean, corrupted, metric, key_padding_mask):
    sites = sum(_node_sites(cfg).values(), ())
    _, corr = apply_unchecked(cfg, params, corrupted, capture=sites, key_padding_mask=key_padding_mask)

    def mean_metric(zeros):  # zeros added at each site: the gradient wrt them is d metric / d activation
        added = iv.combine(*(iv.add(s, z) for s, z in zeros.items()))
        logits, acts = apply_unchecked(cfg, params, clean, intervention=added, capture=sites,
                                       key_padding_mask=key_padding_mask)
        return metric(logits).mean(), acts

    zeros = {s: jnp.zeros_like(corr[s]) for s in sites}
    grads, acts = jax.grad(mean_metric, has_aux=True)(zeros)
    batch = clean.shape[0]
    # the gradient of a batch mean, times batch, is each example's own; then the mean over examples
    score = lambda s: ((corr[s] - acts[s]) * grads[s] * batch).mean(0)  # [p, (h,) features]
    stacked = {"heads": [score(s).sum(-1) for s in _node_sites(cfg)["heads"]],  # [p, h] per layer
               "neurons": [score(s) for s in _node_sites(cfg)["neurons"]],  # [p, m]
               "resid": [score(s).sum(-1) for s in _node_sites(cfg)["resid"]]}  # [p]
    stacked = {k: jnp.stack(v) if v else None for k, v in stacked.items()}
    return NodeAttribution(**stacked)


# --- edge-level attribution -----------------------------------------------------------

METHODS = ("eap", "eap-ig")


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def edge_attribution(cfg: ModelConfig, params: dict, clean, corrupted, metric, *, method: str = "eap",
                     steps: int = 8, key_padding_mask=None, chunk_size: int | None = None) -> edges.EdgeScores:
    """EAP or EAP-IG scores of every edge (see the module docstring): estimated metric(edge
    corrupted) - metric(clean), [n_edges], comparable with `edges.edge_patching`'s values.

    steps: EAP-IG's number of points m (>= 1), evaluated `chunk_size` at a time (vmapped);
    ignored by EAP. metric: logits -> [batch].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = _check_int(steps, "steps", 1)
    clean, corrupted, metric, chunk = edges.prepared(cfg, params, clean, corrupted, metric, key_padding_mask,
                                                     chunk_size)
    if method == "eap":
        values, m_clean, m_corrupted = _eap(cfg, params, clean, corrupted, metric, key_padding_mask)
    else:
        alphas = jnp.asarray((np.arange(steps) + 0.5) / steps, cfg.dtype)
        values, m_clean, m_corrupted = _eap_ig(cfg, params, clean, corrupted, metric, key_padding_mask, alphas, chunk)
    return edges.EdgeScores(values, m_clean, m_corrupted, edges.graph(cfg).edges, method)


@functools.partial(jax.jit, static_argnums=0)
def _eap(cfg, params, clean, corrupted, metric, key_padding_mask):
    """At w = 1 every receiver reads the residual stream itself, and d input_r / d w[s, r] =
    clean_s - corrupted_s, so -d metric / d w[s, r] = -<d metric / d input_r, clean_s - corrupted_s>:
    one clean forward + backward (the gradient at each receiver's input, taken through a zero
    `iv.add` there, which also gives the clean senders) and one corrupted forward."""
    g = edges.graph(cfg)
    corrupted_logits, corrupted_senders = edges.sender_run(cfg, params, corrupted, key_padding_mask)
    batch, n_pos = clean.shape
    zeros = {site: jnp.zeros(site_shape(cfg, site, batch, n_pos), corrupted_senders.dtype) for site in g.receiver_sites}

    def clean_run(adds):
        logits, acts = apply_unchecked(cfg, params, clean, intervention=iv.combine(*(
            iv.add(site, x) for site, x in adds.items())), capture=g.sender_sites, key_padding_mask=key_padding_mask)
        return metric(logits).mean(), acts

    (m_clean, acts), grads = jax.value_and_grad(clean_run, has_aux=True)(zeros)
    delta = edges.stacked_senders(cfg, acts) - corrupted_senders  # [S, b, p, d]
    values = jnp.zeros(g.n_edges, m_clean.dtype)
    for site, (first, _, per_head) in g.receiver_sites.items():
        grad = grads[site] if per_head else grads[site][:, :, None]  # [b, p, c, d]
        scores = -jnp.einsum("bpcd,sbpd->cs", grad, delta[: g.n_upstream[first]])  # [c, s]: receiver by receiver
        values = values.at[g.site_edges(site)].set(scores.ravel())
    return values, m_clean, metric(corrupted_logits).mean()


@functools.partial(jax.jit, static_argnums=(0, 7))
def _eap_ig(cfg, params, clean, corrupted, metric, key_padding_mask, alphas, chunk):
    """The edge-level pass's gradient at w = alpha * 1 for each alpha, averaged."""
    corrupted_logits, senders = edges.sender_run(cfg, params, corrupted, key_padding_mask)
    grad = jax.grad(edges.metric_of_weights(cfg, params, clean, senders, metric, key_padding_mask))
    ones = jnp.ones(edges.graph(cfg).n_edges, senders.dtype)
    grads = sweeps.map_chunked(lambda a: grad(a * ones), alphas, chunk)  # [m, E]
    m_clean = metric(apply_unchecked(cfg, params, clean, key_padding_mask=key_padding_mask)[0]).mean()
    return -grads.mean(0), m_clean, metric(corrupted_logits).mean()


# --- circuits ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Circuit:
    """A set of kept edges and what it does.

    kept: the kept edges' names; scores: their scores [n_kept] (the search's: |metric change| of
    removing the edge for ACDC, the ranking score for top-k); metric: the circuit alone (kept
    edges clean, the rest corrupted); clean / corrupted: the metric of the full clean and the
    corrupted run; mask: bool [n_edges] over `edges.graph(cfg).edges`.
    """

    kept: tuple[str, ...]
    scores: np.ndarray
    metric: float
    clean: float
    corrupted: float
    mask: np.ndarray
    method: str

    @property
    def recovered(self) -> float:
        """(metric - corrupted) / (clean - corrupted): 1 when the circuit does what the model does
        (NaN when the corruption does not change the metric)."""
        gap = self.clean - self.corrupted
        return (self.metric - self.corrupted) / gap if gap != 0 else float("nan")

    def figure(self, path: str | os.PathLike, *, title: str | None = None) -> str:
        """Draws the circuit as a layered DAG (PNG at `path`): embeddings at the bottom, one row
        per layer's heads (and MLP), the logits on top; edge width by |score|, colour by the
        receiving input (q, k, v, MLP / logits). Returns `path`."""
        return draw_circuit(path, self.kept, self.scores, title=title or f"{self.method}: {len(self.kept)} edges, "
                            f"recovered {self.recovered:.2f}")


def _node_of(name: str) -> str:
    """The node an edge end belongs to: a head's q/k/v input -> the head."""
    return name.rsplit(".", 1)[0] if name.endswith((".q", ".k", ".v")) and ".head." in name else name


def _position(node: str, middle: float, top: float) -> tuple[float, float]:
    """(x, y) of a node in the DAG: y = 0 embeddings, 2L + 1 layer L's heads (x = head), 2L + 2
    its MLP, `top` the logits; MLPs and logits at x = `middle`."""
    if node in ("embed", "pos_embed"):
        return (middle - 0.5 if node == "embed" else middle + 0.5), 0.0
    if node == "logits":
        return middle, top
    layer = int(node.split(".")[1])
    if node.endswith(".mlp"):
        return middle, 2.0 * layer + 2
    return float(node.rsplit(".", 1)[1]), 2.0 * layer + 1


def draw_circuit(path, kept, scores, *, title=None) -> str:
    """A layered DAG of the edges `kept` (names "sender -> receiver") with widths by |scores|."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ends = [tuple(e.split(" -> ")) for e in kept]
    nodes = {_node_of(n) for end in ends for n in end}
    heads = [int(n.rsplit(".", 1)[1]) for n in nodes if ".head." in n]
    layers = [int(n.split(".")[1]) for n in nodes if n.startswith("blocks.")]
    top = 2.0 * max(layers, default=-1) + 3  # above the last layer's MLP row
    xy = {n: _position(n, max(heads, default=1) / 2, top) for n in nodes}
    fig = Figure(figsize=(7, 1.2 + 1.1 * top), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    widths = np.abs(np.asarray(scores, float))
    widths = 0.5 + 4.5 * widths / widths.max() if len(widths) and widths.max() > 0 else np.ones(len(ends))
    colours = {"q": "tab:blue", "k": "tab:green", "v": "tab:red"}
    for (s, r), width in zip(ends, widths):
        role = r.rsplit(".", 1)[-1]
        (x0, y0), (x1, y1) = xy[_node_of(s)], xy[_node_of(r)]
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="-|>", lw=width, alpha=0.7,
                    color=colours.get(role, "tab:gray"), shrinkA=12, shrinkB=12))
    for n, (x, y) in xy.items():
        label = n.replace("blocks.", "L").replace(".attn.head.", "H").replace(".mlp", " MLP")
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="black"))
    ax.set_xlim(-0.7, max([x for x, _ in xy.values()] + [1.0]) + 0.7)
    ax.set_ylim(-0.7, top + 0.7)
    ax.axis("off")
    handles = [ax.plot([], [], color=c, label=f"{k} input")[0] for k, c in colours.items()]
    handles.append(ax.plot([], [], color="tab:gray", label="MLP / logits input")[0])
    ax.legend(handles=handles, loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _circuit(cfg, mask, scores, metric, clean, corrupted, method) -> Circuit:
    mask = np.asarray(mask, bool)
    names = edges.graph(cfg).edges
    return Circuit(tuple(n for n, k in zip(names, mask) if k), np.asarray(scores)[mask], float(metric),
                   float(clean), float(corrupted), mask, method)


def acdc(cfg: ModelConfig, params: dict, clean, corrupted, metric, tau: float, *, key_padding_mask=None,
         chunk_size: int | None = None) -> Circuit:
    """ACDC-style pruning (see the module docstring), one compiled call.

    metric: logits -> [batch] (e.g. `edges.kl_metric(clean_logits, pos)`, ACDC's choice, or a task
    metric); tau >= 0: an edge whose removal changes the batch-mean metric by less than tau
    (absolute) is removed (tau = 0 keeps every edge).
    """
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (int, float, np.floating, np.integer)) \
            or not np.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    clean, corrupted, metric, chunk = edges.prepared(cfg, params, clean, corrupted, metric, key_padding_mask,
                                                     chunk_size)
    w, changes, m_circuit, m_clean, m_corrupted = _acdc(cfg, params, clean, corrupted, metric, key_padding_mask,
                                                        jnp.asarray(tau, cfg.dtype), chunk)
    return _circuit(cfg, np.asarray(w) > 0, np.asarray(changes), m_circuit, m_clean, m_corrupted, "acdc")


def _levels(g: edges.Graph) -> list[np.ndarray]:
    """Receivers grouped by their number of upstream senders (a layer's attention inputs, its MLP,
    the logits), from the logits backwards."""
    levels = {}
    for r in range(len(g.receivers)):
        levels.setdefault(int(g.n_upstream[r]), []).append(r)
    return [np.asarray(levels[n][::-1]) for n in sorted(levels, reverse=True)]


@functools.partial(jax.jit, static_argnums=(0, 7))
def _acdc(cfg, params, clean, corrupted, metric, key_padding_mask, tau, chunk):
    """Each level's runs start from the clean run at its layer: the edges upstream of a level are
    all still in the circuit when it is visited (pruning goes from the logits backwards)."""
    g = edges.graph(cfg)
    clean_logits, starts = edges.clean_starts(cfg, params, clean, key_padding_mask)
    corrupted_logits, senders = edges.sender_run(cfg, params, corrupted, key_padding_mask)
    m_clean = metric(clean_logits).mean()
    w, current = jnp.ones(g.n_edges, senders.dtype), m_clean
    changes = jnp.zeros(g.n_edges, senders.dtype)
    for level in _levels(g):
        start = starts[edges.receiver_layer(cfg, g.receivers[level[0]])]
        run = edges.metric_of_weights(cfg, params, clean, senders, metric, key_padding_mask, start)

        def visit(carry, incoming, run=run):  # incoming [s]: the edge indices of one receiver
            w, current, changes = carry
            tried = sweeps.map_chunked(lambda e: run(w.at[e].set(0.0)), incoming, chunk)  # [s]
            change = jnp.abs(tried - current)
            drop = (change < tau) & (w[incoming] > 0)
            w = w.at[incoming].set(jnp.where(drop, 0.0, w[incoming]))
            return (w, run(w), changes.at[incoming].set(change)), None

        incoming = g.offset[level][:, None] + np.arange(g.n_upstream[level[0]])[None]  # [receivers, s]
        (w, current, changes), _ = jax.lax.scan(visit, (w, current, changes), jnp.asarray(incoming))
    return w, changes, current, m_clean, metric(corrupted_logits).mean()


def _check_scores(cfg: ModelConfig, scores) -> np.ndarray:
    values = np.asarray(scores.values if isinstance(scores, edges.EdgeScores) else scores)
    n = edges.graph(cfg).n_edges
    if values.shape != (n,):
        raise ValueError(f"scores must be one per edge, shape ({n},), got {values.shape}")
    return values


def _ranks(values: np.ndarray) -> np.ndarray:
    """rank[e] = place of edge e by decreasing |value| (0 = largest; ties by edge order)."""
    order = np.argsort(-np.abs(values), kind="stable")
    ranks = np.empty(len(values), np.int32)
    ranks[order] = np.arange(len(values))
    return ranks


def top_k(cfg: ModelConfig, params: dict, clean, corrupted, metric, scores, k: int, *,
          key_padding_mask=None) -> Circuit:
    """The circuit of the k edges with the largest |score| (`scores`: `EdgeScores` or [n_edges]),
    0 <= k <= n_edges, with its metric (the rest of the edges corrupted)."""
    values = _check_scores(cfg, scores)
    k = _check_int(k, "k", 0, len(values))
    mask = _ranks(values) < k
    curve = faithfulness_curve(cfg, params, clean, corrupted, metric, values, ks=[k],
                               key_padding_mask=key_padding_mask)
    return _circuit(cfg, mask, values, curve.metric[0], curve.clean, curve.corrupted,
                    f"top-{k} {getattr(scores, 'method', 'scores')}")


@dataclasses.dataclass(frozen=True, eq=False)
class FaithfulnessCurve:
    """metric [n_k] of the top-k circuit for each k of ks [n_k]; recovered [n_k] =
    (metric - corrupted) / (clean - corrupted)."""

    ks: np.ndarray
    metric: np.ndarray
    clean: float
    corrupted: float

    @property
    def recovered(self) -> np.ndarray:
        return (self.metric - self.corrupted) / (self.clean - self.corrupted)


def faithfulness_curve(cfg: ModelConfig, params: dict, clean, corrupted, metric, scores, *, ks=None,
                       key_padding_mask=None, chunk_size: int | None = None) -> FaithfulnessCurve:
    """The metric of the top-k circuit (by |score|) for each k in `ks` (default 0..n_edges), one
    vmapped call over k (in chunks of `chunk_size`)."""
    values = _check_scores(cfg, scores)
    n = len(values)
    ks = np.arange(n + 1) if ks is None else np.asarray(ks)
    if ks.ndim != 1 or len(ks) == 0 or not np.issubdtype(ks.dtype, np.integer) or (ks < 0).any() or (ks > n).any():
        raise ValueError(f"ks must be a non-empty 1-D array of ints in [0, {n}] (edges kept), got {ks!r}")
    clean, corrupted, metric, chunk = edges.prepared(cfg, params, clean, corrupted, metric, key_padding_mask,
                                                     chunk_size)
    off = jnp.asarray(_ranks(values)[None] >= ks[:, None])  # [n_k, E]: the edges outside each top-k circuit
    metrics, m_clean, m_corrupted = edges.patched_sets(cfg, params, clean, corrupted, metric, off, key_padding_mask,
                                                       chunk)
    return FaithfulnessCurve(ks, np.asarray(metrics), float(m_clean), float(m_corrupted))

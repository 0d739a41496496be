"""Matplotlib figures for experiment reports, written straight to PNG files.

Every function draws one figure, saves it to `path` and returns `path`. They use
matplotlib's object API with the Agg canvas (no pyplot, no global backend, no
display), so they work headless and in parallel tests.

Conventions: heatmaps of an (a, b) grid put a on the vertical axis (row 0 at
the bottom) and b on the horizontal one; diverging data (`center=True`) uses a
symmetric red-blue scale around zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _label(ax, title=None, xlabel=None, ylabel=None):
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)


def curves(path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title=None, xlabel=None,
           ylabel=None, log_y=False, vlines: Mapping[str, float] | None = None, markers=False,
           highlight: Sequence[str] = (), width=8.0, height=4.5) -> str:
    """Curves {name: (x, y)}; `vlines` {label: x} draws labelled dashed markers; curves named in
    `highlight` are drawn thick, the others thin and grey when there are many."""
    fig, ax = _figure(width, height)
    ax = ax[0, 0]
    many = len(series) > 10
    for i, (name, (x, y)) in enumerate(series.items()):
        style = {}
        if many and highlight and name not in highlight:
            style = {"color": "0.75", "linewidth": 0.7, "label": None}
        elif highlight and name in highlight:
            style = {"linewidth": 2.0}
        ax.plot(np.asarray(x), np.asarray(y), **({"label": name} | style),
                marker="o" if markers else None, markersize=3)
    if log_y:
        ax.set_yscale("log")
    for i, (name, xv) in enumerate((vlines or {}).items()):
        ax.axvline(xv, color=f"C{(i + 7) % 10}", linestyle="--", linewidth=1.2, alpha=0.8, label=name)
    _label(ax, title, xlabel, ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def bars(path, labels: Sequence, values: Mapping[str, Sequence[float]] | Sequence[float], *, title=None,
         xlabel=None, ylabel=None, log_y=False, highlight: Sequence[int] = (), width=8.0, height=4.0,
         max_ticks=40) -> str:
    """Bar chart; a mapping of series draws grouped bars. `highlight` colours those bar indices."""
    fig, ax = _figure(width, height)
    ax = ax[0, 0]
    groups = values if isinstance(values, Mapping) else {"": values}
    n, k = len(labels), len(groups)
    x = np.arange(n)
    w = 0.8 / k
    for j, (name, v) in enumerate(groups.items()):
        v = np.asarray(v, dtype=float)
        colors = [f"C{j}"] * n
        for i in highlight:
            colors[i] = "C3"
        ax.bar(x + (j - (k - 1) / 2) * w, v, width=w, label=name or None, color=colors)
    step = max(1, n // max_ticks)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(l) for l in labels][::step], rotation=90 if n > 12 else 0, fontsize=7)
    if log_y:
        ax.set_yscale("log")
    _label(ax, title, xlabel, ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if k > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _heat(ax, fig, m, *, title=None, xlabel=None, ylabel=None, center=False, cmap=None, annotate=False,
          xticks=None, yticks=None, origin_lower=True, vmin=None, vmax=None, fmt="{:.2f}"):
    m = np.asarray(m, dtype=float)
    if center:
        lim = np.nanmax(np.abs(m)) if np.isfinite(m).any() else 1.0
        vmin, vmax = -(lim or 1.0), (lim or 1.0)
        cmap = cmap or "RdBu_r"
    im = ax.imshow(m, cmap=cmap or "viridis", vmin=vmin, vmax=vmax, aspect="auto",
                   origin="lower" if origin_lower else "upper", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    for ticks, setter, labeler, rotate in ((xticks, ax.set_xticks, ax.set_xticklabels, 90),
                                           (yticks, ax.set_yticks, ax.set_yticklabels, 0)):
        if ticks is not None:
            idx, names = ticks
            setter(idx)
            labeler(names, fontsize=7, rotation=rotate if len(idx) > 8 else 0)
    if annotate:
        for (r, c), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=6)
    _label(ax, title, xlabel, ylabel)


def heatmap(path, m, *, title=None, xlabel=None, ylabel=None, center=False, cmap=None, annotate=False,
            xticks=None, yticks=None, origin_lower=True, vmin=None, vmax=None, fmt="{:.2f}",
            width=6.5, height=5.0) -> str:
    """One matrix as an image; `xticks`/`yticks` are (positions, labels)."""
    fig, ax = _figure(width, height)
    _heat(ax[0, 0], fig, m, title=title, xlabel=xlabel, ylabel=ylabel, center=center, cmap=cmap,
          annotate=annotate, xticks=xticks, yticks=yticks, origin_lower=origin_lower, vmin=vmin, vmax=vmax,
          fmt=fmt)
    return _save(fig, path)


def heatmaps(path, ms: Sequence, titles: Sequence[str], *, suptitle=None, xlabel=None, ylabel=None,
             center=False, cmap=None, annotate=False, ncols=None, xticks=None, yticks=None, vmin=None,
             vmax=None, fmt="{:.2f}", panel=3.6) -> str:
    """A grid of matrices with one title each (e.g. one per head or per neuron)."""
    n = len(ms)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = _figure(panel * ncols + 0.6, panel * nrows * 0.85 + 0.5, ncols, nrows)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _heat(ax, fig, ms[i], title=titles[i], xlabel=xlabel, ylabel=ylabel, center=center, cmap=cmap,
                  annotate=annotate, xticks=xticks, yticks=yticks, vmin=vmin, vmax=vmax, fmt=fmt)
        else:
            ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return _save(fig, path)


def scatter(path, x, y, *, c=None, title=None, xlabel=None, ylabel=None, clabel=None, annotate=None,
            diagonal=False, fits: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
            equal_aspect=False, width=6.0, height=5.0) -> str:
    """Points (coloured by `c`); `annotate` labels each point; `fits` {name: (x, y)} overlays lines;
    `diagonal` draws y = x."""
    fig, ax = _figure(width, height)
    ax = ax[0, 0]
    sc = ax.scatter(np.asarray(x), np.asarray(y), c=c, s=22, alpha=0.8, cmap="viridis" if c is not None else None)
    if c is not None:
        fig.colorbar(sc, ax=ax, label=clabel)
    if annotate is not None:
        for xi, yi, t in zip(np.asarray(x), np.asarray(y), annotate):
            ax.annotate(str(t), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for i, (name, (fx, fy)) in enumerate((fits or {}).items()):
        ax.plot(np.asarray(fx), np.asarray(fy), color=f"C{i + 1}", label=name)
    if diagonal:
        lo = min(np.min(x), np.min(y))
        hi = max(np.max(x), np.max(y))
        ax.plot([lo, hi], [lo, hi], "k:", linewidth=1, label="y = x")
    if fits or diagonal:
        ax.legend(fontsize=8)
    if equal_aspect:
        ax.set_aspect("equal", adjustable="datalim")
    _label(ax, title, xlabel, ylabel)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def histogram(path, values: Mapping[str, Sequence[float]] | Sequence[float], *, bins=40, title=None,
              xlabel=None, ylabel="count", width=6.5, height=4.0) -> str:
    """Histogram of one or several overlaid samples."""
    fig, ax = _figure(width, height)
    ax = ax[0, 0]
    groups = values if isinstance(values, Mapping) else {"": values}
    finite = [np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for v in groups.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite) if finite else [0.0], bins=bins)
    for name, v in zip(groups, finite):
        ax.hist(v, bins=edges, alpha=0.6, label=name or None)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    _label(ax, title, xlabel, ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def line_panels(path, x, panels: Sequence[Mapping[str, Sequence[float]]], titles: Sequence[str], *,
                xlabel=None, ylabel=None, ncols=2, markers=True, panel=(5.0, 3.2)) -> str:
    """Small multiples: one axes per mapping of curves."""
    n = len(panels)
    nrows = -(-n // ncols)
    fig, axes = _figure(panel[0] * ncols, panel[1] * nrows, ncols, nrows)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        for name, y in panels[i].items():
            ax.plot(np.asarray(x), np.asarray(y), marker="o" if markers else None, markersize=3, label=name)
        ax.axhline(0, color="k", linewidth=0.5)
        _label(ax, titles[i], xlabel, ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def scree(path, ratios: Sequence[float], *, title=None, max_components=20, width=7.0, height=4.0) -> str:
    """Explained-variance ratio per principal component (bars) and its running total (line)."""
    r = np.asarray(ratios, float)[:max_components]
    fig, ax = _figure(width, height)
    ax = ax[0, 0]
    k = np.arange(1, len(r) + 1)
    ax.bar(k, r, alpha=0.7, label="explained variance ratio")
    ax.plot(k, np.cumsum(r), "o--", color="C1", label="cumulative")
    ax.axhline(0.95, color="C2", linestyle=":", linewidth=1, label="95%")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(k)
    _label(ax, title, "principal component", "fraction of variance")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)

"""A self-contained HTML report of one run: one page a researcher opens in a browser.

A `Report` is an ordered list of sections; each section holds paragraphs,
figures (a PNG under the workdir, linked by a relative path, with a one-line
caption saying what it shows), tables and interactive attention views.
`Report.write(workdir)` renders it to `workdir/report.html`; its CSS, its one
script and the views' data are inline (nothing is fetched from a network), so
the workdir folder alone (page + figures/) is the whole report.

    rep = Report("Grokking: modular addition", intro="...", directory=wd.path)
    sec = rep.section("Training")
    sec.figure("loss_curves", plots.curves, "Train and test loss (log scale) ...",
               {"train": (epochs, loss)}, log_y=True)    # draws figures/loss_curves.png
    sec.table(["measure", "value"], [["final test accuracy", 1.0]])
    rep.write(wd.report_path)

`Section.figure(name, plot_fn, caption, *args, **kwargs)` calls
`plot_fn(<directory>/figures/<name>.png, *args, **kwargs)` and links the file,
so a study names each figure once; `Section.image(src, caption)` links a PNG
that already exists. `Section.attention(patterns, tokens, caption)` is the
interactive view: attention patterns [example, layer, head, query, key] over
each example's tokens; buttons pick the head, a click on a token (or a row)
the query position. Its data is JSON in the page and the script builds the view
with text nodes only, so a label is never markup.

`check_report(path)` parses a written page and verifies it is well formed, that
every image it references exists and that every script is inline (used by each
study's tests; tests/test_report_browser.py also opens the pages in Chromium).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
nav ol { columns: 2; }
figure { margin: 1.2em 0; padding: .5em; border: 1px solid #ddd; background: #fafafa; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: .92em; color: #333; margin-top: .4em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; }
p.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; }
figure.attention button { font: inherit; font-size: .9em; margin: 1px; padding: .1em .45em; cursor: pointer;
                          border: 1px solid #999; border-radius: 3px; background: #fff; }
figure.attention button[aria-pressed="true"] { background: #333; color: #fff; }
.attention-controls { display: flex; flex-wrap: wrap; gap: .5em 1.5em; align-items: center; }
.attention-heads th { background: none; border: none; font-weight: normal; padding-right: .4em; }
.attention-heads td { border: none; padding: 0; }
.attention-state { font-weight: bold; margin: .4em 0; }
.attention-tokens { margin: .4em 0; }
.attention-tokens button { font-family: ui-monospace, Menlo, Consolas, monospace; min-width: 1.6em; }
.attention-tokens button.query { outline: 3px solid #d95f02; }
table.attention-matrix { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .8em; }
table.attention-matrix td { width: 1.8em; height: 1.4em; padding: 0; border: 1px solid #eee; cursor: pointer; }
table.attention-matrix tr.query th:first-child { outline: 3px solid #d95f02; }
table.attention-matrix th { padding: 0 .3em; text-align: center; cursor: pointer; }
"""

# The attention views' script, once per page: it reads each view's JSON and builds the
# buttons, the token strip and the matrix with textContent only (labels are data, never markup).
_ATTENTION_JS = r"""
(function () {
  "use strict";
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function shade(node, w) {
    node.style.backgroundColor = "rgba(31, 90, 170, " + w + ")";
    node.style.color = w > 0.55 ? "#fff" : "#222";
    node.dataset.w = w.toFixed(4);
  }
  function setup(fig) {
    const data = JSON.parse(fig.querySelector("script.attention-data").textContent);
    const last = (e) => data.examples[e].tokens.length - 1;
    const state = {example: 0, layer: 0, head: 0, query: last(0)};
    const controls = fig.querySelector(".attention-controls");
    const readout = fig.querySelector(".attention-state");
    const view = fig.querySelector(".attention-view");
    const choose = (change) => { Object.assign(state, change); render(); };
    if (data.examples.length > 1) {
      const select = el("select");
      select.setAttribute("aria-label", "example");
      data.examples.forEach((ex, i) => { const o = el("option", null, ex.name); o.value = i; select.appendChild(o); });
      select.addEventListener("change", () => choose({example: +select.value, query: last(+select.value)}));
      controls.appendChild(select);
    }
    const heads = el("table", "attention-heads");
    const buttons = [];
    for (let l = 0; l < data.n_layers; l++) {
      const row = heads.insertRow();
      row.appendChild(el("th", null, "layer " + l));
      const cell = row.insertCell();
      for (let h = 0; h < data.n_heads; h++) {
        const b = el("button", "head", "head " + h);
        b.type = "button";
        b.dataset.layer = l;
        b.dataset.head = h;
        b.addEventListener("click", () => choose({layer: l, head: h}));
        cell.appendChild(b);
        buttons.push(b);
      }
    }
    controls.appendChild(heads);
    function render() {
      const ex = data.examples[state.example], w = ex.pattern[state.layer][state.head], q = state.query;
      Object.assign(fig.dataset, {example: state.example, layer: state.layer, head: state.head, query: q});
      buttons.forEach((b) => b.setAttribute("aria-pressed",
        String(+b.dataset.layer === state.layer && +b.dataset.head === state.head)));
      const strongest = w[q].indexOf(Math.max(...w[q]));
      readout.textContent = "layer " + state.layer + ", head " + state.head + ": query " + q + " \u201c" +
        ex.tokens[q] + "\u201d attends most to key " + strongest + " \u201c" + ex.tokens[strongest] +
        "\u201d (" + w[q][strongest].toFixed(3) + ")";
      const strip = el("div", "attention-tokens");
      ex.tokens.forEach((t, k) => {
        const b = el("button", k === q ? "query" : "", t);
        b.type = "button";
        b.dataset.pos = k;
        b.title = "position " + k + ": weight " + w[q][k].toFixed(3) + " from query " + q +
          "; click to make it the query";
        shade(b, w[q][k]);
        b.addEventListener("click", () => choose({query: k}));
        strip.appendChild(b);
      });
      const table = el("table", "attention-matrix");
      const head = table.createTHead().insertRow();
      head.appendChild(el("th", null, "query \\ key"));
      ex.tokens.forEach((t) => head.appendChild(el("th", null, t)));
      const body = table.createTBody();
      ex.tokens.forEach((t, r) => {
        const row = body.insertRow();
        row.className = r === q ? "query" : "";
        row.dataset.pos = r;
        row.appendChild(el("th", null, t));
        w[r].forEach((v, k) => {
          const c = row.insertCell();
          c.title = "query " + r + " \u2192 key " + k + ": " + v.toFixed(3);
          shade(c, v);
        });
        row.addEventListener("click", () => choose({query: r}));
      });
      view.replaceChildren(strip, table);
    }
    render();
  }
  document.querySelectorAll("figure.attention").forEach(setup);
})();
"""


def format_value(v: Any) -> str:
    """A number as a reader wants it: 4 significant digits, scientific when tiny or huge."""
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return format_value(v.item())
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass
class _Paragraph:
    text: str
    note: bool = False

    def render(self) -> str:
        cls = ' class="note"' if self.note else ""
        return f"<p{cls}>{html.escape(self.text)}</p>"


@dataclasses.dataclass
class _Figure:
    src: str
    caption: str

    def render(self) -> str:
        src, cap = html.escape(self.src, quote=True), html.escape(self.caption)
        return (f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(self.caption, quote=True)}">'
                f"</a><figcaption>{cap}</figcaption></figure>")


@dataclasses.dataclass
class _Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str | None

    def render(self) -> str:
        out = ["<table>"]
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
                   + "</tr></thead><tbody>")
        for row in self.rows:
            cells = "".join(
                f'<td class="num">{html.escape(format_value(c))}</td>' if _is_number(c)
                else f"<td>{html.escape(format_value(c))}</td>"
                for c in row)
            out.append(f"<tr>{cells}</tr>")
        out.append("</tbody></table>")
        return "".join(out)


def _script_json(value) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' (only ever inside strings) escaped."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")


@dataclasses.dataclass
class _Attention:
    patterns: np.ndarray  # [example, layer, head, query, key]
    tokens: list[list[str]]
    names: list[str]
    caption: str

    def render(self) -> str:
        examples = [{"name": name, "tokens": toks,
                     "pattern": np.round(p[:, :, :len(toks), :len(toks)], 4).tolist()}
                    for p, toks, name in zip(self.patterns, self.tokens, self.names)]
        data = {"n_layers": self.patterns.shape[1], "n_heads": self.patterns.shape[2], "examples": examples}
        return ('<figure class="attention">'
                f'<script type="application/json" class="attention-data">{_script_json(data)}</script>'
                '<div class="attention-controls"></div><p class="attention-state"></p>'
                '<div class="attention-view"></div><noscript><p class="note">This view needs JavaScript.</p>'
                f"</noscript><figcaption>{html.escape(self.caption)}</figcaption></figure>")


FIGURES = "figures"  # the figures' folder, relative to the report's directory


class Section:
    """One titled part of a report; add blocks in reading order."""

    def __init__(self, title: str, anchor: str, directory: Path | None = None):
        self.title = title
        self.anchor = anchor
        self.directory = directory
        self.blocks: list[Any] = []

    def text(self, text: str, *, note: bool = False) -> Section:
        """A paragraph (plain text; escaped). `note=True` highlights it."""
        self.blocks.append(_Paragraph(text, note))
        return self

    def figure(self, name: str, plot_fn, caption: str, *args, **kwargs) -> Section:
        """Draws figures/<name>.png with `plot_fn(path, *args, **kwargs)` (e.g. `plots.curves`)
        under the report's directory and adds it with a one-line caption."""
        if self.directory is None:
            raise ValueError(f"figure {name!r}: this report has no directory (Report(..., directory=...)); "
                             "use Section.image for a PNG that already exists")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"figure name must be a plain file stem, got {name!r}")
        if not caption.strip():
            raise ValueError(f"figure {name!r} needs a caption saying what it shows")
        (self.directory / FIGURES).mkdir(parents=True, exist_ok=True)
        plot_fn(self.directory / FIGURES / f"{name}.png", *args, **kwargs)
        return self.image(f"{FIGURES}/{name}.png", caption)

    def image(self, src: str, caption: str) -> Section:
        """An existing image at `src` (relative to the page) with a one-line caption."""
        if not caption.strip():
            raise ValueError(f"figure {src!r} needs a caption saying what it shows")
        if os.path.isabs(src) or src.startswith(".."):
            raise ValueError(f"figure paths must be relative to the report and inside its folder, got {src!r}")
        self.blocks.append(_Figure(src, caption))
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> Section:
        """A table; numbers are formatted by `format_value` and right-aligned."""
        for i, row in enumerate(rows):
            if len(row) != len(headers):
                raise ValueError(f"table {caption!r}: row {i} has {len(row)} cells for {len(headers)} headers")
        self.blocks.append(_Table(list(headers), [list(r) for r in rows], caption))
        return self

    def attention(self, patterns, tokens: Sequence[Sequence[str]], caption: str, *,
                  examples: Sequence[str] | None = None) -> Section:
        """An interactive view of attention patterns per head over each example's tokens.

        patterns: weights [example, layer, head, query, key] (e.g. every layer's
          `hook_pattern` stacked on axis 1). tokens: for each example, the labels of its
          positions; an example with fewer labels than positions shows only those
          (the rest is padding). examples: a name per example (default: its labels
          joined by spaces), for the example menu. The reader picks a layer and head
          with buttons and a query position by clicking its token or matrix row; the
          tokens are shaded by that query's weights and the matrix shows the whole head.
        """
        patterns = np.asarray(patterns, np.float32)
        if patterns.ndim != 5 or patterns.shape[3] != patterns.shape[4]:
            raise ValueError("attention patterns must be [example, layer, head, query, key] (self-attention over "
                             f"one token sequence: as many queries as keys), got shape {patterns.shape}")
        n, n_pos = patterns.shape[0], patterns.shape[3]
        if not caption.strip():
            raise ValueError("an attention view needs a caption saying what it shows")
        if len(tokens) != n:
            raise ValueError(f"attention view: {len(tokens)} token lists for {n} examples")
        tokens = [[str(t) for t in toks] for toks in tokens]
        for i, toks in enumerate(tokens):
            if not 1 <= len(toks) <= n_pos:
                raise ValueError(f"attention view: example {i} has {len(toks)} token labels for {n_pos} positions")
        if not np.all(np.isfinite(patterns)):
            raise ValueError("attention view: the patterns hold NaN or infinite weights")
        names = [" ".join(toks) for toks in tokens] if examples is None else [str(e) for e in examples]
        if len(names) != n:
            raise ValueError(f"attention view: {len(names)} example names for {n} examples")
        self.blocks.append(_Attention(patterns, tokens, names, caption))
        return self

    def key_values(self, items: Mapping[str, Any], caption: str | None = None,
                   headers: Sequence[str] = ("quantity", "value")) -> Section:
        """A two-column table from a mapping."""
        return self.table(headers, [[k, v] for k, v in items.items()], caption)

    def render(self) -> str:
        return (f'<section id="{self.anchor}"><h2>{html.escape(self.title)}</h2>'
                + "\n".join(b.render() for b in self.blocks) + "</section>")


class Report:
    """A titled page of sections, rendered to one self-contained HTML file."""

    def __init__(self, title: str, intro: str | None = None, directory: str | os.PathLike | None = None):
        """`directory`: where the page and its figures/ go (a run's workdir); needed by
        `Section.figure`."""
        self.title = title
        self.intro = intro
        self.directory = None if directory is None else Path(directory)
        self.sections: list[Section] = []

    def section(self, title: str, position: int | None = None) -> Section:
        """A new section, appended (or inserted at `position` in the page order)."""
        anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        taken = {s.anchor for s in self.sections}
        base, n = anchor, 2
        while anchor in taken:
            anchor, n = f"{base}-{n}", n + 1
        sec = Section(title, anchor, self.directory)
        self.sections.insert(len(self.sections) if position is None else position, sec)
        return sec

    def render(self) -> str:
        toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in self.sections)
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        body = "\n".join(s.render() for s in self.sections)
        views = any(isinstance(b, _Attention) for s in self.sections for b in s.blocks)
        script = f"<script>{_ATTENTION_JS}</script>" if views else ""
        return ("<!DOCTYPE html>\n"
                f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(self.title)}</h1>{intro}"
                f"<nav><ol>{toc}</ol></nav>\n{body}\n{script}</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        """Render to `path` (its figures must already exist; checked) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        check_report(path)
        return path


# --------------------------------------------------------------------------- checking

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            if not a.get("src"):
                self.errors.append(f"line {self.getpos()[0]}: <img> without src")
            else:
                self.images.append(a["src"])
            if not a.get("alt"):
                self.errors.append(f"line {self.getpos()[0]}: <img src={a.get('src')!r}> without alt text")
        if tag == "script" and a.get("src"):
            self.errors.append(f"line {self.getpos()[0]}: <script src={a['src']!r}>: scripts must be inline")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if "id" in a:
            self.ids.append(a["id"])
        if tag not in _VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            open_tag = self.stack[-1][0] if self.stack else None
            self.errors.append(f"line {self.getpos()[0]}: </{tag}> closes <{open_tag}>")
            return
        self.stack.pop()


@dataclasses.dataclass(frozen=True)
class ReportCheck:
    """What `check_report` found: the images and links the page references."""

    images: tuple[str, ...]
    links: tuple[str, ...]


class ReportError(ValueError):
    """A report page is malformed or references a missing file."""


def check_report(path: str | os.PathLike) -> ReportCheck:
    """Parse a report page; raise `ReportError` unless it is well formed (every
    non-void tag closed in order, a <title>, alt text on images, scripts inline)
    and every relative image or link target exists next to it."""
    path = Path(path)
    parser = _Checker()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    errors = list(parser.errors)
    errors += [f"<{t}> opened at line {pos[0]} is never closed" for t, pos in parser.stack]
    if "<title>" not in path.read_text(encoding="utf-8"):
        errors.append("no <title>")
    ids = set(parser.ids)
    for ref in parser.images + parser.links:
        if ref.startswith("#"):
            if ref[1:] not in ids:
                errors.append(f"link to missing anchor {ref}")
        elif "://" not in ref and not ref.startswith("data:") and not (path.parent / ref).is_file():
            errors.append(f"references {ref}, which does not exist under {path.parent}")
    if errors:
        raise ReportError(f"{path}: " + "; ".join(errors))
    return ReportCheck(tuple(parser.images), tuple(parser.links))

"""Tests for toymech.report (and the plots it embeds): a small report renders to a
well-formed page whose every image exists, the attention view's data is inline and its labels
stay text; optionally Chromium renders it (tests/test_report_browser.py drives it)."""

import html.parser
import json
import shutil
import subprocess

import numpy as np
import pytest

from toymech import plots
from toymech.report import Report, ReportError, check_report, format_value


class _Collect(html.parser.HTMLParser):
    """Independent check with the standard parser: tags, images, text."""

    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def _small_report(tmp_path):
    figs = tmp_path / "figures"
    x = np.arange(10)
    plots.curves(figs / "curve.png", {"train": (x, np.exp(-x)), "test": (x, np.exp(-x / 3))}, log_y=True,
                 vlines={"phase": 4})
    plots.heatmap(figs / "heat.png", np.arange(12.0).reshape(3, 4), center=True, annotate=True)
    rep = Report("A <small> report", intro="Tests & checks.")
    sec = rep.section("Training")
    sec.image("figures/curve.png", "Loss curves <log>")
    sec.text("Plain text with <script>alert(1)</script> inside.", note=True)
    sec.table(["quantity", "value"], [["accuracy", 0.99871], ["tiny", 1.5e-9], ["epochs", 3000], ["none", None]],
              caption="Numbers")
    rep.section("Training").image("figures/heat.png", "A heatmap")  # same title -> distinct anchor
    return rep


def test_report_is_well_formed_and_every_image_exists(tmp_path):
    path = _small_report(tmp_path).write(tmp_path / "report.html")
    found = check_report(path)
    assert set(found.images) == {"figures/curve.png", "figures/heat.png"}
    parser = _Collect()
    parser.feed(path.read_text())
    assert parser.tags.count("img") == 2 and parser.tags.count("section") == 2
    for img in parser.imgs:
        assert (tmp_path / img["src"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert img["alt"]
    text = "".join(parser.text)
    assert "<script>alert(1)</script>" in text  # escaped, so it is text, not a tag
    assert "script" not in parser.tags
    assert "0.9987" in text and "1.500e-09" in text and "3000" in text
    assert '#training-2' in path.read_text()  # the table of contents links both sections


def test_missing_image_and_broken_markup_are_reported(tmp_path):
    rep = _small_report(tmp_path)
    path = rep.write(tmp_path / "report.html")
    (tmp_path / "figures" / "heat.png").unlink()
    with pytest.raises(ReportError, match="figures/heat.png"):
        check_report(path)
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><head><title>x</title></head><body><div><p>text</div></body></html>")
    with pytest.raises(ReportError, match="closes"):
        check_report(broken)


def test_bad_figures_and_tables_are_refused():
    sec = Report("r").section("s")
    with pytest.raises(ValueError, match="caption"):
        sec.image("figures/a.png", "  ")
    with pytest.raises(ValueError, match="relative"):
        sec.image("/abs/a.png", "caption")
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        sec.table(["a", "b"], [[1]])


def test_figure_draws_into_the_reports_directory_and_links_it(tmp_path):
    calls = []

    def plot(path, values, *, title):  # a plot function: writes `path`, like toymech.plots
        calls.append((path, values, title))
        plots.curves(path, {"v": (np.arange(len(values)), np.asarray(values))}, title=title)

    rep = Report("r", directory=tmp_path)
    rep.section("s").figure("curve", plot, "A curve", [3.0, 1.0, 2.0], title="t")
    assert calls == [(tmp_path / "figures" / "curve.png", [3.0, 1.0, 2.0], "t")]
    assert check_report(rep.write(tmp_path / "report.html")).images == ("figures/curve.png",)
    with pytest.raises(ValueError, match="plain file stem"):
        rep.section("s").figure("../up", plot, "caption", [1.0], title="t")
    with pytest.raises(ValueError, match="caption"):
        rep.section("s").figure("empty", plot, " ", [1.0], title="t")
    with pytest.raises(ValueError, match="no directory"):
        Report("r").section("s").figure("curve", plot, "caption", [1.0], title="t")
    assert len(calls) == 1  # refused before drawing


class _Scripts(html.parser.HTMLParser):
    """The contents of every <script>, with its attributes."""

    def __init__(self):
        super().__init__()
        self.scripts, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = (dict(attrs), [])

    def handle_data(self, data):
        if self._open is not None:
            self._open[1].append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self.scripts.append((self._open[0], "".join(self._open[1])))
            self._open = None


HOSTILE = ["</script><img src=x onerror=alert(1)>", "<b>&amp;</b>", '"', "<!--"]


def test_attention_view_is_inline_data_and_labels_stay_text(tmp_path):
    patterns = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 1, 2, 4)).astype(np.float32)  # [2, 1, 2, 4, 4]
    rep = Report("r")
    rep.section("View").attention(patterns, [HOSTILE, ["x", "y", "z"]], "Caption <with> & markup")
    path = rep.write(tmp_path / "report.html")
    page = path.read_text()
    parser = _Collect()
    parser.feed(page)
    assert {"img", "b"}.isdisjoint(parser.tags) and parser.tags.count("script") == 2  # the data and the code
    assert "Caption <with> & markup" in "".join(parser.text)
    scripts = _Scripts()
    scripts.feed(page)
    (data_attrs, data), (code_attrs, code) = scripts.scripts
    assert data_attrs == {"type": "application/json", "class": "attention-data"} and code_attrs == {}
    assert "<" not in data and "src" not in code_attrs
    view = json.loads(data)
    assert (view["n_layers"], view["n_heads"]) == (1, 2)
    first, second = view["examples"]
    assert first["tokens"] == HOSTILE and second["tokens"] == ["x", "y", "z"]
    assert first["name"] == " ".join(HOSTILE) and second["name"] == "x y z"  # default names
    np.testing.assert_allclose(first["pattern"], patterns[0], atol=5e-5)
    np.testing.assert_allclose(second["pattern"], patterns[1][:, :, :3, :3], atol=5e-5)  # padding left out
    assert "<script" not in _small_report(tmp_path).render()  # no view, no script


def test_bad_attention_views_are_refused():
    sec = Report("r").section("s")
    ok = np.full((1, 1, 1, 2, 2), 0.5)
    with pytest.raises(ValueError, match=r"\[example, layer, head, query, key\] .*, got shape \(1, 2, 2\)"):
        sec.attention(ok[0, 0], [["a", "b"]], "c")
    with pytest.raises(ValueError, match=r"as many queries as keys\), got shape \(1, 1, 1, 2, 3\)"):
        sec.attention(np.full((1, 1, 1, 2, 3), 1 / 3), [["a", "b"]], "c")
    with pytest.raises(ValueError, match="2 token lists for 1 examples"):
        sec.attention(ok, [["a"], ["b"]], "c")
    with pytest.raises(ValueError, match="example 0 has 3 token labels for 2 positions"):
        sec.attention(ok, [["a", "b", "c"]], "c")
    with pytest.raises(ValueError, match="NaN"):
        sec.attention(np.full_like(ok, np.nan), [["a", "b"]], "c")
    with pytest.raises(ValueError, match="caption"):
        sec.attention(ok, [["a", "b"]], " ")
    with pytest.raises(ValueError, match="2 example names for 1 examples"):
        sec.attention(ok, [["a", "b"]], "c", examples=["one", "two"])
    assert sec.blocks == []


def test_an_external_script_is_reported(tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title><script src="https://cdn.example/x.js"></script>'
                    "</head><body></body></html>")
    with pytest.raises(ReportError, match="scripts must be inline"):
        check_report(page)


def test_format_value():
    assert format_value(0.123456) == "0.1235"
    assert format_value(2.5e-7) == "2.500e-07"
    assert format_value(123456.0) == "1.235e+05"
    assert format_value([1, 0.5]) == "[1, 0.5]"
    assert format_value(None) == "—"
    assert format_value(np.float32(0.25)) == "0.25"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian 'chromium' not installed (apt-get install chromium)")
def test_chromium_renders_a_screenshot(tmp_path):
    path = _small_report(tmp_path).write(tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,1400",
                    f"--screenshot={shot}", path.as_uri()], check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread
    img = imread(shot)
    assert img.shape[0] == 1400 and img.shape[1] == 1000
    assert img[..., :3].std() > 0.05  # not a blank page: text and figures rendered

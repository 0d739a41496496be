"""The report is a web page: open it in headless Chromium (tests/browser.py) and check what a
reader sees. Every quick study's report.html (the session's quick runs, tests/conftest.py)
loads with no console errors, shows every image, and its attention view answers clicks; a
synthetic report checks the view's numbers and that hostile labels stay text.

Skips (with the command to run) only where no Chromium is installed."""

import json

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from toymech.report import Report

from browser import broken_images, chromium_driver, console_errors, open_page, remote_references
from conftest import QUICK_STUDIES


@pytest.fixture(scope="module")
def driver():
    d = chromium_driver()
    yield d
    d.quit()


@pytest.fixture(params=QUICK_STUDIES)
def quick_report(request):
    """report.html of the session's quick run of each study."""
    return request.getfixturevalue(f"{request.param}_quick").workdir / "report.html"


def _state(view) -> dict:
    """What the view shows now: the selection (from its data attributes), the readout line,
    which head button is pressed and the token strip's weights."""
    pressed = [(b.get_attribute("data-layer"), b.get_attribute("data-head"))
               for b in view.find_elements(By.CSS_SELECTOR, "button.head[aria-pressed=true]")]
    tokens = view.find_elements(By.CSS_SELECTOR, ".attention-tokens button")
    return {"selected": {k: int(view.get_attribute(f"data-{k}")) for k in ("example", "layer", "head", "query")},
            "readout": view.find_element(By.CLASS_NAME, "attention-state").text, "pressed": pressed,
            "labels": [t.text for t in tokens], "weights": [float(t.get_attribute("data-w")) for t in tokens],
            "query_token": [int(t.get_attribute("data-pos")) for t in tokens if "query" in t.get_attribute("class")]}


def _data(view) -> dict:
    """The view's inline JSON, as the page's script reads it."""
    return json.loads(view.find_element(By.CSS_SELECTOR, "script.attention-data").get_attribute("textContent"))


def test_every_quick_report_loads_cleanly_and_its_attention_view_answers_clicks(driver, quick_report):
    errors = open_page(driver, quick_report)
    assert errors == [], f"{quick_report}: console errors {errors}"
    assert driver.execute_script("return document.images.length") > 0
    assert broken_images(driver) == [], f"{quick_report}: images that did not load"
    assert remote_references(driver) == []  # self-contained: nothing to fetch from a network
    views = driver.find_elements(By.CSS_SELECTOR, "figure.attention")
    assert len(views) == 1
    view = views[0]
    data = _data(view)
    before = _state(view)
    view.find_elements(By.CSS_SELECTOR, "button.head")[-1].click()  # the last layer's last head
    view.find_elements(By.CSS_SELECTOR, ".attention-tokens button")[0].click()  # query 0
    after = _state(view)
    last_layer, last_head = data["n_layers"] - 1, data["n_heads"] - 1
    assert (last_layer, last_head) != (0, 0), "a view with one head cannot show a change of head"
    n = len(data["examples"][0]["tokens"])
    assert before["selected"] == {"example": 0, "layer": 0, "head": 0, "query": n - 1}
    assert before["pressed"] == [("0", "0")] and before["query_token"] == [n - 1]
    assert after["selected"] == {"example": 0, "layer": last_layer, "head": last_head, "query": 0}
    assert after["pressed"] == [(str(last_layer), str(last_head))] and after["query_token"] == [0]
    assert after["readout"].startswith(f"layer {last_layer}, head {last_head}: query 0 ")
    assert after["labels"] == before["labels"] == data["examples"][0]["tokens"]
    np.testing.assert_allclose(after["weights"], data["examples"][0]["pattern"][last_layer][last_head][0], atol=1e-4)
    assert sum(after["weights"]) == pytest.approx(1, abs=1e-3)  # a query's weights over the keys
    assert console_errors(driver) == []  # the clicks raised nothing either


HOSTILE = ['</script><img src=x onerror="document.title=1">', "<b>bold</b>", "a & b", '"q"']


@pytest.fixture
def synthetic_page(tmp_path):
    """A report with one view: 2 examples (the second with 2 of 4 positions padding), 2 layers,
    3 heads, causal patterns from a fixed seed; hostile labels and example names."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 2, 3, 4, 4)) * 2
    scores = np.where(np.tril(np.ones((4, 4), bool)), scores, -np.inf)
    patterns = np.exp(scores - scores.max(-1, keepdims=True))
    patterns /= patterns.sum(-1, keepdims=True)
    rep = Report("Synthetic <attention>")
    rep.section("View").attention(patterns, [HOSTILE, ["x", "y"]], "A <caption> & more",
                                  examples=["<i>first</i>", "second"])
    return patterns, rep.write(tmp_path / "report.html")


def test_the_attention_view_shows_the_selected_head_and_query(driver, synthetic_page):
    patterns, path = synthetic_page
    assert open_page(driver, path) == []
    assert driver.title == "Synthetic <attention>"  # no label ran as a script
    assert driver.find_elements(By.TAG_NAME, "img") == [] and driver.find_elements(By.TAG_NAME, "b") == []
    view = driver.find_element(By.CSS_SELECTOR, "figure.attention")
    assert view.find_element(By.TAG_NAME, "figcaption").text == "A <caption> & more"
    assert [o.text for o in view.find_elements(By.TAG_NAME, "option")] == ["<i>first</i>", "second"]
    assert len(view.find_elements(By.CSS_SELECTOR, "button.head")) == 6

    state = _state(view)
    assert state["labels"] == HOSTILE
    assert state["selected"] == {"example": 0, "layer": 0, "head": 0, "query": 3}
    np.testing.assert_allclose(state["weights"], patterns[0, 0, 0, 3], atol=1e-4)

    view.find_element(By.CSS_SELECTOR, "button.head[data-layer='1'][data-head='2']").click()
    view.find_elements(By.CSS_SELECTOR, ".attention-matrix tbody tr")[1].click()  # query 1 by its row
    state = _state(view)
    assert state["selected"] == {"example": 0, "layer": 1, "head": 2, "query": 1}
    np.testing.assert_allclose(state["weights"], patterns[0, 1, 2, 1], atol=1e-4)
    assert state["weights"][2:] == [0, 0]  # causal: query 1 sees keys 0 and 1 only
    strongest = int(np.argmax(patterns[0, 1, 2, 1]))
    words, weight = state["readout"].rsplit(" (", 1)
    assert words == (f"layer 1, head 2: query 1 \u201c{HOSTILE[1]}\u201d attends most to key {strongest} "
                     f"\u201c{HOSTILE[strongest]}\u201d")
    assert float(weight.rstrip(")")) == pytest.approx(patterns[0, 1, 2, 1, strongest], abs=1e-3)
    cells = view.find_elements(By.CSS_SELECTOR, ".attention-matrix tbody tr")[3].find_elements(By.TAG_NAME, "td")
    np.testing.assert_allclose([float(c.get_attribute("data-w")) for c in cells], patterns[0, 1, 2, 3], atol=1e-4)

    Select(view.find_element(By.TAG_NAME, "select")).select_by_value("1")  # the padded example
    state = _state(view)
    assert state["labels"] == ["x", "y"]
    assert state["selected"] == {"example": 1, "layer": 1, "head": 2, "query": 1}
    np.testing.assert_allclose(state["weights"], patterns[1, 1, 2, 1, :2], atol=1e-4)
    assert len(view.find_elements(By.CSS_SELECTOR, ".attention-matrix tbody tr")) == 2
    assert console_errors(driver) == []

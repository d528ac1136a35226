"""The explorer in a real browser: headless Chromium (Debian's chromium + chromium-driver) under Selenium
opens `aelab explore`, hovers a point, taps two, drags a slider, and reads the images back.

    .venv/bin/python -m pytest tests/test_explore_browser.py -q

Skips with the reason where Chromium, chromedriver or selenium is missing (.ci/run installs them).
The README's screenshot is taken by this same code path:

    AELAB_EXPLORE_RUN=runs/vae-fmnist AELAB_EXPLORE_SCREENSHOT=docs/explore.png \\
        .venv/bin/python -m pytest tests/test_explore_browser.py -q -k given_run
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import require  # noqa: E402

require("bokeh", extra="explore")
from aelab.explore import browser  # noqa: E402

if browser.missing():
    pytest.skip(browser.missing(), allow_module_level=True)

from aelab.explore.space import load_space  # noqa: E402
from aelab.runs import train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from conftest import write_blobs_npz

    root = tmp_path_factory.mktemp("browser")
    fast = [f"data={write_blobs_npz(root)}", f"out_dir={root}", "train.epochs=10", "train.batch_size=32", "eval.tsne=false",
            "train.progress=off"]  # 60 steps: enough for the VAE to use its code (sliders then change pixels)
    return {m: train(overrides=[*fast, f"model={m}", f"name={m}"]) for m in ("conv", "vae")}


def session(run: Path, screenshot: str | None = None) -> dict:
    """Everything a person does on the page, with what the page showed back: the test's assertions and
    the README screenshot both come from here."""
    space, _ = load_space(run)  # the same cache the server reads: the expected images
    hover_i, a, b = browser.isolated(space.maps["pca"], 3)
    out = {"space": space, "a": a, "b": b, "hover_i": hover_i}
    with browser.Served(run) as served, browser.chromium() as driver:
        page = browser.Page(driver, served.url)
        out["load_ms"] = page.open()
        out["resources"] = page.js("return performance.getEntriesByType('resource').map(e => e.name);")
        out["hover"] = page.hover(hover_i)
        page.tap(a)
        page.tap(b)
        steps = int(page.value("steps"))
        out["steps"] = steps
        out["morph"] = page.morph(a, b, steps * len(space.morph(a, b, 2)))
        before = page.images("edited")[0]["src"]
        out["edited_before"] = browser.decode_png(before)
        page.drag("slider0", 70)
        out["slider"] = page.value("slider0")
        page.wait("return deep(document, 'img[data-role=edited]').some(e => e.src != arguments[0]);", 20, before)
        out["edited_after"] = browser.decode_png(page.images("edited")[0]["src"])
        if screenshot:  # with the hover tooltip showing, as a person would see it
            page.hover(hover_i)
            out["screenshot"] = page.screenshot(screenshot)
    return out


def check(out: dict) -> None:
    space, a, b, steps = out["space"], out["a"], out["b"], out["steps"]
    origin = re.match(r"http://127\.0\.0\.1:\d+", out["resources"][0]).group(0) if out["resources"] else ""
    assert all(r.startswith(origin) or r.startswith("data:") for r in out["resources"]), out["resources"]

    # hover: the tooltip loaded test image i, pixel for pixel
    shown = space.images[out["hover_i"]]
    np.testing.assert_array_equal(out["hover"].reshape(shown.shape), shown)

    # morph: `steps` images per path, from A's decoded code to B's
    paths = list(space.morph(a, b, steps))
    assert len(out["morph"]) == steps * len(paths)
    assert [m["path"] for m in out["morph"]] == [p for p in paths for _ in range(steps)]
    first, last = (browser.decode_png(out["morph"][k]["src"]) for k in (0, steps - 1))
    ends = space.decode(space.codes[[a, b]])
    np.testing.assert_array_equal(first.reshape(ends[0].shape), ends[0])
    np.testing.assert_array_equal(last.reshape(ends[1].shape), ends[1])

    # the slider moved, and the decoded image's pixels changed with it
    assert out["slider"] > 0
    assert not np.array_equal(out["edited_before"], out["edited_after"])


@pytest.mark.parametrize("model", ["conv", "vae"])
def test_hover_tap_morph_slider_in_chromium(tiny_runs, model):
    out = session(tiny_runs[model])
    check(out)
    assert len(out["morph"]) == out["steps"] * (2 if model == "vae" else 1)  # the VAE adds the spherical path


@pytest.mark.skipif(not os.environ.get("AELAB_EXPLORE_RUN"), reason="set AELAB_EXPLORE_RUN=RUN (README screenshot)")
def test_given_run_and_screenshot():
    """A run of your own (e.g. the README's Fashion-MNIST VAE), screenshot when AELAB_EXPLORE_SCREENSHOT is set."""
    out = session(Path(os.environ["AELAB_EXPLORE_RUN"]), os.environ.get("AELAB_EXPLORE_SCREENSHOT"))
    check(out)
    print(f"page load {out['load_ms']:.0f} ms for {len(out['space'].codes)} points")

"""Drive the explorer in headless Chromium (Selenium with the system chromedriver; no driver download).

Used by the browser test, the README screenshot and the load-time benchmark, so all three take the
same path through the page: load it, hover a point, tap points, drag a slider, read the images back.

    from aelab.explore.browser import Page, chromium
    with chromium() as driver:
        page = Page(driver, "http://127.0.0.1:5006/")
        page.open(); page.hover(12); page.tap(3); page.tap(40); page.drag("slider0", 60)
        page.screenshot("docs/explore.png")

Bokeh 3 draws its widgets inside shadow roots, so elements are found through BokehJS's own view
index (`Bokeh.index`) or by a search that walks the shadow roots.
"""
from __future__ import annotations

import base64
import contextlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
# Flags for a closed network: without the background ones Chromium keeps trying to reach Google.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1200")

MOVE_MS = 250  # each pointer move's duration (Selenium's default; 50 ms moves made taps miss in headless Chromium)

# JavaScript helpers, defined on each call: the view of a named Bokeh model; a search through shadow roots.
JS = """
const model = (name) => Bokeh.documents[0].get_model_by_name(name);
const view = (name) => Bokeh.index.find_one(model(name));
const deep = (root, sel) => {
  let out = [...root.querySelectorAll(sel)];
  for (const el of root.querySelectorAll('*')) if (el.shadowRoot) out = out.concat(deep(el.shadowRoot, sel));
  return out;
};
"""


def missing() -> str:
    """Why the browser cannot run here ("" when it can): a reason for pytest.skip."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'aelab[test]')"
    if not any(shutil.which(c) for c in CHROMIUM):
        return "no Chromium (apt-get install chromium chromium-driver)"
    if not any(shutil.which(d) or Path(d).is_file() for d in DRIVERS):
        return "no chromedriver (apt-get install chromium-driver)"
    return ""


@contextlib.contextmanager
def chromium() -> Iterator["object"]:
    """A headless Chromium under Selenium with a fresh profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(c) for c in CHROMIUM if shutil.which(c))
    profile = tempfile.mkdtemp(prefix="aelab-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver_path = next(shutil.which(d) or d for d in DRIVERS if shutil.which(d) or Path(d).is_file())
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)  # no selenium-manager
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Served:
    """`aelab explore RUN --port 0` in a subprocess (the user's path); its URL from the line it prints."""

    def __init__(self, run: str | Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "aelab", "explore", str(run), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if found := re.search(r"http://127\.0\.0\.1:\d+/", line):
                self.url = found.group(0)
                return
        raise RuntimeError(f"aelab explore did not start: {self.proc.stderr.read().strip()}")

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def isolated(xy: np.ndarray, k: int) -> list[int]:
    """The k map points (xy (N, 2)) farthest from their nearest neighbour: a pointer there hits only them."""
    from scipy.spatial import cKDTree

    p = (xy - xy.min(0)) / (xy.max(0) - xy.min(0) + 1e-9)  # the plot's aspect: both axes span the frame
    nearest = cKDTree(p).query(p, k=2)[0][:, 1]
    return [int(i) for i in np.argsort(-nearest, kind="stable")[:k]]


def decode_png(src: str) -> np.ndarray:
    """A data: URI PNG -> uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


class Page:
    """The explorer's page in a browser, with the actions a person takes on it."""

    def __init__(self, driver, url: str):
        self.d, self.url = driver, url

    def js(self, body: str, *args):
        return self.d.execute_script(JS + body, *args)

    def wait(self, body: str, timeout: float = 20.0, *args):
        """Poll the JavaScript expression `body` (a `return ...`) until it is truthy; return its value."""
        end = time.monotonic() + timeout
        while True:
            try:
                value = self.js(body, *args)
            except Exception:  # BokehJS not there yet
                value = None
            if value or time.monotonic() > end:
                if not value:
                    raise TimeoutError(f"the page never satisfied: {body.strip()[:200]}")
                return value
            time.sleep(0.02)

    def open(self) -> float:
        """Load the page; the milliseconds from navigation start until the map is drawn."""
        self.d.get(self.url)
        return float(self.wait("const v = Bokeh.documents.length && view('map');"
                               "return v && v.has_finished() ? performance.now() : 0;"))

    def point(self, i: int) -> tuple[float, float]:
        """Viewport coordinates (CSS px) of map point i."""
        return tuple(self.js("""
            const v = view('map'), src = v.model.renderers[0].data_source.data;
            const r = v.canvas_view.el.getBoundingClientRect();
            return [r.left + v.frame.x_scale.compute(src.x[arguments[0]]),
                    r.top + v.frame.y_scale.compute(src.y[arguments[0]])];""", i))

    def _pointer(self, i: int, click: bool) -> None:
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        x, y = (int(round(v)) for v in self.point(i))
        actions = ActionBuilder(self.d, duration=MOVE_MS)
        actions.pointer_action.move_to_location(x - 3, y)  # arrive with a move, as a hand does
        actions.pointer_action.move_to_location(x, y)
        if click:
            actions.pointer_action.click()
        actions.perform()

    def hover(self, i: int) -> np.ndarray:
        """Point at map point i; the tooltip's image, once the browser has loaded it, as an array."""
        self._pointer(i, click=False)
        src = self.wait(f"""const im = deep(document, 'img[data-role=hover]')
                             .filter(e => e.src.endsWith('/img/{i}.png') && e.complete && e.naturalWidth > 0);
                           return im.length ? im[0].src : '';""")
        from PIL import Image
        import urllib.request

        with urllib.request.urlopen(src, timeout=10) as r:  # the same URL the browser showed
            return np.asarray(Image.open(io.BytesIO(r.read())))

    def tap(self, i: int) -> None:
        """Click map point i (it becomes the chosen point) and wait until the server has answered."""
        self._pointer(i, click=True)
        self.wait(f"return deep(document, 'img[data-role=original][data-index=\"{i}\"]').length > 0;")

    def images(self, role: str) -> list[dict]:
        """The <img data-role=role> on the page, drawn by the browser: data attributes and src."""
        return self.js(f"""return deep(document, 'img[data-role={role}]').filter(e => e.complete && e.naturalWidth)
                           .map(e => ({{src: e.src, ...e.dataset}}));""")

    def morph(self, a: int, b: int, count: int) -> list[dict]:
        """Wait for the morph strip from a to b with `count` images; return them."""
        self.wait(f"""return deep(document, '[data-from="{a}"][data-to="{b}"]').length > 0 &&
                      deep(document, 'img[data-role=morph]').filter(e => e.complete && e.naturalWidth).length
                      == {count};""")
        return self.images("morph")

    def drag(self, name: str, dx: int) -> None:
        """Drag the handle of the slider named `name` by dx CSS pixels."""
        from selenium.webdriver.common.action_chains import ActionChains

        handle = self.js("return view(arguments[0]).shadow_el.querySelector('.noUi-handle');", name)
        chain = ActionChains(self.d, duration=MOVE_MS).click_and_hold(handle)
        chain.move_by_offset(dx // 2, 0).move_by_offset(dx - dx // 2, 0).release().perform()

    def value(self, name: str) -> float:
        return float(self.js("return model(arguments[0]).value;", name))

    def screenshot(self, path: str | Path) -> Path:
        """The page's content as a PNG at `path` (palette-quantised so a README copy stays small)."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = self.js("const r = document.querySelector('[data-root-id]').firstElementChild"
                       ".getBoundingClientRect(); return [Math.ceil(r.right) + 8, Math.ceil(r.bottom) + 8];")
        shot = Image.open(io.BytesIO(self.d.get_screenshot_as_png())).convert("RGB")
        shot = shot.crop((0, 0, min(w, shot.width), min(h, shot.height)))
        shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return path

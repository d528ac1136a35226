"""How fast `aelab explore` is: building the map cache, starting, loading the page in headless
Chromium, and answering a tap (morph strip) and a slider drag (decoded image), on a real run.

    aelab train data=fashion-mnist model=vae name=vae-fmnist train.epochs=6
    python benchmarks/bench_explore.py runs/vae-fmnist --write-results

The target (issue 16): the page loads in under 2 s for a 10,000-point map on 2 CPU cores. The page
load is timed by the browser itself (performance.now() when the map has drawn, from navigation start).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, machine, table, write_section  # noqa: E402

from aelab.explore import browser  # noqa: E402
from aelab.explore.space import CACHE, load_space  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    run = Path(args.run)

    (run / CACHE).unlink(missing_ok=True)
    (space, computed), cold = timed(lambda: load_space(run, args.points))
    assert computed
    (_, computed), warm = timed(lambda: load_space(run, args.points))
    assert not computed
    a, b = browser.isolated(space.maps["pca"], 2)
    loads, taps, drags = [], [], []
    with browser.Served(run) as served, browser.chromium() as driver:
        page = browser.Page(driver, served.url)
        for r in range(args.repeats):
            loads.append(page.open())  # a fresh session (document) each time
            t0 = time.perf_counter()
            page.tap(a), page.tap(b)
            steps = int(page.value("steps"))
            page.morph(a, b, steps * len(space.morph(a, b, 2)))
            taps.append((time.perf_counter() - t0) / 2 * 1000)
            before = page.images("edited")[0]["src"]
            t0 = time.perf_counter()
            page.drag("slider0", 40 + 10 * r)
            page.wait("return deep(document, 'img[data-role=edited]').some(e => e.src != arguments[0]);", 20, before)
            drags.append((time.perf_counter() - t0) * 1000)
    med, move = statistics.median, browser.MOVE_MS
    rows = [["map cache built (encode + PCA), s", cold], ["map cache read, s", warm],
            ["page load to map drawn, ms (browser's clock)", med(loads)],
            [f"tap -> chosen point + morph strip shown, ms (incl. two {move} ms pointer moves)", med(taps)],
            [f"slider drag -> decoded image shown, ms (incl. two {move} ms pointer moves)", med(drags)]]
    verdict = "met" if med(loads) < 2000 else "missed"
    md = (f"## aelab explore, {len(space.codes)}-point map ({space.model.name}, {space.images.shape[1:]})\n\n"
          f"Machine: {machine('cpu')}  \nCommand: `{command()}`  \nMedians of {args.repeats} page loads "
          f"in headless Chromium on the same machine as the server.\n\n"
          + table(["measure", "value"], rows)
          + f"\n\nTarget: page load under 2000 ms for a 10,000-point map: {verdict} ({med(loads):.0f} ms; "
            f"all loads: {', '.join(f'{x:.0f}' for x in loads)} ms).")
    print(md)
    if args.write_results:
        write_section("explore", md)


if __name__ == "__main__":
    main()

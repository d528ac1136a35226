"""`aelab explore RUN`: look at and poke the latent space of a finished run in the browser.

    aelab explore runs/conv-fashion-mnist --port 5006       # then open http://127.0.0.1:5006/
    aelab explore RUN --allow-host mybox.local              # also answer http://mybox.local:5006/

The map shows the test codes in 2-D (PCA; UMAP when umap-learn is installed; t-SNE with --maps
pca,tsne), coloured by class, the image under the pointer on hover. Tap a point to choose it: sliders
(one per code dimension, or per principal direction of wide codes) and attribute vectors (class A ->
class B, "ink") edit its code, decoded live by the run's model; the strip morphs from the point chosen
before to it (straight line; also the spherical path for a VAE). A model without a decoder of its own
gets the map only. Needs the explore extra: pip install 'aelab[explore]' (Bokeh; it serves BokehJS
from its wheel, so the page works offline).

    space.py   codes, maps (cached in RUN/explore.npz), morphs and edits: numpy, no Bokeh
    app.py     the Bokeh document of one browser session and its callbacks
    server.py  the Bokeh server on 127.0.0.1 plus /img/<i>.png for the hover images
    browser.py drive the page in headless Chromium (the browser test, the screenshot, the benchmark)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..errors import ConfigError


def explore(run_dir: str | Path, port: int = 5006, points: int = 10_000, maps: list[str] | None = None,
            echo: Callable[[str], None] = print, allow_hosts: list[str] = ()) -> None:
    """Load the run's space (codes and maps cached in the run folder) and serve it until Ctrl-C, to
    requests addressed to 127.0.0.1 or localhost (and `allow_hosts`) only."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise ConfigError("aelab explore needs the explore extra: pip install 'aelab[explore]'") from None
    from .server import allowed_hosts, check_port, serve
    from .space import CACHE, load_space

    allowed_hosts(port, list(allow_hosts))  # a bad --allow-host or a busy port fails before the codes are computed
    check_port(port)

    t0 = time.perf_counter()
    space, computed = load_space(run_dir, points, maps)
    how = "computed and cached in" if computed else "read from"
    echo(f"{len(space.codes)} test images, maps {', '.join(space.maps)}: {how} {Path(run_dir) / CACHE} "
         f"({time.perf_counter() - t0:.1f} s)")
    if space.note:
        echo(f"note: {space.note}")
    serve(space, title(run_dir, space), port, echo, allow_hosts)


def title(run_dir: str | Path, space) -> str:
    return f"{Path(run_dir).resolve().name}: {space.model.name}"

"""Serve the explorer: a Bokeh server on 127.0.0.1 with one extra route, /img/<i>.png (the hover images).

BokehJS comes from the bokeh wheel (the server's /static route): the page loads nothing from a CDN and
works offline. `serve` blocks until Ctrl-C, then stops the server and returns.
"""
from __future__ import annotations

import errno
import signal
import socket
from functools import partial
from typing import Callable

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server
from tornado.web import RequestHandler

from ..errors import ConfigError
from .app import make_document, png
from .space import Space

HOST = "127.0.0.1"


class ImageHandler(RequestHandler):
    """GET /img/<i>.png: test image i of the map as a PNG (fetched by the hover tooltip on demand)."""

    def initialize(self, space: Space) -> None:
        self.space = space

    def get(self, i: str) -> None:
        i = int(i)
        if i >= len(self.space.images):
            self.send_error(404)
            return
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "max-age=3600")
        self.write(png(self.space.images[i]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_server(space: Space, title: str, port: int) -> Server:
    """A started-but-not-running Bokeh server for `space` on 127.0.0.1:`port` (0 = any free port)."""
    port = port or free_port()
    app = Application(FunctionHandler(partial(make_document, space=space, title=title)))
    try:
        server = Server({"/": app}, address=HOST, port=port, num_procs=1,
                        allow_websocket_origin=[f"{HOST}:{port}", f"localhost:{port}"],
                        extra_patterns=[(r"/img/(\d+)\.png", ImageHandler, {"space": space})])
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ConfigError(f"port {port} on {HOST} is busy or not allowed: choose another with --port N "
                              "(--port 0 picks a free one)") from None
        raise
    server.start()
    return server


def serve(space: Space, title: str, port: int, echo: Callable[[str], None] = print) -> None:
    """Run the explorer until Ctrl-C."""
    server = make_server(space, title, port)
    # Python keeps SIGINT ignored when its parent ignored it (a shell's `cmd &`, some test runners):
    # the server would then never stop on Ctrl-C. It is the one way to stop it, so take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    echo(f"aelab explore: http://{HOST}:{server.port}/  (Ctrl-C stops it)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        server.io_loop.close(all_fds=False)
    echo("aelab explore: stopped")

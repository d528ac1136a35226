"""Serve the explorer: a Bokeh server on 127.0.0.1 with one extra route, /img/<i>.png (the hover images).

BokehJS comes from the bokeh wheel (the server's /static route): the page loads nothing from a CDN and
works offline. `serve` blocks until Ctrl-C, then stops the server and returns.

Only requests addressed to 127.0.0.1:PORT, localhost:PORT or a host the user allowed (`--allow-host`)
are answered, every route included (the page, /img, /static, the websocket): a page on another site
that rebinds its DNS name to 127.0.0.1 sends its own name as the Host header and gets 403, so it cannot
read the images. Bokeh's `allow_websocket_origin` checks only the websocket's Origin, hence the router.
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
from tornado.httputil import HTTPServerRequest
from tornado.routing import AnyMatches, Matcher, Rule
from tornado.web import ErrorHandler, RequestHandler

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


class HostIn(Matcher):
    """Matches requests whose Host header (name:port, case-insensitive) is one of `hosts`."""

    def __init__(self, hosts: set[str]):
        self.hosts = {h.lower() for h in hosts}

    def match(self, request: HTTPServerRequest) -> dict | None:
        return {} if request.host.lower() in self.hosts else None


def allowed_hosts(port: int, extra: list[str] = ()) -> list[str]:
    """host:port values the server answers: 127.0.0.1, localhost and each `extra` host (a name without
    a port gets this port)."""
    hosts = [f"{HOST}:{port}", f"localhost:{port}"]
    for h in extra:
        h = h.strip().lower()
        if not h or any(c in h for c in "/ @"):
            raise ConfigError(f"--allow-host {h!r}: give a host name, optionally with :PORT (e.g. mybox.local)")
        hosts.append(h if ":" in h.split("]")[-1] else f"{h}:{port}")
    return hosts


def restrict_hosts(server: Server, hosts: list[str]) -> None:
    """Route every request whose Host is not in `hosts` to a 403 (tornado's router: the wildcard rule that
    holds all of Bokeh's routes now matches only those hosts; a last rule answers the rest)."""
    router = server._tornado.default_router
    router.rules[-1].matcher = HostIn(set(hosts))
    router.add_rules([Rule(AnyMatches(), ErrorHandler, {"status_code": 403})])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port(port: int) -> None:
    """A ConfigError now if 127.0.0.1:`port` cannot be listened on, rather than after the codes are computed
    (SO_REUSEADDR, as the server's own socket: a port in TIME_WAIT is free)."""
    if not port:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            s.listen()
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise ConfigError(_busy(port)) from None
            raise


def _busy(port: int) -> str:
    return f"port {port} on {HOST} is busy or not allowed: choose another with --port N (--port 0 picks a free one)"


def make_server(space: Space, title: str, port: int, allow_hosts: list[str] = ()) -> Server:
    """A started-but-not-running Bokeh server for `space` on 127.0.0.1:`port` (0 = any free port),
    answering only requests addressed to `allowed_hosts(port, allow_hosts)`."""
    port = port or free_port()
    hosts = allowed_hosts(port, list(allow_hosts))
    app = Application(FunctionHandler(partial(make_document, space=space, title=title)))
    try:
        server = Server({"/": app}, address=HOST, port=port, num_procs=1, allow_websocket_origin=hosts,
                        extra_patterns=[(r"/img/(\d+)\.png", ImageHandler, {"space": space})])
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ConfigError(_busy(port)) from None
        raise
    restrict_hosts(server, hosts)
    server.start()
    return server


def serve(space: Space, title: str, port: int, echo: Callable[[str], None] = print,
          allow_hosts: list[str] = ()) -> None:
    """Run the explorer until Ctrl-C."""
    server = make_server(space, title, port, allow_hosts)
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

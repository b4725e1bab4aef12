"""Listening and serving with uvicorn: the socket is opened first, so that a port in use is a
clear error naming it (and tests can bind port 0 and read the port they got)."""

from __future__ import annotations

import ipaddress
import socket

import uvicorn
from starlette.applications import Starlette

from gaugan.errors import UserError


class ListenError(UserError, OSError):
    """The studio cannot listen on the host and port it was given."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as err:
        raise ListenError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); "
                          f"choose another --port") from err
    listener.set_inheritable(True)
    return listener


def url_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    return f"http://{shown}:{port}/"


def make_server(app: Starlette, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[listener])``."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off"))

"""Listening and serving with uvicorn: the socket is opened first, so that a port in use is a
clear error naming it (and tests can bind port 0 and read the port they got). Which Host
names the studio answers to is decided here too (:func:`served_names`)."""

from __future__ import annotations

import ipaddress
import socket

import uvicorn
from starlette.applications import Starlette

from gaugan.errors import UserError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class ListenError(UserError, OSError):
    """The studio cannot listen on the host and port it was given."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_names(host: str, allowed_hosts: list[str]) -> list[str]:
    """The Host names the studio answers to when listening on ``host``: this computer's loopback
    names, ``host`` itself when it is one address, and ``allowed_hosts``.

    Serving beyond loopback needs ``allowed_hosts`` (``--allowed-host``): the names browsers on
    the network will use, given on purpose, since there is no login.
    """
    if not is_loopback(host) and not allowed_hosts:
        raise ListenError(
            f"--host {host}: serves the studio beyond this computer, to anyone who can reach the port (there is "
            f"no login); to do that on purpose, add --allowed-host with the name or address browsers will use "
            f"(e.g. --allowed-host {socket.gethostname()}; repeat it for more names)"
        )
    names = [*LOOPBACK_NAMES, *([] if host in ("0.0.0.0", "::", "") else [host]), *allowed_hosts]
    return list(dict.fromkeys(name.lower() for name in names))


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


def url_of(listener: socket.socket, name: str | None = None) -> str:
    """The studio's address: under ``name`` (one of the served names), else the address it listens on."""
    host, port = listener.getsockname()[:2]
    shown = name or host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def make_server(app: Starlette, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[listener])``."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off"))

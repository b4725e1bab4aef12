"""Which requests the studio answers: its own page and scripts, never another web page.

Any web page open in the user's browser may send a form POST (multipart included) to any
address without asking first; it cannot read the answer, but the studio would do the work
(and a page could keep its GPU busy). So every request is checked here:

- a request with an ``Origin`` header must come from the studio's own origin (the scheme
  and Host it was sent to); ``Origin: null`` (a sandboxed frame, a file:// page) is refused;
- a request other than GET or HEAD without an Origin (older browsers) is refused when its
  ``Sec-Fetch-Site`` is anything but ``same-origin`` or ``none`` (the user's own action),
  or when its ``Referer`` is another origin;
- a request with none of these headers (curl, scripts) is served.

A web page can also make its own name resolve to 127.0.0.1 (DNS rebinding): its requests
then name it in ``Host`` and ``Origin`` alike and pass the check above. The Host allow-list
refuses them: the studio answers only to the names it is served as (the loopback names,
and those given with ``--allowed-host``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = ("GET", "HEAD")
OWN_FETCH_SITES = ("same-origin", "none")


def host_name(host: str) -> str:
    """A Host header or address without its port and brackets, in lower case: ``[::1]:7860`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def origin_of(url: str) -> str:
    """``http://example.com/page.html`` -> ``http://example.com``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class RequestGuard:
    """Refuse requests from other web pages (403) and, with ``allowed_hosts``, Host names not in it (400)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None = None) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else [host_name(host) for host in allowed_hosts]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host", "")
        problem = self.host_problem(host)
        if problem is None:
            problem = self.origin_problem(scope["method"], f"{scope['scheme']}://{host}".lower(), headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        message, status = problem
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

    def host_problem(self, host: str) -> tuple[str, int] | None:
        if self.allowed_hosts is None or host_name(host) in self.allowed_hosts:
            return None
        return (f"Host {host!r} is not a name this studio is served as ({', '.join(self.allowed_hosts)}); open it "
                f"under one of those, or start it with --allowed-host NAME", 400)

    @staticmethod
    def origin_problem(method: str, own: str, headers: dict[str, str]) -> tuple[str, int] | None:
        origin = headers.get("origin")
        if origin is not None:
            sender = origin if origin.lower() != own else None
        elif method in SAFE_METHODS:
            sender = None
        elif headers.get("sec-fetch-site", "none").lower() not in OWN_FETCH_SITES:
            sender = f"Sec-Fetch-Site: {headers['sec-fetch-site']}"
        elif "referer" in headers and origin_of(headers["referer"]) != own:
            sender = f"Referer {origin_of(headers['referer'])}"
        else:
            sender = None
        if sender is None:
            return None
        return (f"refused: this request comes from another web page ({sender}); the studio answers its own page "
                f"({own}) and scripts that send no Origin", 403)

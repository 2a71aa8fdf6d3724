"""Who may use the admin app: the Bearer token, loopback-only without one, read-only refusals.

``AccessGuard`` is the app's one middleware. It also keeps ``%2F`` (and ``%25``) encoded in the
path the router sees, so a tenant id may contain ``/``.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenfence_asgi.web.admin._pages import PUBLIC
from tokenfence_asgi.web.auth import token_matches
from tokenfence_asgi.web.problem import Problem

__all__ = ["AccessGuard", "route_path"]

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Headers a reverse proxy, load balancer or CDN adds to say whom it forwards for: a no-token
# app refuses a request carrying any of them (its peer is loopback, the client is not).
_PROXY_HEADERS = frozenset(
    b"forwarded via x-forwarded x-real-ip x-client-ip client-ip true-client-ip x-cluster-client-ip"
    b" x-proxyuser-ip x-originating-ip x-remote-ip x-remote-addr x-host wl-proxy-client-ip"
    b" proxy-client-ip".split()
)
_PROXY_HEADER_PREFIXES = tuple(
    b"x-forwarded- x-original- x-real- cf- fastly- x-envoy- x-azure- x-appengine- x-amzn-".split()
)
# The Host of a browser that really talks to a loopback address (DNS rebinding sends its own).
_LOOPBACK_HOST = re.compile(rb"(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?", re.IGNORECASE)
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tokenfence-admin"'}


def _loopback(address: object) -> bool:
    if not isinstance(address, list | tuple) or not address:
        return False
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _on_loopback(scope: Scope) -> bool:
    """Whether a request came straight from this machine, by a name only this machine has.

    Both addresses loopback (nobody else can connect), no proxy header (a proxy on this
    machine would forward others), and one ``Host`` naming a loopback address: a page whose
    name an attacker points at 127.0.0.1 (DNS rebinding) sends its own name and is refused.
    """
    if not (_loopback(scope.get("client")) and _loopback(scope.get("server"))):
        return False
    hosts = []
    for name, value in scope.get("headers", ()):
        if name in _PROXY_HEADERS or name.startswith(_PROXY_HEADER_PREFIXES):
            return False
        if name == b"host":
            hosts.append(value)
    return len(hosts) == 1 and _LOOPBACK_HOST.fullmatch(hosts[0]) is not None


def _partly_decoded(raw: bytes) -> str:
    """``raw`` percent-decoded except ``%2F`` and ``%25``, so an id may hold ``/`` (and ``%``)."""

    def decode(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return match.group(0) if code.upper() in (b"2F", b"25") else bytes([int(code, 16)])

    return _ESCAPE.sub(decode, raw).decode("utf-8", "replace")


class AccessGuard:
    """Token and loopback checks, read-only refusals, and ids that may contain ``/``."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, read_only: bool, public_metrics: bool
    ) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only
        self.public_metrics = public_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        scope = self._with_raw_ids(scope)
        route = route_path(scope)
        request = Request(scope)
        problem = self._check(scope, route, request)
        if problem is not None:
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, route: str, request: Request) -> Problem | None:
        if self.token is None and not _on_loopback(scope):
            return Problem(
                403,
                "forbidden",
                "this admin app has no token: it answers on loopback only (a loopback address,"
                " Host localhost, 127.0.0.1 or [::1], no proxy in between)",
            )
        public = route in PUBLIC or (route == "/metrics" and self.public_metrics)
        if (
            self.token is not None
            and not public
            and not token_matches(request.headers.get("authorization"), self.token)
        ):
            return Problem(
                401,
                "unauthorized",
                "a valid admin token is required (Authorization: Bearer <token>)",
                headers=_CHALLENGE,
            )
        if self.read_only and scope["method"] in _WRITE_METHODS:
            return Problem(403, "read_only", "this admin app is read-only")
        return None

    @staticmethod
    def _with_raw_ids(scope: Scope) -> Scope:
        raw = scope.get("raw_path")
        if not isinstance(raw, bytes) or b"%" not in raw:
            return scope
        raw = raw.split(b"?", 1)[0]
        path = _partly_decoded(raw)
        if unquote(path) != scope["path"] or path == scope["path"]:
            return scope  # a server or proxy rewrote the path: keep the decoded one
        return {**scope, "path": path}


def route_path(scope: Scope) -> str:
    """The request's path below where the admin app is mounted (``/`` at the least)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"

"""What every answer carries and what every request must pass, whatever the route: security headers, the
Host check (DNS rebinding), and no state change from another site (a cross-site form POST).

Pure ASGI middlewares (no per-request objects beyond a header list); refusals are {"detail": ...} JSON."""

import ipaddress
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The pages (the dashboard at GET /, and /docs) load scripts and styles from this server only, and no script is
# inline (app/dashboard/static); styles may be, as Swagger UI and uPlot set them on elements.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether a listening address (or a Host name) is this machine only: "localhost" or a loopback IP
    (127.0.0.0/8, ::1); a name such as "127.example.com" is not, whatever it resolves to."""
    name = host_name(host)
    if name == "localhost":
        return True
    address = _ip(name)
    return address is not None and address.is_loopback


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in text ("::ffff:127.0.0.1", as a dual-stack socket shows an IPv4 peer, as IPv4)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_name(host: str) -> str:
    """A Host header's name without its port ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """One layer (it sits on every request's path) for what every request must pass and every answer carries:

    - a Host not in allowed_hosts is refused (400): DNS rebinding;
    - a state-changing request a browser sends from another site is refused (403): Sec-Fetch-Site
      cross-site, or an Origin that is neither this server nor an allowed CORS origin. Keys travel only in a
      header, which a cross-site form cannot set; this holds when auth is off too;
    - with auth off (loopback_only), a request from another machine is refused (403), whatever address the
      server was bound to (the launchers already refuse to listen beyond loopback);
    - every answer gets the security headers, a 500 from an unexpected error too (it is logged here, and the
      answer says no more than that)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], cors_origins: Iterable[str],
                 loopback_only: bool = False) -> None:
        self.app = app
        self.loopback_only = loopback_only
        hosts = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in hosts or not hosts
        self.hosts = frozenset(host_name(h) for h in hosts)
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in cors_origins if o.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and not _local_peer(scope):
            await _refuse(scope, receive, send, 403, "auth is off (TAAS_AUTH=false): this server answers requests "
                          "from this machine only")
            return
        unsafe = scope["method"] in UNSAFE_METHODS
        if unsafe or not self.any_host:
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if not self.any_host and host_name(host) not in self.hosts:
                await _refuse(scope, receive, send, 400, f"this server does not answer for host {host[:100]!r}")
                return
            if unsafe and self._cross_site(headers, host):
                await _refuse(scope, receive, send, 403, "cross-site request refused: state changes come from "
                              "this server's own pages or from clients that are not browsers (send the API key "
                              "in the Authorization header)")
                return

        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in present]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise  # the answer is on its way: the server closes the connection
            logger.exception("%s %s failed", scope["method"], scope.get("path", ""))
            await _refuse(scope, receive, send, 500, "internal server error: it was logged on the server")

    def _cross_site(self, headers: Headers, host: str) -> bool:
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return True
        origin = headers.get("origin")
        if origin is None:
            return False
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return False
        return urlsplit(origin).netloc != host.strip().lower()


def _local_peer(scope: Scope) -> bool:
    """Whether the request comes from this machine: a loopback peer, or no IP peer at all (a Unix socket, an
    in-process client)."""
    client = scope.get("client")
    address = _ip(client[0]) if client else None
    return address is None or address.is_loopback


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=dict(
        (k.decode(), v.decode()) for k, v in SECURITY_HEADERS))(scope, receive, send)

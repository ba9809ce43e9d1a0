"""What every answer carries and what every request must pass, whatever the route: security headers, the
Host check (DNS rebinding), and no state change from another site (a cross-site form POST).

Pure ASGI middlewares (no per-request objects beyond a header list); refusals are {"detail": ...} JSON."""

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The pages (the dashboard at GET /, and /docs) load scripts and styles from this server only, and no script is
# inline (app/static); styles may be, as Swagger UI and uPlot set them on elements.
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


def is_loopback(host: str) -> bool:
    """Whether a listening address (or a Host name) is this machine only."""
    return host_name(host) in LOOPBACK_HOSTS or host.startswith("127.")


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
    - every answer gets the security headers."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> None:
        self.app = app
        hosts = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in hosts or not hosts
        self.hosts = frozenset(host_name(h) for h in hosts)
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in cors_origins if o.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in present]
            await send(message)

        await self.app(scope, receive, sending)

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


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=dict(
        (k.decode(), v.decode()) for k, v in SECURITY_HEADERS))(scope, receive, send)

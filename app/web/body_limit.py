"""A request-body size limit for every route, enforced before the body is parsed."""

from collections.abc import Callable

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import get_settings


def max_body_bytes(path: str) -> int:
    """The most request-body bytes a route accepts: archives on /datasets, images or tensors on /predict and
    /v2/models/{name}/infer, small JSON everywhere else."""
    settings = get_settings()
    if path == "/datasets":
        return settings.dataset_max_upload_bytes
    if path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer")):
        return settings.predict_max_bytes
    return settings.request_max_bytes


def _too_large(size: str, limit: int, path: str) -> str:
    return f"request body is {size} bytes; at most {limit} bytes are accepted by {path}"


class BodyLimit:
    """Refuses bodies over max_bytes(path): by Content-Length before reading a byte, and by counting
    while streaming when there is none (chunked uploads).

    The limit is read per request, so it follows the settings."""

    def __init__(self, app: ASGIApp, *, max_bytes: Callable[[str], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A GET or HEAD body is never read by any route: nothing to count.
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        limit = self.max_bytes(path)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": _too_large(declared, limit, path)}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body parsing, which lets HTTPException through as is.
                    raise HTTPException(413, detail=_too_large(f"more than {limit}", limit, path))
            return message

        await self.app(scope, limited_receive, send)

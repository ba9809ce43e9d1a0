"""A request-body size limit for upload routes, enforced before the body is parsed."""

from collections.abc import Callable

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(size: str, limit: int) -> str:
    return (f"request body is {size} bytes; at most {limit} bytes are accepted "
            "(send fewer or smaller files per request)")


class BodyLimit:
    """Refuses bodies over max_bytes() on `paths`: by Content-Length before reading a byte, and by
    counting while streaming when there is none (chunked uploads).

    The limit is read per request, so it follows the settings."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str], max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if scope["type"] != "http" or path.removeprefix(root) not in self.paths:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": _too_large(declared, limit)}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body parsing, which lets HTTPException through as is.
                    raise HTTPException(413, detail=_too_large(f"more than {limit}", limit))
            return message

        await self.app(scope, limited_receive, send)

"""GET /jobs/{id} on PostgreSQL with keys on, answered without FastAPI's per-request machinery.

It is the route every dashboard, notebook and script polls, and it does one thing: one batched statement for
the key and the job (app.jobs.reads), the job's live step, the job as JSON. Through FastAPI's routing,
dependency solving and exception layers, that machinery cost more CPU than the read itself (py-spy, one API
process, 64 clients: about 30 % of the process, the read and the JSON 20 %); here the request goes from our
middlewares (metrics, the guard and its security headers; the others let a GET through) straight to the read,
so under the same load a core answers more polls and each waits less.

The answers are the route's own: the same JobPublic JSON, and the app's handler of domain errors for every
refusal (401 with WWW-Authenticate, 404, 503 with Retry-After); any other error reaches the guard's logged 500,
as it did through the route. The route stays declared in app.jobs.routes (the OpenAPI schema,
and the path taken by SQLite, auth off, and any request this one does not match exactly).
"""

import re
from collections.abc import Awaitable, Callable

from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.accounts.keys import principal_of
from app.accounts.principal import key_hash
from app.core.config import get_settings
from app.core.errors import DomainError
from app.jobs.reads import FastReads
from app.jobs.service import job_not_found
from app.web.deps import authenticated, bearer, presented_key
from app.web.schemas import JobPublic, JobRow

# As the router matches "/jobs/{job_id}": one path segment.
PATH = re.compile(r"/jobs/([^/]+)")

ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


async def read_job(request: Request, reads: FastReads, credentials: HTTPAuthorizationCredentials | None,
                   job_id: str) -> Response:
    """The key and the job in one statement, batched with concurrent requests' (app.jobs.reads): the answer with
    the job as JobPublic JSON if the key is valid and the job its owner's; Unauthorized, NotFound, Unavailable
    otherwise."""
    key_row, job = await reads.key_and_job(key_hash(presented_key(credentials)), job_id)
    authenticated(request, principal_of(key_row, get_settings()))
    if job is None:
        raise job_not_found(job_id)
    return Response(public_json(job, await reads.live_step(job)), media_type="application/json")


def public_json(job: JobRow, live_step: int | None) -> bytes:
    """JobPublic.of(job, live_step) as JSON, serialized once per row and step.

    The requests of one batched read that asked for the same key and job share its row object
    (app.core.batched_reads answers each distinct key once): when many clients poll one job, as a dashboard's
    viewers do, one of them serializes it for all."""
    memo: tuple[int | None, bytes] | None = getattr(job, "_public_json", None)
    if memo is not None and memo[0] == live_step:
        return memo[1]
    body = JobPublic.of(job, live_step=live_step).model_dump_json().encode()
    job._public_json = (live_step, body)  # type: ignore[attr-defined]
    return body


class _Route:
    """What the router leaves in scope["route"] for the layers above (app.live.metrics labels by its path)."""

    path = "/jobs/{job_id}"


class JobPoll:
    """An ASGI middleware (the innermost of ours): answers GET /jobs/{id} itself when the app reads PostgreSQL
    with keys on; passes every other request on."""

    def __init__(self, app: ASGIApp, *, on_error: ErrorHandler) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        # The path as the router matches it: behind a root_path (uvicorn --root-path), without it.
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        match = PATH.fullmatch(path)
        reads: FastReads | None = getattr(scope["app"].state, "fast_reads", None)
        settings = get_settings()
        if match is None or reads is None or not settings.auth:
            await self.app(scope, receive, send)
            return
        scope["route"] = _Route
        job_id = match.group(1)
        request = Request(scope, receive)
        try:
            response = await read_job(request, reads, await bearer(request), job_id)
        except DomainError as e:
            response = await self.on_error(request, e)
        await response(scope, receive, send)


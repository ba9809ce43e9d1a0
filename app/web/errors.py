"""The one place where errors become HTTP answers: the domain errors of service code (app.core.errors) by one table,
the backing services' failures as 503s, and the requests that fail before or outside them, so none becomes a 500:

- a domain error answers the status of the nearest of its classes in ERROR_STATUS (its MRO), with its headers
  (WWW-Authenticate, Retry-After);
- the database or Redis unreachable, out of connections, or a row lock not free in time: 503 with Retry-After;
- validation errors render whatever the input held (NaN, infinities, bytes, huge strings): values JSON
  cannot carry are shown as text, long ones shortened;
- 405 names every method the path has (Starlette's own answer names only the first route's);
- a value the database refuses to store (a NUL character in PostgreSQL text) is a 422, never a 500.

Errors are {"detail": ...}, or {"error": ...} on the Open Inference Protocol's routes (/v2), as its clients read.
"""

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg.errors import LockNotAvailable
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from app.core import errors
from app.web.route_table import route_methods

log = logging.getLogger(__name__)

# Domain errors by class; a subclass not listed answers its nearest listed ancestor's status.
ERROR_STATUS: dict[type[errors.DomainError], int] = {
    errors.DomainError: 400,
    errors.BadCursor: 400,
    errors.BadImage: 400,
    errors.MalformedRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMedia: 415,
    errors.InvalidSpec: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
}

# Seconds a client should wait before retrying a 503 (the header every 503 carries).
RETRY_AFTER_SECONDS = 1
MAX_ECHO_CHARS = 200
MAX_ECHO_ITEMS = 20


def status_of(error: errors.DomainError) -> int:
    """The HTTP status of a domain error: that of the nearest of its classes in ERROR_STATUS."""
    return next(ERROR_STATUS[cls] for cls in type(error).__mro__ if cls in ERROR_STATUS)


def _key(request: Request) -> str:
    return "error" if request.url.path.startswith("/v2/") else "detail"


def error_response(request: Request, detail: Any, status_code: int,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer to an error: {"detail": ...} ({"error": ...} on /v2); a 503 always says when to retry."""
    headers = dict(headers or {})
    if status_code == 503:
        headers.setdefault("retry-after", str(RETRY_AFTER_SECONDS))
    return JSONResponse({_key(request): detail}, status_code=status_code, headers=headers)


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DomainError)
    return error_response(request, exc.detail, status_of(exc), exc.headers())


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(getattr(exc, "orig", None), LockNotAvailable):
        return error_response(request, "this object is being written (a worker holds it) and was not free within "
                              "the server's lock timeout; retry after the time in the Retry-After header", 503)
    return error_response(request, "the database is unreachable; try again shortly", 503)


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, "the server is at its limit of database connections; retry after the time "
                          "in the Retry-After header", 503)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, "Redis is unreachable; try again shortly", 503)


def echo(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can carry it, shortened: for showing a client what it sent."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
    if depth >= 3:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ECHO_ITEMS]
        return {str(echo(k, depth + 1)): echo(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [echo(v, depth + 1) for v in list(value)[:MAX_ECHO_ITEMS]]
    return echo(str(value), depth + 1)


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for error in exc.errors():
        shown: dict[str, Any] = {"type": error.get("type"), "loc": [echo(p) for p in error.get("loc", ())],
                                 "msg": echo(error.get("msg", ""))}
        if "input" in error:
            shown["input"] = echo(error["input"])
        if "ctx" in error:
            shown["ctx"] = echo(error["ctx"])
        out.append(shown)
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, validation_errors(exc), 422)


def allowed_methods(app: Any, path: str) -> list[str]:
    """Every method some route of the app serves at this path."""
    patterns: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(app.state, "route_patterns", None)
    if patterns is None:
        patterns = [(compile_path(template)[0], methods) for template, methods in route_methods(app)]
        app.state.route_patterns = patterns
    return sorted({m for pattern, methods in patterns if pattern.match(path) for m in methods})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}
    if exc.status_code == 405:
        headers["allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    return error_response(request, exc.detail, exc.status_code, headers)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The request's values are validated before they reach the database; this is the net under that.
    log.warning("the database refused a value of %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0])
    return error_response(request, "a value in this request cannot be stored (e.g. a NUL character in a text)", 422)


def install(app: FastAPI) -> None:
    """Every handler above, on the app."""
    app.add_exception_handler(errors.DomainError, domain_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)

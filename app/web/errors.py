"""Answers to requests that fail before or outside our domain errors, so none of them becomes a 500:

- validation errors render whatever the input held (NaN, infinities, bytes, huge strings): values JSON
  cannot carry are shown as text, long ones shortened;
- 405 names every method the path has (Starlette's own answer names only the first route's);
- a value the database refuses to store (a NUL character in PostgreSQL text) is a 422, never a 500.
"""

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

log = logging.getLogger(__name__)

MAX_ECHO_CHARS = 200
MAX_ECHO_ITEMS = 20


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
    key = "error" if request.url.path.startswith("/v2/") else "detail"
    return JSONResponse({key: validation_errors(exc)}, status_code=422)


def route_methods(app: Any) -> list[tuple[str, frozenset[str]]]:
    """(path template, methods) of every route of the app, included routers' routes with their prefix."""
    table: list[tuple[str, frozenset[str]]] = []
    for route in app.router.routes:
        if hasattr(route, "effective_route_contexts"):  # an included router (FastAPI keeps them whole)
            table += [(ctx.path, frozenset(getattr(ctx.original_route, "methods", None) or ()))
                      for ctx in route.effective_route_contexts()]
        elif getattr(route, "methods", None):
            table.append((route.path, frozenset(route.methods)))
    return table


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
    key = "error" if request.url.path.startswith("/v2/") else "detail"
    return JSONResponse({key: exc.detail}, status_code=exc.status_code, headers=headers)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The request's values are validated before they reach the database; this is the net under that.
    log.warning("the database refused a value of %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0])
    key = "error" if request.url.path.startswith("/v2/") else "detail"
    return JSONResponse({key: "a value in this request cannot be stored (e.g. a NUL character in a text)"},
                        status_code=422)


def add_request_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)

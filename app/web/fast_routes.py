"""Routes answered below FastAPI's routing: the hot ones, whose endpoint this layer calls itself.

A route every dashboard, notebook and script polls (GET /jobs/{id}) does little per request: one batched read, the
answer as JSON. Through FastAPI's routing, dependency solving and exception layers, that machinery cost more CPU
than the work (py-spy, one API process, 64 clients: about 30 % of the process, the read and the JSON 20 %). So for
the endpoints named here, this layer (the innermost of our middlewares: metrics, the guard and its security headers
still see every request) matches the request against the endpoint's own route as the router would (its method and
path template, behind a root_path too), and awaits the endpoint with the request and the path's parameters. The
route stays declared as usual (the OpenAPI schema; any request this layer does not match); its endpoint is the one
code path of both, so it takes only the request and its path parameters and reads what it needs itself. Refusals
go through the app's handler of domain errors, as through the router; any other error reaches the guard's logged
500, as it did through the route.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import DomainError
from app.web.route_table import routes_of

Endpoint = Callable[..., Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


@dataclass(frozen=True)
class _Fast:
    route: Any  # an APIRoute, or an included one's context: matches(scope), path
    endpoint: Endpoint


class FastRoutes:
    """An ASGI middleware answering the routes of `endpoints` by awaiting the endpoint itself; every other request
    goes on to the app."""

    def __init__(self, app: ASGIApp, *, endpoints: Sequence[Endpoint], on_error: ErrorHandler) -> None:
        self.app = app
        self.endpoints = tuple(endpoints)
        self.on_error = on_error
        self._routes: list[_Fast] | None = None

    def _fast_routes(self, application: Any) -> list[_Fast]:
        # Found in the app's routes once it is built (middlewares are made before the routers are included).
        if self._routes is None:
            found = {route.endpoint: route for route in routes_of(application)
                     if isinstance(getattr(route, "original_route", route), APIRoute)}
            self._routes = [_Fast(found[endpoint], endpoint) for endpoint in self.endpoints]
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for fast in self._fast_routes(scope["app"]):
                # Matched as the router matches it: method, path template (behind a root_path, without it).
                match, child = fast.route.matches(scope)
                if match is Match.FULL:
                    # In place, as the router does: the layers above read "route" (app.live.metrics labels by its
                    # path) and the path parameters (the audit log) from this very scope.
                    scope.update(child)
                    scope["route"] = fast.route
                    await self._answer(fast, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, fast: _Fast, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await fast.endpoint(request=request, **scope["path_params"])
        except DomainError as e:
            response = await self.on_error(request, e)
        await response(scope, receive, send)

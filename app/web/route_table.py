"""The app's routes as the router matches them, for the layers that need to know them (the 405's Allow header, the
routes answered below FastAPI's routing)."""

from collections.abc import Iterator
from typing import Any


def routes_of(app: Any) -> Iterator[Any]:
    """Every route of the app: an included router's routes as their contexts (FastAPI keeps included routers whole),
    whose `path` is the whole template, prefix included."""
    for route in app.router.routes:
        if hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()
        else:
            yield route


def route_methods(app: Any) -> list[tuple[str, frozenset[str]]]:
    """(path template, methods) of every route of the app that has methods."""
    return [(route.path, frozenset(route.methods)) for route in routes_of(app) if getattr(route, "methods", None)]

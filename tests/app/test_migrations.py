"""The schema exists only through Alembic: upgrade head on an empty database matches the ORM exactly."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app.db import make_engine, normalize_url
from app.migrate import alembic_config, upgrade_head
from app.tables import Base

TABLES = {"jobs", "epoch_metrics", "loss_points", "artifacts", "datasets", "api_keys", "audit_events",
          "alembic_version"}


@pytest.fixture
def empty_postgres(postgres_url: str) -> Iterator[str]:
    """A database of its own, so this test sees an empty one whatever ran before it."""
    url = make_url(normalize_url(postgres_url))
    name = f"taas_migrate_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def drift(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_postgres_has_no_drift(empty_postgres: str):
    assert table_names(empty_postgres) == set()
    upgrade_head(empty_postgres)
    assert table_names(empty_postgres) == TABLES
    assert drift(empty_postgres) == []
    upgrade_head(empty_postgres)  # idempotent: the migrate service runs on every deploy

    command.downgrade(alembic_config(empty_postgres), "base")
    assert table_names(empty_postgres) == {"alembic_version"}


def test_upgrade_head_on_fresh_sqlite_file_has_no_drift(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'state' / 'taas.db'}"  # the folder does not exist yet
    upgrade_head(url)
    assert table_names(url) == TABLES
    assert drift(url) == []


def test_cascade_deletes_children_on_sqlite(tmp_path: Path):
    """The embedded mode relies on foreign keys being on (app.db sets the pragma)."""
    url = f"sqlite:///{tmp_path / 'taas.db'}"
    upgrade_head(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobs (id, owner, status, spec, queue, attempt, max_attempts, cancel_requested, "
                "epoch, step, created_at) VALUES ('j1', 'o', 'queued', '{}', 'cpu', 0, 3, false, 0, 0, "
                "'2024-01-01 00:00:00')"))
            conn.execute(text("INSERT INTO loss_points VALUES ('j1', 0, 1, 0, 2.3, 0.0)"))
            conn.execute(text("DELETE FROM jobs WHERE id = 'j1'"))
            assert conn.execute(text("SELECT count(*) FROM loss_points")).scalar_one() == 0
    finally:
        engine.dispose()

"""The schema exists only through Alembic: upgrade head on an empty database matches the ORM exactly."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app.core.db import make_engine, normalize_url
from app.core.migrate import ROOT, alembic_config, schema_problem, upgrade_head
from app.core.tables import Base

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
    """The embedded mode relies on foreign keys being on (app.core.db sets the pragma)."""
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


def serve(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m app.server` as taas up and compose start it, against `database_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAAS_")}
    env.update(TAAS_DATABASE_URL=database_url, TAAS_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "app.server", "--port", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_api_refuses_to_start_on_a_database_without_its_schema(tmp_path: Path, empty_postgres: str):
    missing = tmp_path / "nowhere" / "taas.db"
    started = serve(f"sqlite:///{missing}", tmp_path)
    assert started.returncode == 2
    assert f"there is no database at {missing}: run `alembic upgrade head`" in started.stderr
    assert not missing.exists()  # the check did not create an empty one

    started = serve(empty_postgres, tmp_path)
    assert started.returncode == 2
    assert "has no taas tables: run `alembic upgrade head`" in started.stderr


def test_the_api_names_a_database_at_another_revision(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'taas.db'}"
    config = alembic_config(url)
    upgrade_head(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    command.downgrade(config, "-1")
    started = serve(url, tmp_path)
    assert started.returncode == 2
    assert f"needs {head}: run `alembic upgrade head`" in started.stderr

    upgrade_head(url)
    assert schema_problem(url) is None
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        engine.dispose()
    assert "at revision f00d, which this taas does not know (a newer release migrated it)" in schema_problem(url)


def test_an_unreachable_database_is_left_to_the_api_to_answer_503():
    """The API starts, and its routes answer 503 until the database is back (tests/app/test_catalog_health.py)."""
    assert schema_problem("postgresql://taas@127.0.0.1:1/nothing", connect_timeout=1) is None

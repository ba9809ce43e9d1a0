"""Run the Alembic migrations programmatically (the run command, tests; compose uses the alembic CLI)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.core.db import normalize_url, sqlite_file

ROOT = Path(__file__).resolve().parents[2]
UPGRADE = "run `alembic upgrade head` first (taas up does)"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    # Absolute, so it works from any working directory; the URL goes as an attribute (no % escaping).
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


def upgrade_head(database_url: str) -> None:
    """Bring the database at `database_url` to the newest revision (creating a SQLite file's folder)."""
    path = sqlite_file(database_url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")


def schema_problem(database_url: str, *, connect_timeout: int = 5) -> str | None:
    """What keeps the API from serving the database at `database_url`, said for its user (it has no taas schema,
    or another revision than this code's), else None. None too where it cannot be reached now: the API starts
    anyway and answers 503 until it can."""
    url = make_url(normalize_url(database_url))
    where = url.render_as_string(hide_password=True)
    path = sqlite_file(database_url)
    if path is not None and not Path(path).is_file():  # (connecting would create an empty one)
        return f"there is no database at {path}: {UPGRADE}"
    args = {} if url.get_backend_name() == "sqlite" else {"connect_timeout": connect_timeout}
    engine = create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except OperationalError:
        return None
    finally:
        engine.dispose()
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    heads = set(scripts.get_heads())
    if current == heads:
        return None
    if not current:
        return f"the database {where} has no taas tables: {UPGRADE}"
    known = {script.revision for script in scripts.walk_revisions()}
    if current - known:
        return (f"the database {where} is at revision {', '.join(sorted(current - known))}, which this taas does "
                "not know (a newer release migrated it): run that release")
    return (f"the database {where} is at revision {', '.join(sorted(current))}, this taas needs "
            f"{', '.join(sorted(heads))}: {UPGRADE}")

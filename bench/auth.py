"""API keys for the benchmarks: one made in the database a bench's server uses (every rate limit lifted: a bench
measures the server, not its limits), or the admin key `taas up` printed and keeps in its state folder."""

from pathlib import Path

from sqlalchemy.orm import Session

from app.accounts import keys
from app.accounts.limits import Limits
from app.core.config import UNLIMITED
from app.core.db import make_engine
from app.core.storage import KEY_FILE


def bench_key(database_url: str, owner: str) -> dict[str, str]:
    """Authorization headers of a new admin key of `owner`, with no rate limit (and room for long jobs)."""
    engine = make_engine(database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            _, key = keys.create_key(session=session, owner=owner, admin=True, name="bench",
                                     limits=Limits(submit_rate=UNLIMITED, predict_rate=UNLIMITED, active_jobs=10_000,
                                                   job_epochs=1000))
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}


def up_key(state_dir: Path) -> dict[str, str]:
    """Authorization headers of the admin key a running `taas up` keeps in its state folder."""
    return {"Authorization": f"Bearer {(state_dir / KEY_FILE).read_text().strip()}"}

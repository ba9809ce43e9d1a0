"""Engine and sessions for the configured database (PostgreSQL via psycopg 3, or SQLite embedded)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import anyio
from sqlalchemy import CursorResult, Delete, Engine, Update, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.errors import Unavailable

T = TypeVar("T")


def normalize_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy would otherwise pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_file(url: str) -> str | None:
    """The path of the SQLite file `url` names; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def make_engine(url: str, *, pre_ping: bool = True, lock_timeout_seconds: float | None = None) -> Engine:
    """pre_ping tests each connection with a round trip as it leaves the pool: the workers' way (a stale
    connection after a database restart never fails their writes). The API goes without (app.core.db.Database).
    lock_timeout_seconds bounds a statement's wait for a row lock (PostgreSQL), e.g. a job's row held by a
    worker frozen inside its transaction: then 503 with Retry-After, not a request that hangs."""
    url = normalize_url(url)
    settings = get_settings()
    # A checkout that waits longer than pool_timeout raises (503 with Retry-After, app.main); routes never
    # wait that long, since Database below admits no more of them at once than the pool holds.
    pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes; foreign keys make ON DELETE CASCADE work.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args = {}
    if lock_timeout_seconds is not None:
        connect_args["options"] = f"-c lock_timeout={int(lock_timeout_seconds * 1000)}"
    return create_engine(url, pool_pre_ping=pre_ping, connect_args=connect_args, **pool)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def rowcount(session: Session, statement: Update | Delete) -> int:
    """Execute a conditional UPDATE or DELETE; how many rows it changed (0: its condition no longer held).

    Objects already in the session are not synchronized: callers re-read what they need."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)
    return result.rowcount


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with _sessionmaker()() as session, session.begin():
        yield session


def new_session() -> Session:
    return _sessionmaker()()


def pool_capacity(settings: Settings) -> int:
    """Route calls at once per API process: the connections the pool keeps open. Admitting more would use
    its overflow, whose connections are closed as soon as they are returned: a new PostgreSQL backend
    (a process fork) per request under load, measured as the biggest single cost of GET /jobs/{id}."""
    return settings.db_pool_size


class Database:
    """How routes use the database: `await db.run(fn)` calls fn(session) on a worker thread with a session
    that is closed (its transaction ended, its connection back in the pool) before run returns, so no
    connection is held while a response is built or sent. `await db.read(fn)` does the same for work that
    only reads: in autocommit (no BEGIN and ROLLBACK round trips), retried once if its connection turns out
    dead (after a database restart; SQLAlchemy then empties the pool).

    At most pool_capacity calls run at once; more requests wait here, on the event loop, holding neither a
    thread nor a connection, and one that waits longer than db_pool_timeout_seconds is refused with 503
    (Retry-After). Threads therefore never block on the pool, whatever the concurrency: before, 40 route
    threads could wait for the 15 connections held by requests that needed a thread to finish."""

    def __init__(self, engine: Engine, *, capacity: int, wait_seconds: float):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reads = sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        self.limiter = anyio.CapacityLimiter(capacity)
        self.wait_seconds = wait_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        return cls(make_engine(settings.database_url, pre_ping=False,
                               lock_timeout_seconds=settings.db_pool_timeout_seconds),
                   capacity=pool_capacity(settings),
                   wait_seconds=settings.db_pool_timeout_seconds)

    async def run(self, fn: Callable[[Session], T]) -> T:
        return await self._call(self._sessions, fn, retry=False)

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await self._call(self._reads, fn, retry=True)

    async def _call(self, sessions: sessionmaker[Session], fn: Callable[[Session], T], *, retry: bool) -> T:
        with anyio.move_on_after(self.wait_seconds) as waited:
            await self.limiter.acquire()
        if waited.cancelled_caught:
            raise Unavailable(f"the server is at its limit of database connections ({self.limiter.total_tokens})"
                              f" and none was free within {self.wait_seconds:g} s; retry after the time in the "
                              "Retry-After header")
        try:
            # Once started, the call runs to its end (a client that hangs up cannot cut a commit short).
            return await anyio.to_thread.run_sync(_in_session, sessions, fn, retry, abandon_on_cancel=False)
        finally:
            self.limiter.release()

    def dispose(self) -> None:
        self.engine.dispose()


def _in_session(sessions: sessionmaker[Session], fn: Callable[[Session], T], retry: bool) -> T:
    try:
        with sessions() as session:
            return fn(session)
    except DBAPIError as e:
        if not (retry and e.connection_invalidated):
            raise
    with sessions() as session:
        return fn(session)

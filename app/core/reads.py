"""Reads on every request's path, run on the event loop, neither on a thread nor through the ORM: the API key of
each request, and GET /jobs/{id} (the route every dashboard and script polls). Each is a Query: one SELECT over a
batch of lookups, written once with SQLAlchemy's expressions over app.core.tables and compiled once per database,
which app.core.batched_reads feeds with the lookups of concurrent requests.

PostgreSQL: an asyncio psycopg pool, a prepared statement whose batch is arrays unnested into rows (one round trip
answers tens of requests). Measured here (one API process, 64 clients polling a running job): 1,508 req/s one query
per request through this pool, 4,258 batched; 540 through SQLAlchemy's ORM on the threadpool (16 clients).

SQLite (the embedded mode): a read-only connection of its own in WAL mode, on the event loop: an indexed read of a
local file takes tens of microseconds, less than the hop to a worker thread would (which halved /predict's
throughput); the batch is read one lookup at a time (the loop runs one statement at a time anyway), and the rows'
values are converted by the columns' own types (JSON, booleans, UTC datetimes).
"""

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

from psycopg import OperationalError
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import FromClause, Select, String, bindparam, column, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.types import ARRAY

from app.core.config import Settings
from app.core.db import sqlite_file
from app.core.errors import Unavailable

Row = tuple[Any, ...]
Lookup = tuple[str, ...]

DIALECTS: dict[str, Dialect] = {
    "postgresql": postgresql.psycopg.dialect(),
    "sqlite": sqlite.dialect(paramstyle="named"),
}


def lookups_table(dialect: str, names: Sequence[str]) -> FromClause:
    """The batch's lookups as a table "r" with text columns `names`: on PostgreSQL arrays unnested into rows (one
    parameter per column, whatever the batch's size: one prepared statement); on SQLite one row of parameters."""
    if dialect == "postgresql":
        arrays = [bindparam(name, type_=ARRAY(String)) for name in names]
        return func.unnest(*arrays).table_valued(*(column(name, String) for name in names)).render_derived("r")
    return select(*(bindparam(name, type_=String).label(name) for name in names)).subquery("r")


@dataclass(frozen=True)
class _Compiled:
    sql: str
    convert: Sequence[Callable[[Any], Any] | None]


class Query:
    """A read-only SELECT over a batch of lookups: build(r) gives the statement, where r is the batch as a table
    whose columns are `keys`; its rows start with those columns, so each answer names its lookup."""

    def __init__(self, keys: Sequence[str], build: Callable[[FromClause], Select[Any]]):
        self.keys = tuple(keys)
        self.build = build
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: str) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is None:
            statement = self.build(lookups_table(dialect, self.keys))
            target = DIALECTS[dialect]
            sql = str(statement.compile(dialect=target))
            convert = [c.type.dialect_impl(target).result_processor(target, None) for c in statement.selected_columns]
            found = self._compiled[dialect] = _Compiled(sql, convert)
        return found


def column_names(columns: Iterable[Any]) -> tuple[str, ...]:
    """The attribute names namespace() gives the values of these columns (a table's, or a list of its columns)."""
    return tuple(c.key for c in columns)


def namespace(names: tuple[str, ...], values: Sequence[Any]) -> SimpleNamespace:
    """Values of columns (named by column_names, computed once per query) as an object with those attributes: what
    building an ORM instance would give, at a fraction of its cost."""
    return SimpleNamespace(**dict(zip(names, values, strict=True)))


class Reads(Protocol):
    #: lookups in flight at once (the connections it has)
    capacity: int

    async def rows(self, query: Query, lookups: Sequence[Lookup]) -> list[Row]: ...

    async def close(self) -> None: ...


class PostgresReads:
    def __init__(self, settings: Settings):
        url = make_url(settings.database_url).set(drivername="postgresql")
        self.capacity = settings.db_read_pool_size
        # Datetimes in UTC, as the ORM's columns give them.
        self.pool = AsyncConnectionPool(
            url.render_as_string(hide_password=False), min_size=1, max_size=self.capacity,
            timeout=settings.db_pool_timeout_seconds, open=False,
            kwargs={"autocommit": True, "options": "-c TimeZone=UTC"})

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def rows(self, query: Query, lookups: Sequence[Lookup]) -> list[Row]:
        sql = query.compiled("postgresql").sql
        params = {name: [lookup[i] for lookup in lookups] for i, name in enumerate(query.keys)}
        for attempt in (1, 2):  # a read: retried once on a connection that died (a database restart)
            try:
                async with self.pool.connection() as conn:
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(sql, params, prepare=True)
                    return await cursor.fetchall()
            except PoolTimeout:
                raise Unavailable("the server is at its limit of database connections; retry after the time "
                                  "in the Retry-After header") from None
            except OperationalError:
                if attempt == 2:
                    raise Unavailable("the database is unreachable; try again shortly") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.pool.close()


class SqliteReads:
    capacity = 1

    def __init__(self, path: str):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=5000")

    async def rows(self, query: Query, lookups: Sequence[Lookup]) -> list[Row]:
        compiled = query.compiled("sqlite")
        out = []
        try:
            for lookup in lookups:
                for raw in self.conn.execute(compiled.sql, dict(zip(query.keys, lookup, strict=True))):
                    out.append(tuple(v if f is None or v is None else f(v)
                                     for f, v in zip(compiled.convert, raw, strict=True)))
        except sqlite3.OperationalError as e:
            raise Unavailable(f"the database cannot be read: {e}") from None
        return out

    async def close(self) -> None:
        self.conn.close()


async def open_reads(settings: Settings) -> Reads:
    """The reads of the configured database: PostgreSQL or SQLite (the two taas runs on)."""
    path = sqlite_file(settings.database_url)
    if path is not None:
        return SqliteReads(path)
    if make_url(settings.database_url).get_backend_name() != "postgresql":
        raise ValueError(f"taas runs on PostgreSQL or SQLite, not {make_url(settings.database_url).drivername}")
    reads = PostgresReads(settings)
    await reads.open()
    return reads

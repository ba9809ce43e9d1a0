"""The reads on every request's path, on PostgreSQL without a thread or the ORM: the API key of each request,
and GET /jobs/{id} (the route every dashboard and script polls), through an asyncio psycopg pool on the event
loop, batched across concurrent requests (app.core.batched_reads), with the job's live step from Redis's asyncio
client. Measured here (one API process, 64 clients polling a running job): 1,508 req/s one query per request
through this pool, 4,258 batched; 540 through SQLAlchemy's ORM on the threadpool (16 clients).

The statements are compiled from app.core.tables' tables, so the columns have one home; a row becomes a plain
object with the table's attributes (building an ORM instance cost more than the query), so JobPublic.of and
app.accounts.keys.principal_of serve both paths. With SQLite (the embedded mode) the same reads go through app.core.db.
"""

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import redis.asyncio
from psycopg import OperationalError
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError
from sqlalchemy import Column, Table, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from app.core.batched_reads import BatchedLookup
from app.core.config import Settings
from app.core.db import sqlite_file
from app.core.errors import Unavailable
from app.core.loss_stream import LossStream
from app.core.tables import ApiKey, Job, JobStatus, is_id
from app.web.schemas import JobRow

# How long a running job's live step (the last step in its loss stream) is reused; how many jobs are kept.
LIVE_STEP_SECONDS = 0.05
LIVE_STEP_ENTRIES = 4096


class _RowsBy:
    """SELECT every column of `table` WHERE `column` = ANY(values), as one prepared statement."""

    def __init__(self, table: Table, column: Column[Any]):
        statement = select(table).where(column == any_(bindparam("values")))
        self.sql = str(statement.compile(dialect=postgresql.psycopg.dialect()))
        self.names = [c.key for c in table.columns]
        self.key = column.key

    def objects(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        out = []
        for row in rows:
            values: dict[str, Any] = dict(zip(self.names, row, strict=True))
            for name, value in values.items():
                if isinstance(value, datetime):
                    values[name] = value.astimezone(UTC)
            out.append(SimpleNamespace(**values))
        return out


_JOBS = _RowsBy(Job.__table__, Job.__table__.c.id)  # type: ignore[arg-type]
_KEYS = _RowsBy(ApiKey.__table__, ApiKey.__table__.c.key_hash)  # type: ignore[arg-type]


class _KeyAndJob:
    """GET /jobs/{id}'s whole read in one statement: each (key hash, job id) pair's key row, and the job of that
    id if it is the key's owner's (LEFT JOIN: a key without that job still authenticates)."""

    KEY_COLUMNS = [c.key for c in ApiKey.__table__.columns]
    JOB_COLUMNS = [c.key for c in Job.__table__.columns]

    def __init__(self) -> None:
        keys = ", ".join(f"k.{c}" for c in self.KEY_COLUMNS)
        job_columns = ", ".join(f"j.{c}" for c in self.JOB_COLUMNS)
        self.sql = (f"SELECT r.h, r.jid, {keys}, {job_columns} "
                    f"FROM unnest(%(hashes)s::text[], %(ids)s::text[]) AS r(h, jid) "
                    f"JOIN {ApiKey.__tablename__} k ON k.key_hash = r.h "
                    f"LEFT JOIN {Job.__tablename__} j ON j.id = r.jid AND j.owner = k.owner")
        self.keys = _RowsBy(ApiKey.__table__, ApiKey.__table__.c.key_hash)  # type: ignore[arg-type]
        self.jobs = _RowsBy(Job.__table__, Job.__table__.c.id)  # type: ignore[arg-type]

    def split(self, row: tuple[Any, ...]) -> tuple[tuple[str, str], Any, Any]:
        n = len(self.KEY_COLUMNS)
        key_row = self.keys.objects([row[2:2 + n]])[0]
        job = self.jobs.objects([row[2 + n:]])[0] if row[2 + n] is not None else None
        return (row[0], row[1]), key_row, job


_KEY_AND_JOB = _KeyAndJob()


class FastReads:
    def __init__(self, settings: Settings, client: redis.asyncio.Redis):
        url = make_url(settings.database_url).set(drivername="postgresql")
        self.pool = AsyncConnectionPool(
            url.render_as_string(hide_password=False), min_size=1, max_size=settings.db_read_pool_size,
            timeout=settings.db_pool_timeout_seconds, kwargs={"autocommit": True}, open=False)
        self.client = client
        self._live: dict[str, tuple[float, int | None]] = {}
        self._reading: dict[str, asyncio.Task[int | None]] = {}
        # Each shares the pool; together they never hold more than its connections.
        self.jobs: BatchedLookup[tuple[str, str], JobRow] = BatchedLookup(
            self._fetch_jobs, max_in_flight=settings.db_read_pool_size)
        self.keys: BatchedLookup[str, Any] = BatchedLookup(
            self._fetch_keys, max_in_flight=settings.db_read_pool_size)
        self.key_jobs: BatchedLookup[tuple[str, str], tuple[Any, JobRow | None]] = BatchedLookup(
            self._fetch_key_jobs, max_in_flight=settings.db_read_pool_size)

    @staticmethod
    def supports(settings: Settings) -> bool:
        return make_url(settings.database_url).get_backend_name() == "postgresql"

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await asyncio.gather(*self._reading.values(), return_exceptions=True)
        await self.jobs.close()
        await self.keys.close()
        await self.key_jobs.close()
        await self.pool.close()

    async def job(self, *, owner: str, job_id: str) -> JobRow | None:
        """The owner's job (its row as an object with Job's attributes), or None."""
        return await self.jobs.get((job_id, owner)) if is_id(job_id) else None

    async def key(self, hashed: str) -> Any:
        """The api_keys row of this key hash (an object with ApiKey's attributes), or None."""
        return await self.keys.get(hashed)

    async def key_and_job(self, hashed: str, job_id: str) -> tuple[Any, JobRow | None]:
        """(the api_keys row of this key hash or None, the key's owner's job of that id or None), read in one
        round trip: the route every dashboard polls pays for its key check no second query."""
        found = await self.key_jobs.get((hashed, job_id if is_id(job_id) else ""))
        return found if found is not None else (None, None)

    async def _fetch_key_jobs(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, Any]]:
        rows = await self._query(_KEY_AND_JOB.sql, {"hashes": [h for h, _ in pairs], "ids": [j for _, j in pairs]})
        found = {}
        for row in rows:
            pair, key_row, job = _KEY_AND_JOB.split(row)
            found[pair] = (key_row, job)
        return found

    async def _rows(self, rows_by: _RowsBy, values: list[Any]) -> list[Any]:
        return rows_by.objects(await self._query(rows_by.sql, {"values": values}))

    async def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
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

    async def _fetch_jobs(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], JobRow]:
        wanted = set(keys)
        found = {}
        for job in await self._rows(_JOBS, [job_id for job_id, _ in keys]):
            if (job.id, job.owner) in wanted:  # not another owner's job of that id
                found[job.id, job.owner] = job
        return found

    async def _fetch_keys(self, hashes: list[str]) -> dict[str, Any]:
        return {row.key_hash: row for row in await self._rows(_KEYS, hashes)}

    async def live_step(self, job: JobRow) -> int | None:
        """As app.jobs.service.live_steps: steps done according to the loss stream, for a running job.

        Read from Redis at most once per LIVE_STEP_SECONDS per job and process: the stream itself only
        advances a chunk at a time (every loss_flush_seconds, 0.2 s by default), so many clients polling one
        running job share one read without seeing it later than a chunk's worth. Requests that find the step
        out of date while it is being read wait for that read rather than sending their own."""
        if job.status != JobStatus.running:
            return None
        cached = self._live.get(job.id)
        if cached is not None and time.monotonic() - cached[0] < LIVE_STEP_SECONDS:
            return cached[1]
        reading = self._reading.get(job.id)
        if reading is None:
            reading = self._reading[job.id] = asyncio.get_running_loop().create_task(self._read_live_step(job.id))
        # Shielded: a request that goes (its client disconnected) does not cancel the read the others wait for.
        return await asyncio.shield(reading)

    async def _read_live_step(self, job_id: str) -> int | None:
        started = time.monotonic()  # the step is as old as the read's start
        try:
            last = await LossStream.last_step_async(self.client, job_id)
        except RedisError:
            return None
        finally:
            del self._reading[job_id]
        step = None if last is None else last + 1
        if len(self._live) >= LIVE_STEP_ENTRIES:
            self._live = {k: v for k, v in self._live.items() if started - v[0] < LIVE_STEP_SECONDS}
        self._live[job_id] = (started, step)
        return step


class SqliteKeys:
    """The API key lookup of the embedded mode (SQLite), on the event loop: one indexed read of a local file in
    WAL mode takes tens of microseconds, less than the hop to a worker thread and an ORM session would (which
    halved /predict's throughput). A read-only connection of its own, reading only what app.accounts.keys.principal_of
    needs; datetimes are only tested for NULL."""

    COLUMNS = ("id", "owner", "admin", "limits", "revoked_at", "key_hash")

    def __init__(self, path: str):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                    isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=5000")

    @staticmethod
    def path_of(settings: Settings) -> str | None:
        return sqlite_file(settings.database_url)

    async def fetch(self, hashes: list[str]) -> dict[str, Any]:
        marks = ",".join("?" * len(hashes))
        rows = self.conn.execute(f"SELECT {', '.join(self.COLUMNS)} FROM {ApiKey.__tablename__} "
                                 f"WHERE key_hash IN ({marks})", hashes).fetchall()
        found = {}
        for key_id, owner, admin, limits, revoked_at, hashed in rows:
            found[hashed] = SimpleNamespace(id=key_id, owner=owner, admin=bool(admin), revoked_at=revoked_at,
                                            limits=json.loads(limits) if limits else None)
        return found

    def close(self) -> None:
        self.conn.close()

"""The read every dashboard and script polls, GET /jobs/{id}, on PostgreSQL without a thread or the ORM:
an asyncio psycopg pool on the event loop, one prepared statement, the job's live step from Redis's asyncio
client. Measured here (one API process, 16 clients): 540 req/s through SQLAlchemy's ORM on the threadpool,
about 2,700 for the same read this way.

The statement is compiled from app.tables' Job table, so the columns have one home; the row becomes a plain
object with the Job's attributes (building an ORM instance cost more than the query), so JobPublic.of serves
both paths. With SQLite (the embedded mode) routes use app.db instead.
"""

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import redis.asyncio
from psycopg import OperationalError
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError
from sqlalchemy import any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from app.config import Settings
from app.errors import Unavailable
from app.loss_stream import LossStream
from app.read_batching import BatchedLookup
from app.schemas import JobRow
from app.tables import Job, JobStatus

_TABLE = Job.__table__
# How long a running job's live step (the last step in its loss stream) is reused; how many jobs are kept.
LIVE_STEP_SECONDS = 0.05
LIVE_STEP_ENTRIES = 4096
# Concurrent reads go out together (app.read_batching); owners are matched to their ids here.
_STATEMENT = select(_TABLE).where(_TABLE.c.id == any_(bindparam("ids")))


def _sql() -> str:
    compiled = _STATEMENT.compile(dialect=postgresql.psycopg.dialect())
    return str(compiled)


class JobReads:
    def __init__(self, settings: Settings, client: redis.asyncio.Redis):
        url = make_url(settings.database_url).set(drivername="postgresql")
        self.pool = AsyncConnectionPool(
            url.render_as_string(hide_password=False), min_size=1, max_size=settings.db_read_pool_size,
            timeout=settings.db_pool_timeout_seconds, kwargs={"autocommit": True}, open=False)
        self.client = client
        self.sql = _sql()
        self.keys = [c.key for c in _TABLE.columns]
        self._live: dict[str, tuple[float, int | None]] = {}
        self.jobs: BatchedLookup[tuple[str, str], JobRow] = BatchedLookup(
            self._fetch_jobs, max_in_flight=settings.db_read_pool_size)

    @staticmethod
    def supports(settings: Settings) -> bool:
        return make_url(settings.database_url).get_backend_name() == "postgresql"

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.jobs.close()
        await self.pool.close()

    async def job(self, *, owner: str, job_id: str) -> JobRow | None:
        """The owner's job (its row as an object with Job's attributes), or None."""
        return await self.jobs.get((job_id, owner))

    async def _fetch_jobs(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], JobRow]:
        wanted = set(keys)
        for attempt in (1, 2):  # a read: retried once on a connection that died (a database restart)
            try:
                async with self.pool.connection() as conn:
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(self.sql, {"ids": [job_id for job_id, _ in keys]}, prepare=True)
                    rows = await cursor.fetchall()
                break
            except PoolTimeout:
                raise Unavailable("the server is at its limit of database connections; retry after the time "
                                  "in the Retry-After header") from None
            except OperationalError:
                if attempt == 2:
                    raise Unavailable("the database is unreachable; try again shortly") from None
        found: dict[tuple[str, str], JobRow] = {}
        for row in rows:
            values: dict[str, Any] = dict(zip(self.keys, row, strict=True))
            key = (values["id"], values["owner"])
            if key not in wanted:  # another owner's job of that id
                continue
            for name, value in values.items():
                if isinstance(value, datetime):
                    values[name] = value.astimezone(UTC)
            found[key] = cast(JobRow, SimpleNamespace(**values))
        return found

    async def live_step(self, job: JobRow) -> int | None:
        """As app.jobs.live_steps: steps done according to the loss stream, for a running job.

        Read from Redis at most once per LIVE_STEP_SECONDS per job and process: the stream itself only
        advances a chunk at a time (every loss_flush_seconds, 0.2 s by default), so many clients polling one
        running job share one read without seeing it later than a chunk's worth."""
        if job.status != JobStatus.running:
            return None
        now = time.monotonic()
        cached = self._live.get(job.id)
        if cached is not None and now - cached[0] < LIVE_STEP_SECONDS:
            return cached[1]
        try:
            last = await LossStream.last_step_async(self.client, job.id)
        except RedisError:
            return None
        step = None if last is None else last + 1
        if len(self._live) >= LIVE_STEP_ENTRIES:
            self._live = {k: v for k, v in self._live.items() if now - v[0] < LIVE_STEP_SECONDS}
        self._live[job.id] = (now, step)
        return step

"""GET /jobs/{id}'s reads: the request's key and the job in one statement (one round trip: the route every dashboard
polls pays for its key check no second query), batched with the concurrent requests' (app.core.reads), and the job's
live step from Redis, shared by the polls that want it at once."""

import asyncio
import time
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError
from sqlalchemy import Select, select
from sqlalchemy.sql import FromClause

from app.accounts.keys import PRINCIPAL_COLUMNS, PRINCIPAL_NAMES
from app.core.batched_reads import BatchedLookup
from app.core.loss_stream import LossStream
from app.core.reads import Query, Reads, column_names, namespace
from app.core.tables import ApiKey, Job, JobStatus, is_id
from app.jobs.schemas import JobRow
from app.jobs.service import owned_job

# How long a running job's live step (the last step in its loss stream) is reused; how many jobs are kept.
LIVE_STEP_SECONDS = 0.05
LIVE_STEP_ENTRIES = 4096

JOBS = Job.__table__
JOB_NAMES = column_names(JOBS.columns)


def _key_and_job(r: FromClause) -> Select[Any]:
    # LEFT JOIN: a key without that job still authenticates (and the answer is 404).
    return (select(r.c.key_hash, r.c.job_id, *PRINCIPAL_COLUMNS, JOBS)
            .select_from(r.join(ApiKey.__table__, ApiKey.key_hash == r.c.key_hash)
                         .outerjoin(JOBS, owned_job(owner=ApiKey.owner, job_id=r.c.job_id))))


def _owner_and_job(r: FromClause) -> Select[Any]:
    return select(r.c.owner, r.c.job_id, JOBS).select_from(r.join(JOBS, owned_job(owner=r.c.owner, job_id=r.c.job_id)))


KEY_AND_JOB = Query(("key_hash", "job_id"), _key_and_job)
OWNER_AND_JOB = Query(("owner", "job_id"), _owner_and_job)
_KEY_COLUMNS = len(PRINCIPAL_COLUMNS)


class JobReads:
    """The reads of GET /jobs/{id}, for one API process."""

    def __init__(self, reads: Reads, client: redis.asyncio.Redis):
        self.reads, self.client = reads, client
        self._live: dict[str, tuple[float, int | None]] = {}
        self._reading: dict[str, asyncio.Task[int | None]] = {}
        self.key_jobs: BatchedLookup[tuple[str, str], tuple[Any, JobRow | None]] = BatchedLookup(
            self._fetch_key_jobs, max_in_flight=reads.capacity)
        self.owner_jobs: BatchedLookup[tuple[str, str], JobRow] = BatchedLookup(
            self._fetch_owner_jobs, max_in_flight=reads.capacity)

    async def close(self) -> None:
        await asyncio.gather(*self._reading.values(), return_exceptions=True)
        await self.key_jobs.close()
        await self.owner_jobs.close()

    async def key_and_job(self, hashed: str, job_id: str) -> tuple[Any, JobRow | None]:
        """(the api_keys row of this key hash or None, the key's owner's job of that id or None)."""
        found = await self.key_jobs.get((hashed, job_id if is_id(job_id) else ""))
        return found if found is not None else (None, None)

    async def job(self, *, owner: str, job_id: str) -> JobRow | None:
        """The owner's job of that id (its row as an object with Job's attributes), or None."""
        return await self.owner_jobs.get((owner, job_id)) if is_id(job_id) else None

    async def _fetch_key_jobs(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, Any]]:
        found = {}
        for row in await self.reads.rows(KEY_AND_JOB, pairs):
            key_row = namespace(PRINCIPAL_NAMES, row[2:2 + _KEY_COLUMNS])
            job_values = row[2 + _KEY_COLUMNS:]
            found[row[0], row[1]] = (key_row, namespace(JOB_NAMES, job_values) if job_values[0] is not None else None)
        return found

    async def _fetch_owner_jobs(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        return {(row[0], row[1]): namespace(JOB_NAMES, row[2:]) for row in await self.reads.rows(OWNER_AND_JOB, pairs)}

    async def live_step(self, job: JobRow) -> int | None:
        """Steps done according to the loss stream (ahead of the database, which the worker updates per epoch),
        for a running job.

        Read from Redis at most once per LIVE_STEP_SECONDS per job and process: the stream itself only advances a
        chunk at a time (every loss_flush_seconds, 0.2 s by default), so many clients polling one running job share
        one read without seeing it later than a chunk's worth. Requests that find the step out of date while it is
        being read wait for that read rather than sending their own."""
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

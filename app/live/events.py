"""A job's live events for GET /jobs/{id}/events (Server-Sent Events): `loss` (a chunk of per-batch losses),
`epoch` (a row of the job's metrics), `status` (each transition), then `end` (the final job), after which
the stream closes.

Every frame's id is the client's whole position (last loss step, last epoch, last status and attempt sent),
so a client that reconnects with Last-Event-ID continues with no gap and no duplicate, and a finished job
replays from the database the same way. Losses come as they are handed over: the stream waits on the job's
Redis Stream with XREAD BLOCK (milliseconds after a worker appends); the job's row and metrics are read
again once a second, and at the end, after the worker persisted everything, once more.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from app.core import cursors
from app.core.db import Database
from app.core.errors import BadCursor
from app.core.loss_stream import LossRecord, LossStream
from app.core.tables import TERMINAL, Job, JobStatus
from app.jobs import service as jobs
from app.jobs.schemas import EpochMetricPublic, JobPublic

# How often the job's row and metrics are read again (status, epochs) while the stream waits for losses.
ROW_SECONDS = 1.0
# Losses per frame (and per read of the record).
CHUNK = 10_000


@dataclass(frozen=True)
class Position:
    """What the client has been sent: the last loss step, the last epoch, the last status and its attempt."""

    step: int = -1
    epoch: int = 0
    status: str = ""
    attempt: int = -1

    def event_id(self) -> str:
        return cursors.encode_events(self.step, self.epoch, self.status, self.attempt)

    @classmethod
    def of(cls, last_event_id: str | None) -> "Position":
        if not last_event_id:
            return cls()
        try:
            return cls(*cursors.decode_events(last_event_id.strip()))
        except BadCursor:
            shown = last_event_id[:60]
            raise BadCursor(f"Last-Event-ID {shown!r} is not the id of a frame of this stream: send the id of the "
                            "last frame received unchanged, or no Last-Event-ID to start from the beginning") from None


@dataclass(frozen=True)
class Frame:
    event: str  # "" for a keep-alive comment
    data: str  # JSON
    id: str


KEEPALIVE = Frame("", "", "")


@dataclass(frozen=True)
class _Snapshot:
    job: Job
    metrics: list[EpochMetricPublic]
    losses: list[LossRecord]
    more: bool  # losses past these are already recorded


def _losses_frame(records: list[LossRecord], at: Position) -> tuple[Frame, Position]:
    moved = replace(at, step=records[-1].step)
    data = JobEvents.losses_json(records)
    return Frame("loss", data, moved.event_id()), moved


class JobEvents:
    """The frames of one job for one client, from `position` on."""

    def __init__(self, *, db: Database, client: redis.asyncio.Redis, sync_client: Any, owner: str, job_id: str,
                 position: Position, keepalive_seconds: float):
        self.db, self.client, self.sync_client = db, client, sync_client
        self.owner, self.job_id, self.position = owner, job_id, position
        self.keepalive_seconds = keepalive_seconds

    @staticmethod
    def losses_json(records: list[LossRecord]) -> str:
        # Built by hand: a chunk holds up to 10,000 points, and this is the stream's hot path.
        points = ",".join(f'{{"step":{r.step},"epoch":{r.epoch},"batch":{r.batch},"loss":{_number(r.loss)},'
                          f'"t":{_number(r.t)}}}' for r in records)
        return f'{{"losses":[{points}]}}'

    def _snapshot(self, session: Session, *, at: Position) -> _Snapshot:
        job = jobs.get_job(session=session, owner=self.owner, job_id=self.job_id)
        rows = [EpochMetricPublic.model_validate(m) for m in jobs.epoch_metrics(session=session, job_id=job.id)
                if m.epoch > at.epoch]
        losses = jobs.read_losses(session=session, client=self.sync_client, job_id=job.id, after=at.step,
                                  limit=CHUNK)
        session.expunge(job)
        return _Snapshot(job, rows, losses, more=len(losses) == CHUNK)

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until the job has ended and everything was sent; raises NotFound for a job not the owner's."""
        at = self.position
        next_row = 0.0
        quiet_since = time.monotonic()
        while True:
            if time.monotonic() - quiet_since >= self.keepalive_seconds:
                # A comment line now and then: proxies and load balancers keep an idle stream open.
                quiet_since = time.monotonic()
                yield KEEPALIVE
            if time.monotonic() >= next_row:
                snapshot = await self.db.read(partial(self._snapshot, at=at))
                job = snapshot.job
                ended = job.status in TERMINAL
                if not ended and (job.status, job.attempt) != (at.status, at.attempt):
                    at = replace(at, status=job.status, attempt=job.attempt)
                    yield Frame("status", _status_json(job), at.event_id())
                if snapshot.losses:
                    frame, at = _losses_frame(snapshot.losses, at)
                    yield frame
                for row in snapshot.metrics:
                    at = replace(at, epoch=row.epoch)
                    yield Frame("epoch", row.model_dump_json(), at.event_id())
                if snapshot.more:
                    continue  # a long record (a finished job's replay): read on at once
                if ended:
                    # The worker persisted every loss and metric before it recorded the end: all were sent.
                    if (job.status, job.attempt) != (at.status, at.attempt):
                        at = replace(at, status=job.status, attempt=job.attempt)
                        yield Frame("status", _status_json(job), at.event_id())
                    yield Frame("end", JobPublic.of(job).model_dump_json(), at.event_id())
                    return
                next_row = time.monotonic() + ROW_SECONDS
            wait_ms = max(1, int((next_row - time.monotonic()) * 1000))
            try:
                fresh = await LossStream.wait_after(self.client, self.job_id, after=at.step, block_ms=wait_ms)
            except RedisError:
                # Redis is unreachable: wait as XREAD would have; the next snapshot sends what the database has
                # (the losses up to the last epoch).
                await asyncio.sleep(wait_ms / 1000)
                fresh = []
            contiguous = _contiguous(fresh, after=at.step)
            if contiguous and at.status != JobStatus.running:
                # The first losses of a run: its status first (the row, then these losses from the record), so
                # a client never sees a queued job's losses.
                next_row = 0.0
                continue
            if contiguous:
                frame, at = _losses_frame(contiguous, at)
                quiet_since = time.monotonic()
                yield frame
            if len(contiguous) < len(fresh):
                next_row = 0.0  # a gap (the stream was trimmed or flushed): take the record's word for it


def _contiguous(records: list[LossRecord], *, after: int) -> list[LossRecord]:
    """The records that continue step `after` without a gap."""
    for i, record in enumerate(records):
        if record.step != after + 1 + i:
            return records[:i]
    return records


def _number(value: float) -> str:
    text = repr(value)
    return text if text not in ("nan", "inf", "-inf") else "null"


def _status_json(job: Job) -> str:
    public = JobPublic.of(job)
    return public.model_dump_json(include={"status", "attempt", "progress", "error", "started_at",
                                           "finished_at", "cancel_requested"})

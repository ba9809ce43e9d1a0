"""The jobs this API process serves: looked up in the database and loaded once, then served from memory.

A succeeded job changes only by being deleted, so a request does not read its row, validate its spec or
stat its weights file again: an entry is checked again (row and file) once it is `recheck_seconds` old,
and the route that deletes a job evicts it at once in its own process. Another API process stops serving
a deleted job within recheck_seconds; weights retrained in place (a new mtime) are reloaded then too.
"""

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.db import Database
from app.jobs import service as jobs
from app.serving.batching import Batcher
from app.serving.predictor import Model, Predictor, Work
from spec.datasets import DatasetInfo
from spec.job import JobSpec


@dataclass(frozen=True)
class _Entry:
    model: Model
    checked_at: float


class ServedModels:
    """An LRU of at most `capacity` loaded models and `max_bytes` of their weights, per (owner, job id);
    concurrent misses of one key load it once. The newest model stays even when it alone is over max_bytes."""

    def __init__(self, *, predictor: Predictor, db: Database, capacity: int, recheck_seconds: float,
                 max_bytes: int | None = None):
        self.predictor = predictor
        self.db = db
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.recheck_seconds = recheck_seconds
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[Model]] = {}

    async def get(self, *, owner: str, job_id: str) -> Model:
        """The job's model, if the owner has a succeeded job of that id (NotFound, Conflict otherwise)."""
        key = (owner, job_id)
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry.checked_at < self.recheck_seconds:
            self._entries.move_to_end(key)
            return entry.model
        if (pending := self._loading.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Model] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            model = await self._check(owner, job_id, entry.model if entry else None)
        except BaseException as e:
            self._entries.pop(key, None)
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(model)
            self._entries[key] = _Entry(model, time.monotonic())
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity or (
                    len(self._entries) > 1 and self.max_bytes is not None and self.weight_bytes() > self.max_bytes):
                self._entries.popitem(last=False)
            return model
        finally:
            del self._loading[key]

    async def _check(self, owner: str, job_id: str, current: Model | None) -> Model:
        def lookup(session: Session) -> tuple[JobSpec, DatasetInfo]:
            job = jobs.succeeded_job(session=session, owner=owner, job_id=job_id)
            spec = jobs.job_spec(job)
            return spec, jobs.job_dataset(job, spec)

        spec, info = await self.db.read(lookup)
        if current is not None and await run_in_threadpool(self.predictor.weights_mtime, job_id) == \
                current.weights_mtime_ns:
            return current
        return await run_in_threadpool(lambda: self.predictor.load(job_id=job_id, spec=spec, info=info))

    def weight_bytes(self) -> int:
        return sum(entry.model.weight_bytes for entry in self._entries.values())

    def evict(self, job_id: str) -> None:
        for key in [k for k in self._entries if k[1] == job_id]:
            del self._entries[key]


async def get_served(request: Request) -> ServedModels:
    served: ServedModels = request.app.state.served
    return served


ServedDep = Annotated[ServedModels, Depends(get_served)]


PredictBatcher = Batcher[Work, np.ndarray]


def open_serving(settings: Settings, db: Database) -> tuple[ServedModels, PredictBatcher]:
    """An API process's models (loaded on first use) and its running batcher (app.serving.batching)."""
    predictor = Predictor(artifacts=settings.artifacts_path, max_pixels=settings.predict_max_pixels,
                          max_request_pixels=settings.predict_max_request_pixels, threads=settings.predict_threads)
    served = ServedModels(predictor=predictor, db=db, capacity=settings.predict_cache_size,
                          recheck_seconds=settings.predict_recheck_seconds, max_bytes=settings.predict_cache_bytes)
    batcher: PredictBatcher = Batcher(
        predictor.run, max_batch=settings.predict_batch_max_images,
        max_delay=settings.predict_batch_max_delay_ms / 1000, max_queue=settings.predict_queue_max_images)
    batcher.start()
    return served, batcher

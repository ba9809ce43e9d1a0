"""Dynamic batching, as TorchServe and Triton do it: concurrent requests go through the network together.

Requests queue here (bounded: past max_queue images a request is refused with 503 and Retry-After); one
inference thread per API process takes, whenever it is free, everything queued for one model up to
max_batch images and runs it as one batch. An idle server therefore adds no delay: a lone request is
taken at once. Under load, requests that arrive while a batch runs form the next one. With max_delay > 0
a batch that is not full also waits up to max_delay for requests already being received (their bodies
still arriving), never when no other request is in flight.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from app.core.errors import DomainError, PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)


class Batchable(Protocol):
    @property
    def model(self) -> object: ...  # works of one model (by identity) may share a batch

    @property
    def size(self) -> int: ...  # images or tensors in it


W = TypeVar("W", bound=Batchable)
R = TypeVar("R")


@dataclass(eq=False)
class _Pending(Generic[W, R]):
    work: W
    future: asyncio.Future[R] = field(repr=False)


class Batcher(Generic[W, R]):
    """`run(works)` answers, for each work, its result or the DomainError that refuses it."""

    def __init__(self, run: Callable[[list[W]], list[R | DomainError]], *, max_batch: int, max_delay: float,
                 max_queue: int):
        self.run = run
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self._queue: deque[_Pending[W, R]] = deque()
        self._queued_images = 0
        self._receiving = 0  # requests between arrival and submit (reading and parsing their bodies)
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Unavailable("the server is shutting down; retry shortly"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    def receiving(self) -> "_Receiving[W, R]":
        """Wrap the reading of a request that will submit: lets a waiting batch know more is coming."""
        return _Receiving(self)

    async def submit(self, work: W) -> R:
        """The probabilities for this work, once its batch ran; the DomainError that refused it otherwise."""
        if work.size > self.max_batch:
            raise PayloadTooLarge(f"{work.size} inputs in one request; at most {self.max_batch} are accepted")
        if self._queued_images + work.size > self.max_queue:
            raise Unavailable(f"the prediction queue is full ({self._queued_images} images waiting); retry "
                              "after the time in the Retry-After header")
        pending: _Pending[W, R] = _Pending(work, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_images += work.size
        self._wakeup.set()
        return await pending.future

    def _take(self) -> list[_Pending[W, R]]:
        """The oldest pending work and the others queued for its model, up to max_batch images, in order."""
        first = self._queue.popleft()
        batch, size, rest = [first], first.work.size, deque[_Pending[W, R]]()
        while self._queue:
            pending = self._queue.popleft()
            if pending.work.model is first.work.model and size + pending.work.size <= self.max_batch:
                batch.append(pending)
                size += pending.work.size
            else:
                rest.append(pending)
        self._queue.extendleft(reversed(rest))
        self._queued_images -= size
        return batch

    async def _fill(self, batch: list[_Pending[W, R]]) -> None:
        """Wait up to max_delay for requests being received to join this batch (never when none is)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        model = batch[0].work.model
        size = sum(p.work.size for p in batch)
        while size < self.max_batch and self._receiving > 0 and (remaining := deadline - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            for pending in [p for p in self._queue if p.work.model is model]:
                if size + pending.work.size > self.max_batch:
                    break
                self._queue.remove(pending)
                self._queued_images -= pending.work.size
                batch.append(pending)
                size += pending.work.size

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            if self.max_delay > 0:
                await self._fill(batch)
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            results: list[R | DomainError] | list[Exception]
            try:
                results = await loop.run_in_executor(self._executor, self.run, [p.work for p in batch])
            except Exception as e:  # a bug, not a request's fault: fail this batch, keep serving
                log.exception("prediction batch of %d requests failed", len(batch))
                results = [e] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)


class _Receiving(Generic[W, R]):
    def __init__(self, batcher: "Batcher[W, R]"):
        self.batcher = batcher

    def __enter__(self) -> None:
        self.batcher._receiving += 1

    def __exit__(self, *exc: object) -> None:
        self.batcher._receiving -= 1

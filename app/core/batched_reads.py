"""Lookups by key that concurrent requests share: dynamic batching for database reads.

While max_in_flight queries are out, new lookups wait; when one returns, everything waiting goes out as the
next query (`WHERE id = ANY(...)`), each distinct key once. A lookup that finds a free slot goes out at once,
so an idle server adds no delay; under load one round trip answers tens of requests, which is what keeps
GET /jobs/{id} fast when a few processes take thousands of polls a second.

Every answer is read after its request arrived: a lookup only joins a query that has not been sent yet, so a
client that wrote (cancelled a job, say) and then reads sees its write.
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchedLookup(Generic[K, V]):
    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_in_flight: int,
                 max_batch: int = 256):
        self.fetch = fetch
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V | None:
        """The value fetched for key (None: the query did not return it); raises what the query raised."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._in_flight < self.max_in_flight:
            self._send()
        return await future

    def _send(self) -> None:
        keys: list[K] = []
        for key in self._waiting:
            if len(keys) == self.max_batch:
                break
            keys.append(key)
        batch = {key: self._waiting.pop(key) for key in keys}
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self.fetch(list(batch))
        except BaseException as e:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        if isinstance(e, Exception):
                            future.set_exception(e)
                        else:  # cancelled (shutdown): so are the lookups it carried
                            future.cancel()
            if not isinstance(e, Exception):
                raise
        else:
            for key, futures in batch.items():
                value = found.get(key)
                for future in futures:
                    if not future.done():  # its request may have gone (client disconnected)
                        future.set_result(value)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._send()

    async def close(self) -> None:
        """Wait for the queries in flight (their requests are answered)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

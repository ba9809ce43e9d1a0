"""BatchedLookup: concurrent lookups share queries, never an answer read before they arrived."""

import asyncio

import pytest

from app.core.batched_reads import BatchedLookup


class Store:
    """A key-value 'database' whose queries block until the test releases them, recording each batch."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.batches.append(keys)
        snapshot = dict(self.values)  # what the query reads: the state when it was sent
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {k: snapshot[k] for k in keys if k in snapshot}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_lookup_goes_out_at_once_and_waiting_ones_go_together():
    async def scenario() -> None:
        store = Store()
        store.values = {"a": 1, "b": 2}
        lookup = BatchedLookup(store.fetch, max_in_flight=1)
        first = asyncio.ensure_future(lookup.get("a"))
        await settle()
        assert store.batches == [["a"]]  # sent alone, without waiting for company
        rest = [asyncio.ensure_future(lookup.get(k)) for k in ("b", "a", "b", "missing")]
        await settle()
        assert store.batches == [["a"]]  # the only slot is taken: they wait
        store.release.set()
        assert await first == 1
        assert await asyncio.gather(*rest) == [2, 1, 2, None]
        assert store.batches == [["a"], ["b", "a", "missing"]]  # one query, each distinct key once

    asyncio.run(scenario())


def test_a_lookup_never_gets_an_answer_read_before_it_arrived():
    async def scenario() -> None:
        store = Store()
        store.values = {"job": 1}
        lookup = BatchedLookup(store.fetch, max_in_flight=1)
        before = asyncio.ensure_future(lookup.get("job"))
        await settle()
        store.values = {"job": 2}  # a write commits while that query is out
        after = asyncio.ensure_future(lookup.get("job"))
        await settle()
        store.release.set()
        assert (await before, await after) == (1, 2)

    asyncio.run(scenario())


def test_an_error_reaches_every_lookup_of_its_batch_and_the_next_batch_still_runs():
    async def scenario() -> None:
        store = Store()
        store.values = {"a": 1}
        lookup = BatchedLookup(store.fetch, max_in_flight=1)
        store.fail = RuntimeError("database down")
        failing = [asyncio.ensure_future(lookup.get("a")) for _ in range(3)]
        await settle()
        store.release.set()
        for future in failing:
            with pytest.raises(RuntimeError, match="database down"):
                await future
        store.fail = None
        assert await lookup.get("a") == 1

    asyncio.run(scenario())


def test_a_cancelled_lookup_leaves_the_others_answered():
    async def scenario() -> None:
        store = Store()
        store.values = {"a": 1}
        lookup = BatchedLookup(store.fetch, max_in_flight=1)
        busy = asyncio.ensure_future(lookup.get("a"))
        await settle()
        gone, stays = asyncio.ensure_future(lookup.get("a")), asyncio.ensure_future(lookup.get("a"))
        await settle()
        gone.cancel()  # its client hung up
        store.release.set()
        assert (await busy, await stays) == (1, 1)
        await lookup.close()

    asyncio.run(scenario())

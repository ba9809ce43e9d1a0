"""app.serving.batching.Batcher: requests that arrive while a batch runs form the next one; a lone request never
waits; the queue is bounded; one request's error stays its own."""

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from app.core.errors import BadImage, DomainError, PayloadTooLarge, Unavailable
from app.serving.batching import Batcher


@dataclass(frozen=True, eq=False)
class Item:
    model: object
    size: int
    name: str = ""


class Runner:
    """run(works) as the predictor's: one result per work (its name), or the error for a work named 'bad'.
    Blocks while `gate` is clear, to hold the inference thread busy."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, works: list[Item]) -> list[str | DomainError]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append([w.name for w in works])
        return [BadImage("broken") if w.name == "bad" else w.name for w in works]


def run(coro_fn, **options):  # noqa: ANN001, ANN003
    async def main():  # noqa: ANN202
        runner = Runner()
        batcher: Batcher[Item, str] = Batcher(runner, **{"max_batch": 8, "max_delay": 0.0, "max_queue": 32,
                                                          **options})
        batcher.start()
        try:
            return await coro_fn(batcher, runner)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_a_lone_request_runs_at_once_whatever_the_delay_setting():
    async def scenario(batcher: Batcher, runner: Runner) -> float:
        started = time.monotonic()
        assert await batcher.submit(Item("m", 1, "a")) == "a"
        return time.monotonic() - started

    # max_delay 5 s: a batch waits only for requests still being received, and there are none.
    assert run(scenario, max_delay=5.0) < 2.0


def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    model = object()

    async def scenario(batcher: Batcher, runner: Runner) -> list[list[str]]:
        runner.gate.clear()
        first = asyncio.ensure_future(batcher.submit(Item(model, 1, "first")))
        await asyncio.to_thread(runner.started.wait, 10)
        rest = [asyncio.ensure_future(batcher.submit(Item(model, 1, f"r{i}"))) for i in range(5)]
        await asyncio.sleep(0.05)
        runner.gate.set()
        assert await first == "first"
        assert await asyncio.gather(*rest) == [f"r{i}" for i in range(5)]
        return runner.batches

    assert run(scenario) == [["first"], [f"r{i}" for i in range(5)]]


def test_batches_hold_one_model_and_at_most_max_batch_inputs():
    a, b = object(), object()

    async def scenario(batcher: Batcher, runner: Runner) -> list[list[str]]:
        runner.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit(Item(a, 1, "blocker")))
        await asyncio.to_thread(runner.started.wait, 10)
        works = [Item(a, 3, "a1"), Item(b, 1, "b1"), Item(a, 3, "a2"), Item(a, 3, "a3"), Item(b, 2, "b2")]
        futures = [asyncio.ensure_future(batcher.submit(w)) for w in works]
        await asyncio.sleep(0.05)
        runner.gate.set()
        await blocker
        assert await asyncio.gather(*futures) == [w.name for w in works]
        return runner.batches

    batches = run(scenario)
    # Oldest first; a batch takes the oldest work's model only, up to 8 inputs (a3 would make 9).
    assert batches == [["blocker"], ["a1", "a2"], ["b1", "b2"], ["a3"]]


def test_a_bad_input_fails_its_own_request_only():
    model = object()

    async def scenario(batcher: Batcher, runner: Runner) -> None:
        runner.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit(Item(model, 1, "blocker")))
        await asyncio.to_thread(runner.started.wait, 10)
        good = asyncio.ensure_future(batcher.submit(Item(model, 1, "good")))
        bad = asyncio.ensure_future(batcher.submit(Item(model, 1, "bad")))
        await asyncio.sleep(0.05)
        runner.gate.set()
        await blocker
        assert await good == "good"
        with pytest.raises(BadImage):
            await bad
        assert runner.batches[-1] == ["good", "bad"]

    run(scenario)


def test_the_queue_is_bounded_and_oversized_work_refused():
    model = object()

    async def scenario(batcher: Batcher, runner: Runner) -> None:
        runner.gate.clear()
        blocker = asyncio.ensure_future(batcher.submit(Item(model, 8, "blocker")))
        await asyncio.to_thread(runner.started.wait, 10)
        queued = [asyncio.ensure_future(batcher.submit(Item(model, 8, f"q{i}"))) for i in range(4)]
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="queue is full"):
            await batcher.submit(Item(model, 1, "one too many"))
        with pytest.raises(PayloadTooLarge, match="9 inputs in one request; at most 8"):
            await batcher.submit(Item(model, 9, "too big"))
        runner.gate.set()
        await blocker
        assert len(await asyncio.gather(*queued)) == 4

    run(scenario)


def test_with_a_delay_a_batch_waits_for_requests_being_received():
    model = object()

    async def scenario(batcher: Batcher, runner: Runner) -> list[list[str]]:
        async def late() -> str:
            with batcher.receiving():  # its body is still arriving when the first request is queued
                await asyncio.sleep(0.1)
            return await batcher.submit(Item(model, 1, "late"))

        late_task = asyncio.ensure_future(late())
        await asyncio.sleep(0.01)
        assert await batcher.submit(Item(model, 1, "early")) == "early"
        assert await late_task == "late"
        return runner.batches

    assert run(scenario, max_delay=2.0) == [["early", "late"]]

"""JobEvents.frames while nothing happens: a queued job's stream waits on Redis and reads the job's row once
per ROW_SECONDS, whether Redis answers or not (it must never spin on the database)."""

from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient

from app.core.db import Database
from app.live.events import KEEPALIVE, ROW_SECONDS, Frame, JobEvents, Position
from tests.app.harness import DEAD_REDIS_URL, ApiEnv

SPEC = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 1, "device": "cpu"}
FOLLOW_SECONDS = 2.5


class CountingDatabase(Database):
    reads = 0

    async def read(self, fn: Any) -> Any:
        self.reads += 1
        return await super().read(fn)


def follow(env: ApiEnv, job_id: str, *, async_redis_url: str) -> tuple[list[Frame], int]:
    db = CountingDatabase.from_settings(env.settings)

    async def main() -> list[Frame]:
        frames: list[Frame] = []
        client = redis.asyncio.from_url(async_redis_url)
        sync_client = redis.from_url(env.settings.redis_url)
        events = JobEvents(db=db, client=client, sync_client=sync_client, owner=env.owner, job_id=job_id,
                           position=Position(), keepalive_seconds=0.5)
        with anyio.move_on_after(FOLLOW_SECONDS):
            async for frame in events.frames():
                frames.append(frame)
        await client.aclose()
        sync_client.close()
        return frames

    try:
        return anyio.run(main), db.reads
    finally:
        db.engine.dispose()


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "redis-unreachable"])
def test_a_waiting_stream_reads_the_job_once_a_period(env: ApiEnv, client: TestClient, redis_up: bool):
    # No worker consumes these tests' queues: the job stays queued, with no loss yet (step -1).
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    frames, reads = follow(env, job_id, async_redis_url=env.settings.redis_url if redis_up else DEAD_REDIS_URL)

    assert [f.event for f in frames if f is not KEEPALIVE] == ["status"]
    assert '"status":"queued"' in frames[0].data
    assert sum(f is KEEPALIVE for f in frames) >= 2  # checked between waits, once per ROW_SECONDS at most
    # One snapshot per ROW_SECONDS (3 in 2.5 s); a loop that re-read at once after each refused XREAD made
    # hundreds.
    assert reads <= FOLLOW_SECONDS / ROW_SECONDS + 2, reads

"""app.jobs.reads: a running job's live step, read from the real Redis once for the polls that want it at once."""

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import redis
import redis.asyncio

from app.core.loss_stream import LossRecord, LossStream
from app.core.reads import open_reads
from app.core.redis_keys import stream_key
from app.core.tables import JobStatus
from app.jobs.reads import LIVE_STEP_SECONDS, JobReads
from tests.app.harness import ApiEnv


class CountedRedis(redis.asyncio.Redis):
    """The real client, counting its XREVRANGEs and making each take a while (a busy Redis, a slow network)."""

    calls = 0

    async def xrevrange(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        await asyncio.sleep(LIVE_STEP_SECONDS / 3)
        return await super().xrevrange(*args, **kwargs)


def test_polls_of_a_running_job_share_one_read_of_its_live_step(env: ApiEnv):
    job_id = uuid.uuid4().hex
    sync = redis.Redis.from_url(env.settings.redis_url)
    LossStream(sync).append(job_id, [LossRecord(step, 0, step, 0.5, 0.0) for step in range(42)])
    running = SimpleNamespace(id=job_id, status=JobStatus.running)
    queued = SimpleNamespace(id=job_id, status=JobStatus.queued)

    async def scenario() -> None:
        client = CountedRedis.from_url(env.settings.redis_url)
        database = await open_reads(env.settings)
        reads = JobReads(database, client)
        try:
            polls = [asyncio.create_task(reads.live_step(running)) for _ in range(32)]
            await asyncio.sleep(0.01)
            polls[0].cancel()  # its client went: the read the others wait for goes on
            done = await asyncio.gather(*polls, return_exceptions=True)
            assert isinstance(done[0], asyncio.CancelledError)
            assert done[1:] == [42] * 31 and CountedRedis.calls == 1
            assert await reads.live_step(running) == 42 and CountedRedis.calls == 1  # still fresh
            assert await reads.live_step(queued) is None and CountedRedis.calls == 1  # not running: no read

            sync.xadd(stream_key(job_id), {"epoch": 0, "batch": 42, "loss": 0.5, "t": 0.0}, id="42-1")
            await asyncio.sleep(LIVE_STEP_SECONDS)
            assert await asyncio.gather(*(reads.live_step(running) for _ in range(8))) == [43] * 8
            assert CountedRedis.calls == 2
        finally:
            await reads.close()
            await database.close()
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        sync.delete(stream_key(job_id))
        sync.close()

"""Per-batch losses in a Redis Stream per job. Entry ids encode the step, so reads by cursor are ranges.

An entry's id is "<step>-1": XRANGE from "<after+1>-0" returns exactly the steps after a cursor, and a
step written twice (a resumed job re-sending its tail) is refused by Redis instead of duplicated.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import ResponseError


@dataclass(frozen=True)
class LossRecord:
    step: int
    epoch: int
    batch: int
    loss: float
    t: float


def stream_key(job_id: str) -> str:
    return f"taas:job:{job_id}:loss"


def cancel_key(job_id: str) -> str:
    return f"taas:job:{job_id}:cancel"


class LossStream:
    """Writes and reads one Redis connection's loss streams."""

    def __init__(self, client: redis.Redis, maxlen: int = 200_000):
        self.client = client
        self.maxlen = maxlen

    def append(self, job_id: str, records: Iterable[LossRecord]) -> int:
        """XADD the records in one pipelined round trip; returns how many were new."""
        key = stream_key(job_id)
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for r in records:
            fields = {"epoch": r.epoch, "batch": r.batch, "loss": repr(r.loss), "t": repr(r.t)}
            pipe.xadd(key, fields, id=f"{r.step}-1", maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            n += 1
        if n == 0:
            return 0
        results = pipe.execute(raise_on_error=False)
        duplicate = sum(
            1 for res in results if isinstance(res, ResponseError) and "equal or smaller" in str(res)
        )
        for res in results:
            if isinstance(res, Exception) and not (
                isinstance(res, ResponseError) and "equal or smaller" in str(res)
            ):
                raise res
        return n - duplicate

    def read(self, job_id: str, *, after: int, limit: int) -> list[LossRecord]:
        """Up to `limit` records with step > after, in step order."""
        entries: Any = self.client.xrange(stream_key(job_id), min=f"{after + 1}-0", max="+", count=limit)
        return [_record(entry_id, fields) for entry_id, fields in entries]

    def last_step(self, job_id: str) -> int | None:
        entries: Any = self.client.xrevrange(stream_key(job_id), count=1)
        return _step(entries[0][0]) if entries else None

    @staticmethod
    async def last_step_async(client: redis.asyncio.Redis, job_id: str) -> int | None:
        """last_step on an asyncio client (the API's hot read, app.job_reads)."""
        entries: Any = await client.xrevrange(stream_key(job_id), count=1)
        return _step(entries[0][0]) if entries else None

    def delete(self, job_id: str) -> None:
        self.client.delete(stream_key(job_id), cancel_key(job_id))


def _step(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _record(entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> LossRecord:
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    return LossRecord(_step(entry_id), int(f["epoch"]), int(f["batch"]), float(f["loss"]), float(f["t"]))


def as_dicts(records: Sequence[LossRecord]) -> list[dict[str, float | int]]:
    return [asdict(r) for r in records]

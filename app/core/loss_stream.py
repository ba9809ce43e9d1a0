"""Per-batch losses in a Redis Stream per job. Entry ids encode the step, so reads by cursor are ranges.

An entry's id is "<step>-1": XRANGE from "<after+1>-0" returns exactly the steps after a cursor, and a
step written twice (a resumed job re-sending its tail) is refused by Redis instead of duplicated.

Workers append fenced: a job's lease key names the worker holding its lease, and a script adds entries only
for that worker. Without it, a worker that froze past its lease (SIGSTOP, a long pause, a partition) and
woke up ahead of the one that took the job over would add steps the new owner could then never write. The
key is set only by a worker that holds the job's row lock after checking its lease (at the claim, and
whenever its appends are refused: LossStream.fence), so the key always names the latest owner. A missing key
(Redis flushed or restarted without its data, or unreachable at the claim) refuses appends as a foreign
owner does: the writer then proves its lease in the database and sets the key again; trusting a missing key
would let any stale worker write after every Redis restart.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import ResponseError

from app.core.redis_keys import job_keys, lease_key, stream_key


@dataclass(frozen=True)
class LossRecord:
    step: int
    epoch: int
    batch: int
    loss: float
    t: float


# A safety net against keys of jobs whose worker died and that nobody deleted: an owner whose key expired
# mid-run is refused once and sets it again (see the module docstring), so expiry never blocks a writer.
LEASE_KEY_TTL_SECONDS = 24 * 3600
# Entries per script call: one call blocks Redis while it runs, so a long backlog goes in several.
FENCED_CHUNK = 1000

# KEYS: stream, lease key. ARGV: lease owner, maxlen, then id, epoch, batch, loss, t per entry.
# Returns how many entries were new, -1 when the lease key is missing, -2 when it names another owner.
_FENCED_XADD = """
local holder = redis.call('GET', KEYS[2])
if holder == false then return -1 end
if holder ~= ARGV[1] then return -2 end
local added = 0
for i = 3, #ARGV, 5 do
  local res = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i],
                          'epoch', ARGV[i + 1], 'batch', ARGV[i + 2], 'loss', ARGV[i + 3], 't', ARGV[i + 4])
  if type(res) == 'table' and res.err then
    if not string.find(res.err, 'equal or smaller', 1, true) then return redis.error_reply(res.err) end
  else
    added = added + 1
  end
end
return added
"""


class StreamFenced(Exception):
    """The job's stream refused our appends: its lease key is missing or names another lease owner."""

    def __init__(self, job_id: str, *, missing: bool):
        super().__init__(f"loss stream of job {job_id}: lease key {'missing' if missing else 'held by another'}")
        self.missing = missing


class LossStream:
    """Writes and reads one Redis connection's loss streams."""

    def __init__(self, client: redis.Redis, maxlen: int = 200_000):
        self.client = client
        self.maxlen = maxlen
        self._fenced_xadd = client.register_script(_FENCED_XADD)

    def fence(self, job_id: str, lease_owner: str) -> None:
        """Let only `lease_owner` append from now on. Call it only while holding the job's row lock with the
        lease checked (worker.leases.claims), and before that transaction commits: then no later owner can exist."""
        self.client.set(lease_key(job_id), lease_owner, ex=LEASE_KEY_TTL_SECONDS)

    def append_fenced(self, job_id: str, records: Sequence[LossRecord], *, lease_owner: str) -> int:
        """append() for the holder of the job's lease key, one round trip per FENCED_CHUNK records; returns
        how many were new. Raises StreamFenced when the key is missing or names another owner."""
        keys = [stream_key(job_id), lease_key(job_id)]
        added = 0
        for start in range(0, len(records), FENCED_CHUNK):
            args: list[str | int] = [lease_owner, self.maxlen]
            for r in records[start:start + FENCED_CHUNK]:
                args += [f"{r.step}-1", r.epoch, r.batch, repr(r.loss), repr(r.t)]
            # Called on the client, not in a pipeline: redis-py checks a pipeline's scripts with an extra
            # round trip on every execute.
            result = int(self._fenced_xadd(keys=keys, args=args))
            if result < 0:
                # Earlier chunks may have been added (the key changed in between): the caller re-proves its
                # lease and sends the whole batch again, and those entries are then refused as duplicates.
                raise StreamFenced(job_id, missing=result == -1)
            added += result
        return added

    def append(self, job_id: str, records: Iterable[LossRecord]) -> int:
        """XADD the records in one pipelined round trip, unfenced (tests, tools); returns how many were new."""
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
    async def wait_after(client: redis.asyncio.Redis, job_id: str, *, after: int, block_ms: int,
                         limit: int = 10_000) -> list[LossRecord]:
        """The records with step > after, waiting up to block_ms for the first of them (XREAD BLOCK: it returns
        as soon as a worker appends, so a live client sees a chunk milliseconds after it was handed over)."""
        start = f"{after}-1" if after >= 0 else "0-0"  # "-1-1" is no stream id: Redis refuses it
        found: Any = await client.xread({stream_key(job_id): start}, count=limit, block=block_ms)
        return [_record(entry_id, fields) for _, entries in found or () for entry_id, fields in entries]

    @staticmethod
    async def last_step_async(client: redis.asyncio.Redis, job_id: str) -> int | None:
        """last_step on an asyncio client (the API's hot read, app.jobs.reads)."""
        entries: Any = await client.xrevrange(stream_key(job_id), count=1)
        return _step(entries[0][0]) if entries else None

    def truncate(self, job_id: str, from_step: int) -> int:
        """Delete the entries with step >= from_step and let those steps be added again (a resumed attempt
        replays them); returns how many were deleted."""
        key = stream_key(job_id)
        if from_step == 0:
            deleted: Any = self.client.delete(key)
            return int(deleted)
        dropped = 0
        while True:
            entries: Any = self.client.xrange(key, min=f"{from_step}-0", max="+", count=1000)
            if not entries:
                break
            removed: Any = self.client.xdel(key, *[entry_id for entry_id, _ in entries])
            dropped += int(removed)
        if self.client.exists(key):
            # XDEL leaves the stream's last id where it was; XADD only accepts ids above it.
            self.client.execute_command("XSETID", key, f"{from_step - 1}-1")
        return dropped

    def delete(self, job_id: str) -> None:
        self.client.delete(*job_keys(job_id))


def _step(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _record(entry_id: bytes | str, fields: dict[bytes | str, bytes | str]) -> LossRecord:
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    return LossRecord(_step(entry_id), int(f["epoch"]), int(f["batch"]), float(f["loss"]), float(f["t"]))


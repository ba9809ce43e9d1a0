"""Workers' liveness in Redis: each worker beats (worker.beat, on its timer) and the API reads the beats' ages
(app.live.metrics: taas_workers_alive). The one home of the beats' Redis key."""

import logging

import redis
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.redis_client import redis_client
from app.core.redis_keys import workers_key

log = logging.getLogger(__name__)

# Worker liveness. Each worker beats into one sorted set per deployment (queue prefix): member its Celery
# hostname, score the Redis server's clock at the beat, so a worker host's clock never makes it look dead.
# One key rather than a key per worker: a scrape reads it in one command, not by SCAN over every key.
# Beats older than this are dropped (and the set expires with them), so departed workers' names do not pile up.
BEAT_FORGET_SECONDS = 3600

# KEYS: the set. ARGV: the worker, BEAT_FORGET_SECONDS. Returns the beat's time.
_BEAT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tostring(t)
"""


class WorkerBeat:
    """A worker's liveness beat: beat() at start and every heartbeat_seconds, forget() at a clean stop."""

    def __init__(self, worker: str, settings: Settings) -> None:
        self.worker, self.key = worker, workers_key(settings.queue_prefix)
        self.client = redis_client(settings)
        self._beat = self.client.register_script(_BEAT)

    def beat(self) -> None:
        try:
            self._beat(keys=[self.key], args=[self.worker, BEAT_FORGET_SECONDS])
        except RedisError as e:  # the next beat tries again; missing ones show as the beat's age
            log.warning("worker %s: liveness beat not recorded: %s", self.worker, e)

    def forget(self) -> None:
        """This worker stops: not alive any more (rather than for lease_seconds after its last beat)."""
        try:
            self.client.zrem(self.key, self.worker)
        except RedisError as e:
            log.warning("worker %s: liveness beat not removed: %s", self.worker, e)
        self.client.close()


def worker_beat_ages(client: redis.Redis, settings: Settings) -> list[tuple[str, float]]:
    """(worker, seconds since its last beat) of every worker that beat within BEAT_FORGET_SECONDS."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(workers_key(settings.queue_prefix), 0, -1, withscores=True)
        (seconds, micros), beats = pipe.execute()
    now = seconds + micros / 1_000_000
    return [(name.decode(errors="replace"), max(0.0, now - at)) for name, at in beats]

"""A running job's heartbeat: its lease kept alive (worker.leases.keeper), and a watch for a cancel request, off
the training thread. The engine only reads `stop` (a flag) between batches; every round trip happens here."""

import logging

import redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.redis_keys import cancel_key
from worker.leases.keeper import LeaseKeeper
from worker.training.jobs import JOBS, cancel_requested

log = logging.getLogger(__name__)


class Heartbeat(LeaseKeeper):
    """Renews the job's lease every heartbeat_seconds, reading its cancel request in the database each time;
    polls the Redis cancel flag every cancel_poll_seconds. `stop` is set once the job must stop: cancelled
    (`cancelled`), or the lease lost (`lease_lost`)."""

    def __init__(self, *, job_id: str, lease_owner: str, client: redis.Redis, settings: Settings):
        super().__init__(JOBS, job_id, lease_owner, lease_seconds=settings.lease_seconds,
                         every=settings.heartbeat_seconds, poll_seconds=settings.cancel_poll_seconds)
        self.job_id, self.client = job_id, client
        self.cancelled = False
        self._redis_failing = False

    def poll(self) -> None:
        try:
            flagged = bool(self.client.exists(cancel_key(self.job_id)))
        except RedisError as e:
            # The database's flag, read on every renewal, still gets the cancel through.
            if not self._redis_failing:
                log.warning("job %s: cannot read the cancel flag from Redis: %s", self.job_id, e)
            self._redis_failing = True
            return
        self._redis_failing = False
        if flagged:
            self._cancel()

    def renewed(self, session: Session) -> None:
        if cancel_requested(session, self.job_id):
            self._cancel()

    def _cancel(self) -> None:
        if not self.stop.is_set():
            log.info("job %s: cancel requested; stopping", self.job_id)
        self.cancelled = True
        self.stop.set()

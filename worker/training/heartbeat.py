"""A running job's heartbeat: renews the lease and watches for a cancel request, off the training thread.

The engine only reads `stop` (a flag) between batches; every round trip happens here.
"""

import logging
import threading
import time
from types import TracebackType

import redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings
from app.core.db import session_scope
from app.core.loss_stream import cancel_key
from worker.leases.claims import renew_lease

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews the lease every heartbeat_seconds; polls the cancel flag every cancel_poll_seconds."""

    def __init__(self, *, job_id: str, lease_owner: str, client: redis.Redis, settings: Settings):
        self.job_id, self.lease_owner, self.client, self.settings = job_id, lease_owner, client, settings
        self.stop = threading.Event()  # set once the job must stop: cancelled, or the lease was lost
        self.cancelled = False
        self.lease_lost = False
        self._done = threading.Event()
        self._redis_failing = False
        self._renewed_at = time.monotonic()  # the claim itself set the lease
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=self.settings.heartbeat_seconds + 30)

    def _run(self) -> None:
        next_renewal = time.monotonic() + self.settings.heartbeat_seconds
        while True:
            self._poll_cancel()
            if time.monotonic() >= next_renewal:
                self._renew()
                if self.lease_lost:  # for good: nothing left to renew or to watch
                    return
                next_renewal = time.monotonic() + self.settings.heartbeat_seconds
            if self._done.wait(self.settings.cancel_poll_seconds):
                return

    def _poll_cancel(self) -> None:
        try:
            flagged = bool(self.client.exists(cancel_key(self.job_id)))
        except RedisError as e:
            # The DB flag, read on every renewal, still gets the cancel through.
            if not self._redis_failing:
                log.warning("job %s: cannot read the cancel flag from Redis: %s", self.job_id, e)
            self._redis_failing = True
            return
        self._redis_failing = False
        if flagged:
            self._request_stop(cancelled=True)

    def _renew(self) -> None:
        try:
            with session_scope() as session:
                state = renew_lease(session=session, job_id=self.job_id, lease_owner=self.lease_owner,
                                    lease_seconds=self.settings.lease_seconds)
        except SQLAlchemyError as e:
            log.warning("job %s: lease renewal failed: %s", self.job_id, e)
            # Only this worker may be cut off from the database: once the lease may have expired, another
            # worker can claim the job, so stop rather than train it twice.
            unrenewed = time.monotonic() - self._renewed_at
            if unrenewed > self.settings.lease_seconds - self.settings.heartbeat_seconds:
                log.warning("job %s: lease not renewed for %.0f s; assuming it lost and stopping",
                            self.job_id, unrenewed)
                self.lease_lost = True
                self.stop.set()
            return
        self._renewed_at = time.monotonic()
        if not state.held:
            log.warning("job %s: lease lost (reaped or claimed by another worker); stopping", self.job_id)
            self.lease_lost = True
            self.stop.set()
        elif state.cancel_requested:
            self._request_stop(cancelled=True)

    def _request_stop(self, *, cancelled: bool) -> None:
        if not self.stop.is_set():
            log.info("job %s: cancel requested; stopping", self.job_id)
        self.cancelled = cancelled
        self.stop.set()

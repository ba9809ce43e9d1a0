"""A claim's lease kept alive: renewed on a thread of its own while the work runs, so that the work itself only
reads flags (`stop`, `lost`) and never waits on the database."""

import logging
import threading
import time
from types import TracebackType
from typing import Any, Self

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.db import session_scope
from worker.leases.claims import renew
from worker.leases.kind import LeasedKind

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease every `every` seconds (writing values() with it) until the context exits.

    `lost` is set once the lease is not ours any more: taken over, deleted, or not renewed for so long (the database
    unreachable from here) that it may have expired, when another worker can claim the row; doing the work twice
    is worse than stopping. `stop` is set with it, and by request_stop() (e.g. a cancel). Subclasses may poll
    something every poll_seconds (poll) and look at the row after each renewal (renewed)."""

    def __init__(self, kind: LeasedKind, object_id: str, lease_owner: str, *, lease_seconds: float, every: float,
                 poll_seconds: float | None = None):
        self.kind, self.object_id, self.lease_owner = kind, object_id, lease_owner
        self.lease_seconds, self.every = lease_seconds, every
        self.poll_seconds = poll_seconds if poll_seconds is not None else every
        self.lost = threading.Event()
        self.stop = threading.Event()
        self._done = threading.Event()
        self._renewed_at = time.monotonic()  # the claim itself set the lease
        self._thread = threading.Thread(target=self._run, name=f"lease-{kind.name}-{object_id}", daemon=True)

    @property
    def lease_lost(self) -> bool:
        return self.lost.is_set()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=self.every + 30)

    def values(self) -> dict[str, Any]:
        """Written with each renewal (e.g. progress)."""
        return {}

    def poll(self) -> None:
        """Called every poll_seconds on the keeper's thread."""

    def renewed(self, session: Session) -> None:
        """Called in the renewal's transaction, after it succeeded."""

    def request_stop(self) -> None:
        self.stop.set()

    def _run(self) -> None:
        next_renewal = time.monotonic() + self.every
        while True:
            self.poll()
            if time.monotonic() >= next_renewal:
                self._renew()
                if self.lost.is_set():  # for good: nothing left to renew or to watch
                    return
                next_renewal = time.monotonic() + self.every
            if self._done.wait(min(self.poll_seconds, max(next_renewal - time.monotonic(), 0))):
                return

    def _renew(self) -> None:
        what = f"{self.kind.name} {self.object_id}"
        try:
            with session_scope() as session:
                held = renew(self.kind, session=session, object_id=self.object_id, lease_owner=self.lease_owner,
                             lease_seconds=self.lease_seconds, values=self.values())
                if held:
                    self.renewed(session)
        except SQLAlchemyError as e:
            log.warning("%s: lease renewal failed: %s", what, e)
            unrenewed = time.monotonic() - self._renewed_at
            if unrenewed > self.lease_seconds - self.every:
                log.warning("%s: lease not renewed for %.0f s; assuming it lost and stopping", what, unrenewed)
                self._lose()
            return
        self._renewed_at = time.monotonic()
        if not held:
            log.warning("%s: lease lost (deleted, reaped or taken over by another worker); stopping", what)
            self._lose()

    def _lose(self) -> None:
        self.lost.set()
        self.stop.set()

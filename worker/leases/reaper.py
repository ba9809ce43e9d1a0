"""The reaper: every worker runs it at its start and then every reap_interval_seconds, on its timer. For each leased
kind it requeues the rows whose worker died (expired leases), ends those out of attempts, and sends again the
messages of rows that waited in their queue too long (a message lost with Redis, or never sent); then it runs the
pipelines' sweeps of files nobody owns any more."""

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from celery import bootsteps

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queue import send
from worker.leases.claims import Reaped, hand_back, reap, unqueue
from worker.leases.kind import LeasedKind

log = logging.getLogger(__name__)


def requeue_expired(kind: LeasedKind) -> Reaped:
    """Reap `kind`'s rows and send a message for each one put back in its queue."""
    settings = get_settings()
    with session_scope() as session:
        reaped = reap(kind, session=session, resend_after_seconds=settings.resend_queued_after_seconds)
    for object_id, queue in reaped.resent:
        try:
            send(kind.task, object_id, queue)
        except Exception:
            log.exception("%s %s: its message could not be sent again; the next reap retries", kind.name, object_id)
    if reaped.resent:
        log.warning("reaper: sent the messages of %ss %s again (queued for longer than %.0f s)", kind.name,
                    [i for i, _ in reaped.resent], settings.resend_queued_after_seconds)
    for object_id, queue in reaped.requeued:
        try:
            send(kind.task, object_id, queue)
        except Exception:
            log.exception("%s %s: requeued but its message could not be sent; the next reap retries", kind.name,
                          object_id)
            with session_scope() as session:
                unqueue(kind, session=session, object_id=object_id)
    if reaped.requeued or reaped.ended:
        log.warning("reaper: %ss requeued %s, %s (their workers stopped responding)", kind.name,
                    [i for i, _ in reaped.requeued], ", ".join(f"{k} {v}" for k, v in sorted(reaped.ended.items())))
    # Nobody claims these again, so nobody else removes what their dead worker left. (A requeued row's leftovers
    # go at its next claim.)
    if kind.cleanup is not None:
        for ids in reaped.ended.values():
            for object_id in ids:
                kind.cleanup(object_id)
    return reaped


def give_back(kind: LeasedKind, object_id: str, lease_owner: str, queue: str) -> None:
    """This worker is shutting down mid-work: hand the row back and send its message again, so the next worker takes
    it (without counting the attempt). Whatever fails here, the lease expires and the reaper requeues it."""
    try:
        with session_scope() as session:
            outcome = hand_back(kind, session=session, object_id=object_id, lease_owner=lease_owner)
        if outcome == "requeued":
            send(kind.task, object_id, queue)
            log.warning("%s %s interrupted by the worker's shutdown; requeued", kind.name, object_id)
    except Exception:
        log.exception("%s %s: could not requeue after an interruption; the reaper will", kind.name, object_id)


def reap_all(kinds: Sequence[LeasedKind], sweeps: Sequence[Callable[[], Any]]) -> None:
    """One reaper run: every kind, then every sweep, each on its own (one failing does not stop the others)."""
    runs: list[Callable[[], Any]] = [partial(requeue_expired, kind) for kind in kinds]
    for run in [*runs, *sweeps]:
        try:
            run()
        except Exception:
            log.exception("reaper run failed; trying again in %.0f s", get_settings().reap_interval_seconds)


def reaper_step(kinds: Sequence[LeasedKind], sweeps: Sequence[Callable[[], Any]]) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that runs reap_all when the worker starts and then periodically on the worker's timer."""

    class Reaper(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, parent: Any, **kwargs: Any):
            super().__init__(parent, **kwargs)
            self.tref: Any = None

        def start(self, parent: Any) -> None:
            reap_all(kinds, sweeps)
            self.tref = parent.timer.call_repeatedly(get_settings().reap_interval_seconds, reap_all,
                                                     (kinds, sweeps), priority=10)

        def stop(self, parent: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()

    return Reaper

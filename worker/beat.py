"""The worker's liveness beat (app.core.liveness) as a worker bootstep: at start and every heartbeat_seconds on the
worker's timer, as the reaper runs; removed at a clean stop."""

from typing import Any

from celery import bootsteps

from app.core.config import get_settings
from app.core.liveness import WorkerBeat


class Beat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any):
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.beat: WorkerBeat | None = None

    def start(self, parent: Any) -> None:
        self.beat = WorkerBeat(parent.hostname, get_settings())
        self.beat.beat()
        self.tref = parent.timer.call_repeatedly(get_settings().heartbeat_seconds, self.beat.beat, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        if self.beat is not None:
            self.beat.forget()
            self.beat = None

    # A cold shutdown (SIGQUIT: docker compose stop) terminates steps rather than stopping them.
    terminate = stop

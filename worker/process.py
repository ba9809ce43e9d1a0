"""What each worker pool process sets up when it starts (Celery's worker_process_init): its CPU priority, torch's
threads, which GPU is its own, and a database engine of its own."""

import logging
import os
from typing import Any

from celery.signals import worker_process_init

from app.core.config import get_settings
from app.core.db import get_engine
from app.core.queue import forget_client

log = logging.getLogger(__name__)

# Index of this pool process (prefork), to spread processes over GPUs; None in the solo pool.
_process_index: int | None = None


def process_index() -> int | None:
    return _process_index


@worker_process_init.connect
def _in_pool_process(**_: Any) -> None:
    global _process_index
    from billiard.process import current_process

    _process_index = getattr(current_process(), "index", None)
    lower_priority(get_settings().worker_nice)
    threads = get_settings().worker_torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
    # Connections opened by the parent (the reaper) must not be shared with the forked child.
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    forget_client()


def lower_priority(nice: int) -> None:
    """Run this process (the threads it starts from now on) at `nice`, and its session's autogroup too."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError as e:
        log.warning("could not lower the worker's CPU priority to nice %d: %s", nice, e)
    # With autogroup scheduling (most Linux desktops and servers), CPU time is shared between sessions first,
    # so the session's own nice is the one that ranks training against the API.
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
    except OSError:
        pass

"""Waiting between the tries of an operation that may fail for a while (a database or Redis restarting): the one
backoff the workers' retry loops share."""

import time


class Backoff:
    """Delays doubling from `first` up to `cap`; with `tries`, wait() refuses once that many delays were waited."""

    def __init__(self, first: float, *, cap: float, tries: int | None = None):
        self.first, self.cap, self.tries = first, cap, tries
        self.delay = first  # the next wait's
        self.waited = 0

    def wait(self) -> bool:
        """Sleep the next delay and double it (to cap); False, without sleeping, once the tries are used up."""
        if self.tries is not None and self.waited >= self.tries:
            return False
        time.sleep(self.delay)
        self.waited += 1
        self.delay = min(self.delay * 2, self.cap)
        return True

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.delay, self.waited = self.first, 0

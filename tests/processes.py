"""Start the service's processes (API, Celery workers) as real subprocesses, and wait with timeouts."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import redis

from app.local.processes import Child, free_port, spawn

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def service_env(settings: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The test runner's environment minus any TAAS_*, plus these settings (keys without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAAS_")}
    env.update({f"TAAS_{k.upper()}": v for k, v in settings.items()})
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# The service's processes as `taas up` runs its children (app.local.processes): a session each, a log file each.
Service = Child


def start(name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Service:
    return spawn(name, args, cwd=ROOT, env=env, log_path=log_dir / f"{name}.log")


def start_worker(name: str, env: Mapping[str, str], log_dir: Path, *, concurrency: int = 1,
                 queues: str | None = None) -> Service:
    """A Celery worker serving `queues` (prefixed names), by default those of TAAS_WORKER_QUEUE."""
    args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--prefetch-multiplier", "1", "--pool", "prefork",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle"]
    return start(name, args + (["-Q", queues] if queues else []), env, log_dir)


def start_api(env: Mapping[str, str], log_dir: Path, port: int) -> Service:
    """The API as compose and taas up run it (app.server: a process per core)."""
    return start("api", [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port)],
                 env, log_dir)


def create_key(env: Mapping[str, str], owner: str, *, admin: bool = False) -> str:
    """A new API key of `owner`, made with `taas keys create` in the database `env` configures (as an
    administrator of a compose deployment makes the first one)."""
    args = [sys.executable, "-m", "app.cli", "keys", "create", "--owner", owner] + (["--admin"] if admin else [])
    done = subprocess.run(args, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_healthy(base_url: str, service: Service, timeout: float = 90) -> None:
    def healthy() -> bool:
        assert service.alive(), f"{service.name} exited:\n{service.log()[-3000:]}"
        try:
            return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=timeout, what=f"{base_url}/health", interval=0.3)


@contextmanager
def compose_topology(tmp_path: Path, *, database_url: str, redis_url: str, data_root: Path, workers: int = 2,
                     **settings: str) -> Iterator[tuple[httpx.Client, list[Service]]]:
    """migrate, then the api, `workers` training workers and the ingest worker as subprocesses, configured as
    docker-compose.yml configures them, on a throwaway queue prefix and owner."""
    tag = uuid.uuid4().hex[:12]
    prefix = f"taas-test-{tag}-"
    env = service_env({
        "database_url": database_url, "redis_url": redis_url, "state_dir": str(tmp_path / "state"),
        "artifacts_dir": str(tmp_path / "artifacts"), "datasets_dir": str(tmp_path / "datasets"),
        "data_root": str(data_root), "owner": f"test-{tag}", "queue_prefix": prefix, "worker_queue": "gpu,cpu",
        "default_queue": "gpu", "limit_submit_rate": "unlimited", "limit_predict_rate": "unlimited", **settings,
    })
    migrate = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    key = create_key(env, f"test-{tag}", admin=True)
    port = free_port()
    logs = tmp_path / "logs"
    services = [start_api(env, logs, port)]
    services += [start_worker(f"worker{i}", env, logs) for i in range(1, workers + 1)]
    services.append(start_worker("ingest", env, logs, queues=f"{prefix}ingest"))
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, services[0])
        for worker in services[1:]:
            wait_for(lambda w=worker: " ready." in w.log(), timeout=90, what=f"{worker.name} to be ready")
        with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, services
    finally:
        for service in services:
            service.stop()
        broker = redis.Redis.from_url(redis_url)
        keys = list(broker.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            broker.delete(*keys)
        broker.close()

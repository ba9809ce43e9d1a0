"""Helpers to run the API against the real PostgreSQL and Redis in tests (importable from other test trees).

    env = configure(monkeypatch, tmp_path, database_url=postgres_url, redis_url=redis_url)
    with api_client(env) as client: ...   # a TestClient sending a fresh API key of env.owner
    cleanup(env)

configure() sets TAAS_* variables and clears every settings-derived cache; the app reads them at startup.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from sqlalchemy import select

import app.core.db
import app.core.queue
from app.accounts.keys import create_key
from app.accounts.limits import Limits
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.redis_keys import cancel_key, lease_key, stream_key
from app.core.tables import Job, JobStatus, utcnow
from app.main import create_app
from models import build_model
from spec.datasets import BUILTIN_DATASETS, DatasetInfo
from spec.job import JobSpec

# A Redis port nothing listens on: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@dataclass(frozen=True)
class ApiEnv:
    settings: Settings
    tag: str

    @property
    def owner(self) -> str:
        return self.settings.owner

    def queue(self, base: str) -> str:
        return app.core.queue.queue_name(base, self.settings)


def reset_caches() -> None:
    """Forget the cached settings, engine, sessionmaker and Celery client (they follow TAAS_*)."""
    if app.core.db.get_engine.cache_info().currsize:
        app.core.db.get_engine().dispose()
    app.core.db.get_engine.cache_clear()
    app.core.db._sessionmaker.cache_clear()
    app.core.queue.close_client()
    get_settings.cache_clear()


def configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, database_url: str, redis_url: str, **extra: str
) -> ApiEnv:
    """Point the settings at these services, a tmp state folder, and a unique owner and queue prefix."""
    tag = uuid.uuid4().hex[:12]
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STATE_DIR": str(tmp_path / "state"),
        "ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "OWNER": f"test-{tag}",
        # Messages go to throwaway queues no real worker consumes.
        "QUEUE_PREFIX": f"taas-test-{tag}-",
        # Tests submit fast and often; the tests of limits set their own.
        "LIMIT_SUBMIT_RATE": "unlimited",
        "LIMIT_PREDICT_RATE": "unlimited",
        "LIMIT_ACTIVE_JOBS": "100000",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(f"TAAS_{key}", value)
    reset_caches()
    return ApiEnv(get_settings(), tag)


def cleanup(env: ApiEnv, redis_url: str) -> None:
    """Delete what the test left in Redis: its queues (and kombu's bindings) and its jobs' streams."""
    with session_scope() as session:
        ids = list(session.scalars(select(Job.id).where(Job.owner == env.owner)))
    reset_caches()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{env.settings.queue_prefix}*", count=1000))
        keys += [key(i) for i in ids for key in (stream_key, cancel_key, lease_key)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def api_key(owner: str, *, admin: bool = False, limits: Limits | None = None) -> str:
    """A new API key of `owner` in the configured database."""
    with session_scope() as session:
        _, key = create_key(session=session, owner=owner, admin=admin, limits=limits)
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_client(env: ApiEnv, *, owner: str | None = None, admin: bool = False,
               limits: Limits | None = None) -> TestClient:
    """A TestClient of a new app, sending a new key of `owner` (default: the env's owner). Use it in `with`."""
    key = api_key(owner or env.owner, admin=admin, limits=limits)
    return TestClient(create_app(), headers=bearer(key))


def add_job(
    env: ApiEnv, *, status: JobStatus = JobStatus.succeeded, spec: dict[str, Any] | None = None,
    owner: str | None = None, created_at: datetime | None = None, **fields: Any,
) -> str:
    """Insert a job row directly (as a worker would have left it); returns its id."""
    job_spec = JobSpec.model_validate(spec or {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}})
    job = Job(owner=owner or env.owner, name=job_spec.name, status=status,
              spec=job_spec.model_dump(mode="json"), queue=env.queue("cpu"), created_at=created_at or utcnow(),
              **fields)
    with session_scope() as session:
        session.add(job)
    return job.id


def seeded_network(spec: dict[str, Any], *, seed: int = 0, info: DatasetInfo | None = None) -> torch.nn.Module:
    """The spec's network, built after torch.manual_seed(seed), for a built-in dataset or `info`'s data."""
    job_spec = JobSpec.model_validate(spec)
    if info is None:
        info = BUILTIN_DATASETS[job_spec.dataset.name].info
    torch.manual_seed(seed)
    return build_model(job_spec.model.arch, job_spec.model_params, info.input_shape())


def write_weights(env: ApiEnv, job_id: str, spec: dict[str, Any] | None = None, *, seed: int = 0,
                  which: str = "best") -> Path:
    """Real weights: the job's network, seeded, saved as a safetensors state_dict where the engine puts it."""
    network = seeded_network(spec or {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}, seed=seed)
    path = env.settings.artifacts_path / job_id / f"{which}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(network.state_dict(), str(path))
    return path

"""API fixtures: a migrated PostgreSQL, the real Redis, and a TestClient on an app configured for them."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.migrate import upgrade_head
from tests.app.harness import ApiEnv, api_client, cleanup, configure, reset_caches


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    """Whatever a test configured, the next one (in any tree) starts from a clean settings cache."""
    yield
    reset_caches()


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    upgrade_head(postgres_url)
    return postgres_url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_postgres: str, redis_url: str) -> Iterator[ApiEnv]:
    test_env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url)
    yield test_env
    cleanup(test_env, redis_url)


@pytest.fixture
def client(env: ApiEnv) -> Iterator[TestClient]:
    """The app, sending an API key of the env's owner."""
    with api_client(env) as test_client:
        yield test_client

"""Shared fixtures: tiny data in torchvision's format, settings, and the real PostgreSQL and Redis."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prerequisites import missing
from tests.tiny_data import write_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POSTGRES_ADMIN_URL = os.environ.get("TAAS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("TAAS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny FashionMNIST and MNIST (512 train / 128 test images each)."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "FashionMNIST", seed=0)
    write_dataset(root, "MNIST", seed=10)
    return root


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ../shared/data (never written into); see missing() when it is not beside the checkout."""
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        missing(f"real data not found at {SHARED_DATA} (or run -m 'not slow')")
    import shutil

    root = tmp_path_factory.mktemp("realdata")
    for name in ("FashionMNIST", "MNIST"):
        shutil.copytree(SHARED_DATA / name, root / name)
    return root


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"taas_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.ping()
    client.close()
    return REDIS_TEST_URL

"""The API under a burst of simultaneous requests, through the real server process and PostgreSQL.

No timing thresholds (bench/api_load.py holds the speed goals): every request must get an answer that is
not a 5xx, and /health must answer in the middle of the burst."""

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.local.processes import free_port
from tests.processes import ROOT, Service, create_key, service_env, start_api, wait_healthy

BURST = 200
SPEC = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 1}


@pytest.fixture
def api(tmp_path: Path, postgres_url: str, redis_url: str,
        tiny_data_root: Path) -> Iterator[tuple[str, Service, dict[str, str]]]:
    """The API alone (no worker takes its jobs, so they stay queued), on PostgreSQL, served as `taas up` and
    compose serve it; with the headers of an API key."""
    tag = uuid.uuid4().hex[:12]
    env = service_env({
        "database_url": postgres_url, "redis_url": redis_url, "state_dir": str(tmp_path / "state"),
        "data_root": str(tiny_data_root), "owner": f"test-{tag}", "queue_prefix": f"taas-test-{tag}-",
        "limit_submit_rate": "unlimited", "limit_active_jobs": str(BURST),
    })
    migrate = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    headers = {"Authorization": f"Bearer {create_key(env, f'test-{tag}')}"}
    port = free_port()
    service = start_api(env, tmp_path / "logs", port)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, service)
        yield base_url, service, headers
    finally:
        service.stop()


async def _burst(base_url: str, headers: dict[str, str], method: str,
                 paths: list[str]) -> tuple[list[httpx.Response], httpx.Response]:
    """All requests at once, each on its own connection, and one /health request once they are all sent."""
    limits = httpx.Limits(max_connections=len(paths) + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120, headers=headers) as client:
        requests = [asyncio.ensure_future(client.request(method, p)) for p in paths]
        await asyncio.sleep(0.05)
        health = await client.get("/health")
        return list(await asyncio.gather(*requests)), health


def _statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def test_simultaneous_reads_and_cancels_all_get_answers(api: tuple[str, Service, dict[str, str]]) -> None:
    base_url, service, headers = api
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        ids = []
        for i in range(BURST):
            response = client.post("/jobs", json={**SPEC, "name": f"burst-{i}"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

    reads, health = asyncio.run(_burst(base_url, headers, "GET", [f"/jobs/{i}" for i in ids]))
    assert _statuses(reads) == {200: BURST}, [r.text for r in reads if r.status_code != 200][:3]
    assert {r.json()["id"] for r in reads} == set(ids)
    assert health.status_code == 200, health.text

    cancels, health = asyncio.run(_burst(base_url, headers, "POST", [f"/jobs/{i}/cancel" for i in ids]))
    assert _statuses(cancels) == {200: BURST}, [r.text for r in cancels if r.status_code != 200][:3]
    assert all(r.json()["status"] == "cancelled" for r in cancels)
    assert health.status_code == 200, health.text
    assert service.alive()

    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        listed = client.get("/jobs", params={"status": "cancelled", "limit": 500}).json()["data"]
    assert {j["id"] for j in listed} == set(ids)

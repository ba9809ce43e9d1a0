"""GET /catalog mirrors the registries; GET /health checks the database and Redis for real."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.core.db import normalize_url
from app.main import create_app
from spec.architectures import ARCHITECTURES
from spec.datasets import BUILTIN_DATASETS
from spec.training import LOSSES, OPTIMIZERS, SCHEDULERS
from tests.app.harness import DEAD_REDIS_URL, api_client, bearer, cleanup, configure


def test_catalog_is_generated_from_the_registries(client: TestClient):
    catalog = client.get("/catalog").json()
    assert [d["name"] for d in catalog["datasets"]] == list(BUILTIN_DATASETS)
    fashion = catalog["datasets"][0]
    assert fashion["shape"] == {"channels": 1, "height": 28, "width": 28}
    assert fashion["classes"] == BUILTIN_DATASETS["fashion-mnist"].info.classes
    assert (fashion["source"], fashion["id"]) == ("builtin", None)

    assert [a["name"] for a in catalog["architectures"]] == list(ARCHITECTURES)
    mlp = next(a for a in catalog["architectures"] if a["name"] == "mlp")
    assert mlp["params"] == ARCHITECTURES["mlp"].params.model_json_schema()
    assert mlp["output"] == "logits"
    assert next(a for a in catalog["architectures"] if a["name"] == "mnist-mlp")["output"] == "log_probs"

    assert [o["name"] for o in catalog["optimizers"]] == list(OPTIMIZERS)
    sgd = catalog["optimizers"][0]
    assert sgd["params"]["properties"]["lr"]["default"] == 0.001
    assert [(x["name"], x["expects"]) for x in catalog["losses"]] == [(e.name, e.expects) for e in LOSSES.values()]
    assert [(s["name"], s["interval"]) for s in catalog["schedulers"]] == [
        (s.name, s.interval) for s in SCHEDULERS.values()]


def test_openapi_documents_the_routes(client: TestClient):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/losses", "/jobs/{job_id}/metrics",
            "/jobs/{job_id}/cancel", "/jobs/{job_id}/weights", "/predict", "/catalog", "/health"} <= set(paths)
    assert paths["/jobs"]["post"]["summary"] or paths["/jobs"]["post"]["description"]
    assert "examples" in schema["components"]["schemas"]["JobSpec"]


def test_health_ok(client: TestClient):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "db": "ok", "redis": "ok"}


def test_health_names_redis_when_it_is_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            migrated_postgres: str, redis_url: str):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=DEAD_REDIS_URL)
    try:
        with api_client(env) as client:
            r = client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable" and body["db"] == "ok"
        # What is down, not the driver's words (they name hosts and ports): those go to the log.
        assert body["redis"] == "failed: Redis is unreachable"
    finally:
        cleanup(env, redis_url)


def test_health_names_the_database_when_it_is_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   postgres_url: str, redis_url: str):
    missing = make_url(normalize_url(postgres_url)).set(database="taas_no_such_database")
    configure(monkeypatch, tmp_path, database_url=missing.render_as_string(hide_password=False),
              redis_url=redis_url)
    # No key can be made without a database: a well-formed one, which the API must look up.
    with TestClient(create_app(), headers=bearer("taas_" + "x" * 43)) as client:
        r = client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable" and body["redis"] == "ok"
        assert body["db"] == "failed: the database is unreachable" and "taas_no_such" not in r.text
        # Any route that needs the database says so instead of a 500 (or a 401: the key was not judged).
        r = client.get("/jobs")
        assert r.status_code == 503 and "database" in r.json()["detail"]


def test_sqlite_embedded_mode_serves_jobs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str):
    """Same code path on SQLite: migrate a fresh file, submit, list, cancel."""
    from app.core.migrate import upgrade_head

    url = f"sqlite:///{tmp_path / 'state' / 'taas.db'}"
    upgrade_head(url)
    env = configure(monkeypatch, tmp_path, database_url=url, redis_url=redis_url)
    try:
        with api_client(env) as client:
            ids = [client.post("/jobs", json={"name": f"j{i}"}).json()["id"] for i in range(3)]
            page = client.get("/jobs", params={"limit": 2}).json()
            rest = client.get("/jobs", params={"cursor": page["next_cursor"]}).json()
            assert [j["id"] for j in page["data"] + rest["data"]] == ids[::-1]
            assert client.post(f"/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
            assert client.delete(f"/jobs/{ids[0]}").status_code == 204
            assert client.get("/health").json()["db"] == "ok"
    finally:
        cleanup(env, redis_url)

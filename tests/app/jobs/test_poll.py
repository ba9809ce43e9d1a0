"""GET /jobs/{id} answered below FastAPI's routing (app.web.fast_routes) answers exactly as through FastAPI's own
handling of the route, and is the path taken."""

from collections.abc import Iterator
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.errors import Unavailable
from app.core.tables import JobStatus
from app.jobs.reads import JobReads
from app.main import create_app
from app.web.fast_routes import FastRoutes
from tests.app.harness import ApiEnv, add_job, api_key, bearer


def without_fast_path() -> FastAPI:
    application = create_app()
    application.user_middleware = [m for m in application.user_middleware if m.cls is not FastRoutes]
    return application


@pytest.fixture
def pair(env: ApiEnv) -> Iterator[tuple[TestClient, TestClient]]:
    with TestClient(create_app()) as fast, TestClient(without_fast_path()) as routed:
        yield fast, routed


def answer(client: TestClient, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    r = client.request(method, path, headers=headers, follow_redirects=False)
    return r.status_code, dict(r.headers), r.content


@pytest.fixture
def route_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids of the requests FastAPI's own handling of a route answered (its dependency solving, which the
    fast path never enters)."""
    seen: list[str] = []
    real = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        request = kwargs["request"]
        if request.url.path.startswith("/jobs/"):
            seen.append(request.url.path.removeprefix("/jobs/"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return seen


def test_every_answer_is_the_routes_own(env: ApiEnv, pair: tuple[TestClient, TestClient], route_reads: list[str],
                                        monkeypatch: pytest.MonkeyPatch):
    fast, routed = pair
    key, other_key = api_key(env.owner), api_key(f"{env.owner}-other")
    mine = add_job(env, status=JobStatus.succeeded, result={"test_accuracy": 0.7})
    queued = add_job(env, status=JobStatus.queued)
    theirs = add_job(env, owner=f"{env.owner}-other")
    cases = [
        ("GET", f"/jobs/{mine}", bearer(key)),
        ("GET", f"/jobs/{queued}", bearer(key)),
        ("GET", f"/jobs/{theirs}", bearer(key)),  # another owner's: 404, as for an id that does not exist
        ("GET", f"/jobs/{theirs}", bearer(other_key)),
        ("GET", "/jobs/" + "0" * 32, bearer(key)),
        ("GET", "/jobs/not-an-id", bearer(key)),
        ("GET", "/jobs/%00%27", bearer(key)),
        ("GET", f"/jobs/{mine}?unused=1", bearer(key)),
        ("GET", f"/jobs/{mine}", {}),
        ("GET", f"/jobs/{mine}", {"Authorization": "Bearer"}),
        ("GET", f"/jobs/{mine}", {"Authorization": "Basic dXNlcjpwdw=="}),
        ("GET", f"/jobs/{mine}", {"Authorization": f"bearer  {key}"}),  # the scheme is case-insensitive
        ("GET", f"/jobs/{mine}", bearer("taas_" + "A" * 43)),
        ("GET", f"/jobs/{mine}/", bearer(key)),
        ("HEAD", f"/jobs/{mine}", bearer(key)),
    ]
    statuses = []
    for method, path, headers in cases:
        got = answer(fast, method, path, headers)
        before = len(route_reads)
        expected = answer(routed, method, path, headers)
        assert got == expected, (method, path, headers)
        statuses.append(got[0])
        if method == "GET" and not path.endswith("/"):
            assert len(route_reads) == before + 1, path  # the answer compared with is really the route's
    assert route_reads.count(mine) == 7  # the routed app's; the fast path's requests never reached the route
    assert statuses[:8] == [200, 200, 404, 200, 404, 404, 404, 200]
    assert statuses[8:] == [401, 401, 401, 200, 401, 307, 405]
    assert fast.get(f"/jobs/{mine}", headers=bearer(key)).json()["result"]["test_accuracy"] == 0.7

    # The database out of connections: 503 with Retry-After on both.
    async def no_connection(*args: object) -> None:
        raise Unavailable("the server is at its limit of database connections")

    monkeypatch.setattr(JobReads, "key_and_job", no_connection)
    path = f"/jobs/{mine}"
    got, expected = answer(fast, "GET", path, bearer(key)), answer(routed, "GET", path, bearer(key))
    assert got == expected and got[0] == 503 and got[1]["retry-after"]


def test_the_fast_path_answers_before_the_route_and_is_counted_under_its_template(
        env: ApiEnv, pair: tuple[TestClient, TestClient], route_reads: list[str]):
    fast, _ = pair
    admin = api_key(env.owner, admin=True)
    job = add_job(env)

    def counts() -> dict[tuple[str, str], float]:
        exposition = fast.get("/metrics", headers=bearer(admin)).text
        return {(s.labels["route"], s.labels["status"]): s.value
                for family in text_string_to_metric_families(exposition) if family.name == "taas_http_requests"
                for s in family.samples if s.name == "taas_http_requests_total" and s.labels["method"] == "GET"}

    before = counts()
    for _ in range(3):
        r = fast.get(f"/jobs/{job}", headers=bearer(admin))
        assert r.status_code == 200 and r.json()["id"] == job
        assert r.headers["x-content-type-options"] == "nosniff"  # the guard's headers, as on every answer
    assert fast.get("/jobs/" + "0" * 32, headers=bearer(admin)).status_code == 404
    assert route_reads == []  # FastAPI's handling of the route was never reached
    after = counts()
    grew = {label: after[label] - before.get(label, 0) for label in after if after[label] != before.get(label, 0)}
    assert grew == {("/jobs/{job_id}", "200"): 3, ("/jobs/{job_id}", "404"): 1, ("/metrics", "200"): 1}, grew


def test_behind_a_root_path_the_fast_path_still_answers(env: ApiEnv, route_reads: list[str]):
    key = api_key(env.owner)
    job = add_job(env)

    with TestClient(create_app(), root_path="/api") as client:
        r = client.get(f"/api/jobs/{job}", headers=bearer(key))
    assert r.status_code == 200 and r.json()["id"] == job
    assert route_reads == []

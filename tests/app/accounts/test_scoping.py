"""Every route, taken from the app itself, across two owners: without a key it is 401 (unless public); with
owner B's key, owner A's objects are not found (the same answer as an id that does not exist), not listed,
and not changed; admin routes are 403 to a key that is not an admin's. A route added later without a case
here fails test_every_route_has_a_case, so none escapes. No answer names a server path."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.tables import JobStatus
from app.main import create_app
from app.web.errors import route_methods
from tests.app.datasets.test_routes import archive, ready  # noqa: F401 (archive is a fixture)
from tests.app.harness import ApiEnv, add_job, api_key, bearer, write_weights
from tests.archives import png

# The dashboard's page (GET /) loads without a key, as do its files (/static, a mount: no route here); the page
# then asks for a key and sends it with every API call.
PUBLIC = {("GET", "/"), ("GET", "/health"), ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
ADMIN = {("POST", "/keys"), ("GET", "/keys"), ("DELETE", "/keys/{key_id}"), ("GET", "/audit"),
         ("GET", "/metrics")}


@dataclass
class Owned:
    """Owner A's objects, and ids that exist for nobody."""

    job: str
    dataset: str
    key_id: str
    missing: str = uuid.uuid4().hex


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app, its included routers' too."""
    return {(method, path) for path, methods in route_methods(create_app()) for method in methods
            if method != "HEAD" and not path.startswith(("/docs", "/redoc", "/openapi"))}


def _image() -> bytes:
    import numpy as np

    return png(np.zeros((28, 28), dtype=np.uint8))


def _infer_body() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}]}


# How owner B tries each route on owner A's object (`target`: A's id, or an id nobody has).
Call = Callable[[TestClient, str], httpx.Response]
NOT_FOUND: dict[tuple[str, str], Call] = {
    ("GET", "/jobs/{job_id}"): lambda c, t: c.get(f"/jobs/{t}"),
    ("GET", "/jobs/{job_id}/losses"): lambda c, t: c.get(f"/jobs/{t}/losses"),
    ("GET", "/jobs/{job_id}/metrics"): lambda c, t: c.get(f"/jobs/{t}/metrics"),
    ("GET", "/jobs/{job_id}/events"): lambda c, t: c.get(f"/jobs/{t}/events"),
    ("POST", "/jobs/{job_id}/cancel"): lambda c, t: c.post(f"/jobs/{t}/cancel"),
    ("DELETE", "/jobs/{job_id}"): lambda c, t: c.delete(f"/jobs/{t}"),
    ("GET", "/jobs/{job_id}/weights"): lambda c, t: c.get(f"/jobs/{t}/weights"),
    ("GET", "/jobs/{job_id}/export"): lambda c, t: c.get(f"/jobs/{t}/export"),
    ("GET", "/jobs/{job_id}/tensorboard"): lambda c, t: c.get(f"/jobs/{t}/tensorboard"),
    ("POST", "/predict"): lambda c, t: c.post("/predict", data={"job_id": t}, files={"files": ("a.png", _image())}),
    ("GET", "/v2/models/{name}"): lambda c, t: c.get(f"/v2/models/{t}"),
    ("GET", "/v2/models/{name}/ready"): lambda c, t: c.get(f"/v2/models/{t}/ready"),
    ("POST", "/v2/models/{name}/infer"): lambda c, t: c.post(f"/v2/models/{t}/infer", json=_infer_body()),
}
DATASET_NOT_FOUND: dict[tuple[str, str], Call] = {
    ("GET", "/datasets/{dataset_id}"): lambda c, t: c.get(f"/datasets/{t}"),
    ("DELETE", "/datasets/{dataset_id}"): lambda c, t: c.delete(f"/datasets/{t}"),
    # Training on another owner's dataset: no such dataset, as for an id nobody has.
    ("POST", "/jobs"): lambda c, t: c.post("/jobs", json={"dataset": {"id": t}, "model": {"arch": "mlp"}}),
}
# Listings: owner A's objects must not be among what B sees.
LISTED: dict[tuple[str, str], Callable[[TestClient], list[str]]] = {
    ("GET", "/jobs"): lambda c: [j["id"] for j in c.get("/jobs").json()["data"]],
    ("GET", "/datasets"): lambda c: [d["id"] for d in c.get("/datasets").json()["data"]],
    ("GET", "/catalog"): lambda c: [d["id"] for d in c.get("/catalog").json()["datasets"] if d["id"]],
}
# Creates the caller's own object: B's upload is B's (A does not see it).
CREATES = {("POST", "/datasets")}


def admin_call(client: TestClient, method: str, path: str, owned: Owned) -> httpx.Response:
    url = path.replace("{key_id}", owned.key_id)
    return client.request(method, url, json={"owner": "someone"} if method == "POST" else None)


def test_every_route_has_a_case():
    covered = PUBLIC | ADMIN | set(NOT_FOUND) | set(DATASET_NOT_FOUND) | set(LISTED) | CREATES
    assert app_routes() - covered == set(), "add the new route to the cases of this test"
    assert covered - app_routes() == set(), "a case for a route that no longer exists"


@pytest.fixture
def owners(env: ApiEnv, archive: bytes) -> Iterator[tuple[TestClient, TestClient, Owned]]:  # noqa: F811
    a_key, b_key = api_key(env.owner), api_key(f"{env.owner}-b")
    with TestClient(create_app(), headers=bearer(a_key)) as a, TestClient(create_app(), headers=bearer(b_key)) as b:
        job = add_job(env, status=JobStatus.succeeded,
                      # What older workers stored: absolute paths, which no answer may show.
                      result={"test_accuracy": 0.5, "weights": {"best": str(env.settings.artifacts_path / "x")}})
        write_weights(env, job)
        dataset = ready(a, archive)["id"]
        admin_key = api_key("admins", admin=True)
        created = a.post("/keys", json={"owner": env.owner}, headers=bearer(admin_key))
        assert created.status_code == 201, created.text
        yield a, b, Owned(job=job, dataset=dataset, key_id=created.json()["id"])


def _no_server_paths(response: httpx.Response, env: ApiEnv) -> None:
    text = response.text
    for path in (env.settings.artifacts_path, env.settings.state_dir, Path(__file__).resolve().parents[2]):
        assert str(Path(path).resolve()) not in text and str(path) not in text, (response.request.url, text)


def test_without_a_key_every_route_but_the_public_ones_is_401(env: ApiEnv):
    with TestClient(create_app()) as anonymous:
        for method, path in sorted(app_routes() - PUBLIC):
            url = path.format(job_id="x", dataset_id="x", key_id="x", name="x")
            r = anonymous.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in r.json().get("detail", r.json().get("error", ""))
        for method, path in PUBLIC:
            assert anonymous.request(method, path).status_code == 200, path


def test_another_owners_objects_are_not_found_listed_or_changed(env: ApiEnv,
                                                                owners: tuple[TestClient, TestClient, Owned]):
    a, b, owned = owners
    for (method, path), call in {**NOT_FOUND, **DATASET_NOT_FOUND}.items():
        target = owned.dataset if (method, path) in DATASET_NOT_FOUND else owned.job
        theirs, nobodys = call(b, target), call(b, owned.missing)
        expected = 422 if (method, path) == ("POST", "/jobs") else 404
        assert theirs.status_code == nobodys.status_code == expected, (method, path, theirs.text, nobodys.text)
        # The same answer as for an id nobody has: nothing tells B that A's id exists.
        assert theirs.text.replace(target, "ID") == nobodys.text.replace(owned.missing, "ID"), (method, path)
        _no_server_paths(theirs, env)
    for route, listed in LISTED.items():
        seen = listed(b)
        assert owned.job not in seen and owned.dataset not in seen, route
        assert owned.job in listed(a) or owned.dataset in listed(a), route  # A does see them
    for method, path in ADMIN:
        r = admin_call(b, method, path, owned)
        assert r.status_code == 403, (method, path, r.text)
    # What B creates is B's.
    upload = b.post("/datasets", data={"name": "b's"}, files={"file": ("b.zip", b"PK\x05\x06" + b"\x00" * 18)})
    assert upload.status_code == 202, upload.text
    assert upload.json()["id"] not in LISTED[("GET", "/datasets")](a)
    # A's objects are all still there, unchanged, and A's answers name no server path either.
    for url in (f"/jobs/{owned.job}", f"/datasets/{owned.dataset}", f"/jobs/{owned.job}/weights",
                f"/v2/models/{owned.job}", "/jobs", "/datasets", "/catalog"):
        r = a.get(url)
        assert r.status_code == 200, (url, r.text)
        _no_server_paths(r, env)
    assert a.get(f"/jobs/{owned.job}").json()["result"] == {"test_accuracy": 0.5}

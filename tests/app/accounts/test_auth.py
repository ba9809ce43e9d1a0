"""API keys, limits and hostile requests, against the real PostgreSQL and Redis: keys hashed at rest and shown
once, 401/403, revocation at the next request on every API process, quotas and rates with Retry-After, job
size bounds, the audit log, cross-site and malformed requests that get a 4xx, never a 5xx."""

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from app.accounts.limits import Limits
from app.core.db import session_scope
from app.core.tables import ApiKey, AuditEvent, JobStatus
from app.main import create_app
from app.web.guard import Guard, is_loopback
from tests.app.harness import ApiEnv, add_job, api_client, api_key, bearer, cleanup, configure

TINY = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 1}


@pytest.fixture
def admin(env: ApiEnv) -> str:
    return api_key("admins", admin=True)


def test_a_key_is_shown_once_and_stored_only_as_its_hash(client: TestClient, env: ApiEnv, admin: str):
    created = client.post("/keys", json={"owner": "alice", "name": "notebook"}, headers=bearer(admin))
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("taas_") and len(key) >= 5 + 43  # 32 random bytes, URL-safe base64
    assert body["owner"] == "alice" and body["admin"] is False and body["prefix"] == key[:12]
    with session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == body["id"])).one()
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert not any(key in value or key[12:] in value for value in stored)
    # Listed without the key; the key itself works.
    listed = client.get("/keys", params={"owner": "alice"}, headers=bearer(admin)).json()["data"]
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
    assert key not in json.dumps(listed)
    with TestClient(create_app(), headers=bearer(key)) as alice:
        assert alice.get("/jobs").status_code == 200


def test_missing_malformed_and_unknown_keys_are_401_with_www_authenticate(env: ApiEnv):
    with TestClient(create_app()) as anonymous:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer not-a-taas-key"}, bearer("taas_" + "A" * 43)):
            r = anonymous.get("/jobs", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"] == 'Bearer realm="taas"'
            assert r.json()["detail"]


def test_admin_routes_are_403_to_other_keys(client: TestClient, env: ApiEnv):
    for method, path in (("POST", "/keys"), ("GET", "/keys"), ("DELETE", "/keys/x"), ("GET", "/audit")):
        r = client.request(method, path, json={"owner": "x"} if method == "POST" else None)
        assert r.status_code == 403 and "admin" in r.json()["detail"], (method, path, r.text)


def test_a_revoked_key_fails_the_next_request_on_every_process(env: ApiEnv, admin: str):
    key = api_key(env.owner)
    key_id = hashlib.sha256(key.encode()).hexdigest()
    with session_scope() as session:
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.key_hash == key_id)).one()
    # Two apps: two API processes sharing the database (PostgreSQL: each reads keys on its event loop).
    with TestClient(create_app(), headers=bearer(key)) as one, TestClient(create_app(), headers=bearer(key)) as two:
        assert one.get("/jobs").status_code == two.get("/jobs").status_code == 200
        assert one.delete(f"/keys/{key_id}", headers=bearer(admin)).status_code == 204
        assert two.get("/jobs").status_code == 401
        assert one.get(f"/jobs/{add_job(env)}").status_code == 401  # the hot path too
    with TestClient(create_app(), headers=bearer(admin)) as auditor:
        revoked = auditor.get("/keys", params={"revoked": True}).json()["data"]
    assert any(k["id"] == key_id and k["revoked_at"] for k in revoked)


def test_the_rate_limit_answers_429_with_retry_after_across_processes(env: ApiEnv):
    key = api_key(env.owner, limits=Limits(submit_rate="3/minute"))
    with TestClient(create_app(), headers=bearer(key)) as one, TestClient(create_app(), headers=bearer(key)) as two:
        assert [c.post("/jobs", json=TINY).status_code for c in (one, two, one)] == [201, 201, 201]
        refused = two.post("/jobs", json=TINY)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "3 per 1 minute" in refused.json()["detail"] and "TAAS_LIMIT_SUBMIT_RATE" in refused.json()["detail"]
        # Another key of the same owner has its own count.
        with TestClient(create_app(), headers=bearer(api_key(env.owner))) as other:
            assert other.post("/jobs", json=TINY).status_code == 201


def test_predict_and_v2_infer_share_the_predict_rate_of_a_key(env: ApiEnv):
    key = api_key(env.owner, limits=Limits(predict_rate="2/minute"))
    missing_job = "0" * 32  # counted before the job is looked up: a refused request costs the API nothing more
    with TestClient(create_app(), headers=bearer(key)) as client:
        image = {"files": ("a.png", b"\x89PNG not really", "image/png")}
        assert client.post("/predict", data={"job_id": missing_job}, files=image).status_code == 404
        infer = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}]}
        assert client.post(f"/v2/models/{missing_job}/infer", json=infer).status_code == 404
        for refused in (client.post("/predict", data={"job_id": missing_job}, files=image),
                        client.post(f"/v2/models/{missing_job}/infer", json=infer)):
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            body = refused.json()
            detail = body.get("detail") or body["error"]  # v2 answers {"error": ...}
            assert "2 per 1 minute" in detail and "TAAS_LIMIT_PREDICT_RATE" in detail
        # Other routes are not counted against it.
        assert client.get("/jobs").status_code == 200


def test_the_queue_quota_answers_429_until_a_job_ends(env: ApiEnv):
    with api_client(env, limits=Limits(active_jobs=2)) as client:
        first, _ = (client.post("/jobs", json=TINY).json()["id"] for _ in range(2))
        refused = client.post("/jobs", json=TINY)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "2 queued or running jobs" in refused.json()["detail"]
        assert "TAAS_LIMIT_ACTIVE_JOBS" in refused.json()["detail"]
        assert client.post(f"/jobs/{first}/cancel").status_code == 200
        assert client.post("/jobs", json=TINY).status_code == 201


def test_the_storage_quota_stops_an_upload_while_it_streams(env: ApiEnv):
    with api_client(env, limits=Limits(dataset_bytes=10_000)) as client:
        r = client.post("/datasets", data={"name": "big"}, files={"file": ("a.zip", b"PK\x03\x04" + b"\0" * 20_000)})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
        assert "storage quota" in r.json()["detail"] and "TAAS_LIMIT_DATASET_BYTES" in r.json()["detail"]
        assert client.get("/datasets").json()["data"] == []  # nothing kept
        assert not any(env.settings.datasets_path.iterdir()) if env.settings.datasets_path.exists() else True


@pytest.mark.parametrize(("spec", "named"), [
    ({"model": {"arch": "mlp", "params": {"hidden": [8192] * 8}}}, "TAAS_LIMIT_JOB_PARAMS"),
    ({"model": {"arch": "resnet50"}, "batch_size": 65536}, "TAAS_LIMIT_JOB_MEMORY_BYTES"),
    ({"epochs": 1000}, "TAAS_LIMIT_JOB_EPOCHS"),
    ({"max_attempts": 10}, "TAAS_LIMIT_JOB_ATTEMPTS"),
])
def test_a_job_bigger_than_the_limits_is_422_naming_the_limit(client: TestClient, spec: dict, named: str):
    r = client.post("/jobs", json={"dataset": {"name": "fashion-mnist"}, **spec})
    assert r.status_code == 422 and named in r.json()["detail"], r.text
    assert client.get("/jobs").json()["data"] == []


def test_per_key_limits_override_the_settings(env: ApiEnv):
    with api_client(env, limits=Limits(job_params=1000)) as client:
        r = client.post("/jobs", json=TINY)
        assert r.status_code == 422 and "669,706 parameters" in r.json()["detail"]


def test_state_changes_are_audited_and_admins_read_them(env: ApiEnv, admin: str):
    with api_client(env) as client:
        job = client.post("/jobs", json=TINY).json()["id"]
        assert client.post(f"/jobs/{job}/cancel").status_code == 200
        assert client.delete("/jobs/nope").status_code == 404
        client.get(f"/jobs/{job}")  # reads are not audited
    with TestClient(create_app()) as anonymous:
        assert anonymous.post("/jobs", json=TINY).status_code == 401
    with TestClient(create_app(), headers=bearer(admin)) as auditor:
        events = auditor.get("/audit", params={"owner": env.owner}).json()["data"]
        got = [(e["method"], e["route"], e["object_id"], e["status_code"], e["outcome"]) for e in events]
        assert got == [("DELETE", "/jobs/{job_id}", "nope", 404, "refused"),
                       ("POST", "/jobs/{job_id}/cancel", job, 200, "succeeded"),
                       ("POST", "/jobs", job, 201, "succeeded")]
        assert all(e["key_id"] and e["client"] for e in events)
        anonymous_events = [e for e in auditor.get("/audit").json()["data"] if e["owner"] is None]
        assert anonymous_events[0]["outcome"] == "denied" and anonymous_events[0]["status_code"] == 401
    with session_scope() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.owner == env.owner)).all()


def test_a_cross_site_form_post_cannot_change_anything(client: TestClient, env: ApiEnv,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       migrated_postgres: str, redis_url: str):
    job = add_job(env, status=JobStatus.queued)
    # What a form on another site sends: text/plain, its own Origin, no Authorization (browsers add none).
    form = {"Content-Type": "text/plain", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    with TestClient(create_app()) as browser:
        r = browser.post(f"/jobs/{job}/cancel", content=b"x=1", headers=form)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    # Even with a key (a page that got hold of one cannot use a victim's browser either), and with auth off.
    r = client.post(f"/jobs/{job}/cancel", content=b"x=1", headers={**form, "Sec-Fetch-Site": ""})
    assert r.status_code == 403
    local = configure(monkeypatch, tmp_path / "local", database_url=migrated_postgres, redis_url=redis_url,
                      AUTH="false", OWNER=env.owner)
    try:
        with TestClient(create_app()) as browser:
            assert browser.post(f"/jobs/{job}/cancel", headers=form).status_code == 403
            assert browser.get(f"/jobs/{job}").json()["status"] == "queued"
            # This server's own page, and clients that are not browsers, may.
            same = browser.post(f"/jobs/{job}/cancel", headers={"Origin": "http://testserver"})
            assert same.status_code == 200 and same.json()["status"] == "cancelled"
    finally:
        cleanup(local, redis_url)


def test_auth_off_serves_the_local_owner_and_refuses_to_listen_beyond_loopback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_postgres: str, redis_url: str,
        capsys: pytest.CaptureFixture[str]):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url, AUTH="false")
    try:
        with TestClient(create_app()) as client:
            job = client.post("/jobs", json=TINY).json()
            assert client.get(f"/jobs/{job['id']}").status_code == 200
            assert client.get("/keys").status_code == 200  # the local owner is the admin
            # Whatever address it was bound to, the app answers only this machine's requests.
            remote = TestClient(client.app, client=("192.0.2.7", 40000))
            refused_remote = remote.get(f"/jobs/{job['id']}")
            assert refused_remote.status_code == 403 and "TAAS_AUTH=false" in refused_remote.json()["detail"]
        from app.local.up import UpOptions, up
        from app.server import main as server_main

        for host in ("0.0.0.0", "192.0.2.7", "127.example.com"):
            with pytest.raises(SystemExit) as refused:
                server_main(["--host", host, "--port", "1"])
            assert refused.value.code == 2
            assert f"the API listens only on a loopback address, not {host!r}" in capsys.readouterr().err
            assert up(UpOptions(host=host, port=1, workers=0)) == 2
            assert "only listens on a loopback address" in capsys.readouterr().err
    finally:
        cleanup(env, redis_url)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True),
    ("::1", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::ffff:192.0.2.7", False),
    ("127.example.com", False), ("192.0.2.7", False), ("", False)])
def test_loopback_means_this_machine_only(host: str, loopback: bool):
    assert is_loopback(host) is loopback


def test_an_unexpected_error_answers_500_with_the_security_headers():
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("/srv/secret/path exploded")

    guarded = Guard(failing, allowed_hosts=["*"], cors_origins=[])
    answer = TestClient(guarded, raise_server_exceptions=False).get("/anything")
    assert answer.status_code == 500 and answer.headers["x-content-type-options"] == "nosniff"
    assert answer.json() == {"detail": "internal server error: it was logged on the server"}


def test_answers_carry_security_headers_and_no_cors_unless_configured(client: TestClient):
    r = client.get("/jobs", headers={"Origin": "https://elsewhere.example"})
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "access-control-allow-origin" not in r.headers
    assert client.get("/health").headers["referrer-policy"] == "no-referrer"


def test_cors_origins_and_docs_follow_their_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      migrated_postgres: str, redis_url: str):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url,
                    CORS_ORIGINS="https://dash.example", DOCS="false")
    try:
        with api_client(env) as client:
            preflight = client.options("/jobs", headers={"Origin": "https://dash.example",
                                                         "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "authorization"})
            assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
            # An allowed origin may change state (with its key).
            assert client.post("/jobs", json=TINY, headers={"Origin": "https://dash.example"}).status_code == 201
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert client.get(path).status_code == 404
    finally:
        cleanup(env, redis_url)


def test_values_json_cannot_hold_or_the_database_cannot_store_are_4xx(client: TestClient):
    # NaN and infinities are valid Python JSON but not JSON: echoing them back used to be a 500.
    for raw in (b'{"optimizer": {"name": "sgd", "lr": NaN}}', b'{"epochs": Infinity}', b'{"seed": -Infinity}',
                b'{"name": "' + b"x" * 5000 + b'"}'):
        r = client.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (raw[:40], r.status_code, r.text[:200])
        assert r.json()["detail"]
    # A NUL in text: PostgreSQL refuses it; the answer is a 422 naming the field, before any database work.
    r = client.post("/jobs", json={**TINY, "name": "a\x00b"})
    assert r.status_code == 422 and "name" in r.text, r.text
    for path in ("/jobs/a%00b", "/datasets/a%00b", "/v2/models/a%00b"):
        assert client.get(path).status_code == 404, path
    assert client.get("/jobs", params={"cursor": "\x00"}).status_code == 400


def test_405_names_every_method_of_the_path(client: TestClient):
    r = client.put("/jobs/abc")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert client.patch("/jobs").headers["allow"] == "GET, POST"

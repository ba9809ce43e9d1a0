"""GET /jobs/{id}/events (Server-Sent Events) through the compose topology as processes: a client that follows
a job, is cut off mid-job and reconnects with Last-Event-ID gets every step exactly once, every epoch, each
status, then `end`; a finished job replays the same from the database."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import ApiError, Client, Event
from tests.processes import Service
from tests.processes import compose_topology as topology

EPOCHS = 12
STEPS_PER_EPOCH = 512 // 8  # the tiny datasets' 512 training images, batch 8
SPEC = {"name": "events", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": EPOCHS,
        "batch_size": 8, "device": "cpu"}


@pytest.fixture
def api(tmp_path: Path, postgres_url: str, redis_url: str,
        tiny_data_root: Path) -> Iterator[tuple[Client, list[Service]]]:
    with topology(tmp_path, database_url=postgres_url, redis_url=redis_url, data_root=tiny_data_root,
                  workers=1) as (client, services):
        key = client.headers["Authorization"].removeprefix("Bearer ")
        with Client(str(client.base_url), key) as taas:
            yield taas, services


def summary(events: list[Event]) -> dict[str, Any]:
    steps = [p["step"] for e in events if e.event == "loss" for p in e.data["losses"]]
    return {"steps": steps, "epochs": [e.data["epoch"] for e in events if e.event == "epoch"],
            "statuses": [e.data["status"] for e in events if e.event == "status"],
            "ends": [e.data["status"] for e in events if e.event == "end"]}


def test_a_client_cut_off_mid_job_resumes_with_no_gap_and_no_duplicate(api: tuple[Client, list[Service]]):
    taas, services = api
    job_id = taas.submit(SPEC)["id"]
    first: list[Event] = []
    for event in taas.events(job_id):  # leaving the loop closes the connection: a forced disconnect
        first.append(event)
        if event.event == "loss":
            break
    assert first[-1].event == "loss" and all(e.id for e in first)
    # A run's losses come after its status: the client saw "running" before the first loss.
    assert [e.data["status"] for e in first if e.event == "status"][-1] == "running", [e.event for e in first]
    assert taas.job(job_id)["status"] in ("queued", "running"), "the job ended before the cut: make it longer"
    rest = list(taas.events(job_id, last_event_id=first[-1].id))
    got = summary(first + rest)
    assert got["steps"] == list(range(EPOCHS * STEPS_PER_EPOCH)), "every step exactly once, in order"
    assert got["epochs"] == list(range(1, EPOCHS + 1))
    assert got["statuses"] in (["queued", "running", "succeeded"], ["running", "succeeded"]), got["statuses"]
    assert got["ends"] == ["succeeded"] and rest[-1].event == "end"
    end = rest[-1].data
    assert end["id"] == job_id and end["result"]["epochs"] == EPOCHS
    # The epoch events are the rows of /metrics; the losses those of /losses.
    assert [e.data for e in first + rest if e.event == "epoch"] == taas.metrics(job_id)
    losses = [p for e in first + rest if e.event == "loss" for p in e.data["losses"]]
    assert losses == taas.all_losses(job_id)

    # A finished job replays from the database, the same way, from the start or from any frame.
    replay = list(taas.events(job_id))
    assert summary(replay) == {**got, "statuses": ["succeeded"]}
    at = next(i for i, e in enumerate(replay) if e.event == "epoch" and e.data["epoch"] == 5)
    before, after = summary(replay[:at + 1]), summary(list(taas.events(job_id, last_event_id=replay[at].id)))
    assert before["epochs"] + after["epochs"] == list(range(1, EPOCHS + 1))
    assert before["steps"] + after["steps"] == got["steps"]


def test_a_cancelled_job_ends_its_stream_and_bad_ids_are_refused(api: tuple[Client, list[Service]]):
    taas, _ = api
    job_id = taas.submit({**SPEC, "epochs": 200})["id"]
    seen: list[Event] = []
    for event in taas.events(job_id):
        seen.append(event)
        if event.event == "loss" and sum(e.event == "loss" for e in seen) == 1:
            taas.cancel(job_id)  # once: loss frames persisted before the job ended may still follow its end
    got = summary(seen)
    assert got["ends"] == ["cancelled"] and "cancelled" in got["statuses"]
    assert got["steps"] == list(range(len(got["steps"])))
    with pytest.raises(ApiError) as refused:
        list(taas.events(job_id, last_event_id="not-an-id"))
    assert refused.value.status == 400 and "Last-Event-ID" in refused.value.detail
    with pytest.raises(ApiError) as missing:
        list(taas.events("0" * 32))
    assert missing.value.status == 404
    # Without a key: 401, before any stream starts.
    assert httpx.get(f"{taas.url}/jobs/{job_id}/events", timeout=10).status_code == 401


def test_an_idle_stream_gets_keep_alive_comments(tmp_path: Path, postgres_url: str, redis_url: str,
                                                 tiny_data_root: Path):
    # No training worker (workers=0): the job stays queued, and its stream idle.
    with topology(tmp_path, database_url=postgres_url, redis_url=redis_url, data_root=tiny_data_root, workers=0,
                  events_keepalive_seconds="0.3") as (client, _):
        job_id = client.post("/jobs", json=SPEC).json()["id"]
        lines: list[str] = []
        with client.stream("GET", f"/jobs/{job_id}/events", timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                lines.append(line)
                if sum(line.startswith(": keep-alive") for line in lines) >= 2:
                    break
        assert lines[0] == "event: status" and any('"status":"queued"' in line for line in lines)

"""How soon a loss reaches a client: GET /jobs/{id}/events (Server-Sent Events) against polling
GET /jobs/{id}/losses every 0.2 s, both following the same job in the same run. Prints JSON.

    .venv/bin/python -m bench.sse_latency      # starts `taas up` in a temp folder (SQLite + own Redis)

For each loss frame the SSE client receives: the delay from the chunk's hand-over (the worker hands a chunk
over right after its last batch, whose `t` it carries) to its arrival, and for every loss the delay from its
own batch finishing (its `t`) to its arrival, the figure the polling client gives too. Goal: a chunk reaches a
connected client within 100 ms (median) of being handed over. Defaults: the Fashion-MNIST tutorial job (mlp,
SGD, batch 64), 1 epoch, on ../shared/data. The worker, API and clients share one clock (same machine).
"""

import argparse
import json
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app.client import Client
from bench.loss_latency import DEFAULT_DATA, measure, start_stack


def stats(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"median_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1), "n": len(ordered)}


def follow_events(taas: Client, job_id: str) -> dict[str, Any]:
    chunk_delays: list[float] = []
    loss_delays: list[float] = []
    steps: list[int] = []
    for event in taas.follow(job_id):
        arrived = time.time()
        if event.event == "loss":
            points = event.data["losses"]
            chunk_delays.append(arrived - points[-1]["t"])
            loss_delays += [arrived - p["t"] for p in points]
            steps += [p["step"] for p in points]
    return {"chunk_handover_to_client": stats(chunk_delays), "batch_end_to_client": stats(loss_delays),
            "steps": len(steps), "duplicate_steps": len(steps) - len(set(steps)),
            "contiguous": steps == list(range(len(steps)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding FashionMNIST/raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between the polling client's polls")
    args = parser.parse_args()
    spec = {"name": "sse-latency", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"},
            "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="taas-bench-") as tmp:
        process, url, headers = start_stack(Path(tmp), args.data, workers=1)
        try:
            key = headers["Authorization"].removeprefix("Bearer ")
            with Client(url, key) as taas:
                # The polling client (bench.loss_latency's) submits the job; the SSE client follows that same
                # job from before its first batch (the worker needs seconds to start it).
                polled: dict[str, Any] = {}

                def poll() -> None:
                    polled.update(measure(url, headers, spec, args.interval, timeout=1800))

                poller = threading.Thread(target=poll, daemon=True)
                poller.start()
                job_id = wait_for_job(taas, spec["name"])
                streamed = follow_events(taas, job_id)
                poller.join(timeout=120)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
    out = {
        "benchmark": "loss latency: SSE GET /jobs/{id}/events against polling GET /jobs/{id}/losses every "
                     f"{args.interval} s, the same job, fashion-mnist tutorial mlp, {args.epochs} epoch(s)",
        "sse": streamed,
        "polling": {"batch_end_to_client": {"median_ms": round(1000 * polled["median_s"], 1),
                                            "p95_ms": round(1000 * polled["p95_s"], 1),
                                            "max_ms": round(1000 * polled["max_s"], 1), "n": polled["n"]},
                    "missing_steps": polled["missing_steps"], "duplicate_steps": polled["duplicate_steps"]},
        "job_id": job_id,
    }
    out["goals"] = {"sse_chunk_median_ms<=100": streamed["chunk_handover_to_client"]["median_ms"] <= 100,
                    "sse_every_step_once": streamed["contiguous"] and streamed["duplicate_steps"] == 0}
    print(json.dumps(out, indent=2))


def wait_for_job(taas: Client, name: str, timeout: float = 60) -> str:
    """The id of the job named `name` once the polling client submitted it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in taas.jobs(limit=5):
            if job["name"] == name:
                return str(job["id"])
        time.sleep(0.02)
    raise SystemExit(f"no job {name!r} appeared within {timeout} s")


if __name__ == "__main__":
    main()

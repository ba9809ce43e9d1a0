"""How soon a batch's loss is readable over HTTP: for every loss, the delay between its batch finishing
(its `t`) and the GET /jobs/{id}/losses poll that first returned it. Goal: median <= 1 s. Prints JSON.

    .venv/bin/python -m bench.loss_latency                 # starts `taas up` in a temp folder (SQLite + own Redis)
    .venv/bin/python -m bench.loss_latency --url http://127.0.0.1:8000   # measure a stack that is running

Defaults: the Fashion-MNIST tutorial job (mlp, SGD, batch 64) for 1 epoch on ../shared/data, polling every
0.2 s like a dashboard would. The worker, API and this client share one clock (same machine).
"""

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.local.processes import free_port
from bench.auth import up_key

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def start_stack(state_dir: Path, data: Path,
                workers: int) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """`taas up` in state_dir with a copy of the Fashion-MNIST files; returns the process, its URL and the
    headers of its admin key."""
    shutil.copytree(data / "FashionMNIST", state_dir / "data" / "FashionMNIST")
    port = free_port()
    out = (state_dir / "taas-up.out").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--state-dir", str(state_dir), "--port", str(port),
         "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while f"taas is up: {url}" not in (state_dir / "taas-up.out").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"taas up did not start:\n{(state_dir / 'taas-up.out').read_text()}")
        time.sleep(0.2)
    return process, url, up_key(state_dir)


def measure(url: str, headers: dict[str, str], spec: dict[str, Any], interval: float,
            timeout: float) -> dict[str, Any]:
    """Submit `spec`, follow its losses by polling, return the latency statistics."""
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        response = client.post("/jobs", json=spec)
        response.raise_for_status()
        job_id = response.json()["id"]
        delays: list[float] = []
        steps: list[int] = []
        cursor: str | None = None
        polls = 0
        status = "queued"
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            params: dict[str, Any] = {"limit": 10_000} | ({"after": cursor} if cursor else {})
            page = client.get(f"/jobs/{job_id}/losses", params=params).json()
            seen = time.time()
            polls += 1
            delays += [seen - loss["t"] for loss in page["data"]]
            steps += [loss["step"] for loss in page["data"]]
            cursor = page["next_cursor"]
            if page["data"] and len(page["data"]) == params["limit"]:
                continue  # a backlog: read on at once
            if status in ("succeeded", "failed", "cancelled"):
                break  # one more poll after the end (done above) picked up the rest
            status = client.get(f"/jobs/{job_id}").json()["status"]
            time.sleep(interval)
        followed = time.monotonic() - started
        job = client.get(f"/jobs/{job_id}").json()
    if not delays:
        raise SystemExit(f"no losses read; job: {json.dumps(job)[:2000]}")
    ordered = sorted(delays)
    expected = job["progress"]["total_steps"] or 0
    return {
        "median_s": round(statistics.median(ordered), 4),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
        "max_s": round(ordered[-1], 4),
        "min_s": round(ordered[0], 4),
        "n": len(delays),
        "goal_median_s": 1.0,
        "meets_goal": statistics.median(ordered) <= 1.0,
        "expected_steps": expected,
        "missing_steps": len(set(range(expected)) - set(steps)),
        "duplicate_steps": len(steps) - len(set(steps)),
        "poll_interval_s": interval,
        "polls": polls,
        "job_id": job_id,
        "job_status": job["status"],
        "device": job["device"],
        "followed_s": round(followed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running stack; default: start `taas up` in a temp folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding FashionMNIST/raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--key", help="the API key of the stack at --url")
    args = parser.parse_args()
    spec = {"name": "loss-latency", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"},
            "epochs": args.epochs, "batch_size": args.batch_size}
    if args.url:
        result = measure(args.url, {"Authorization": f"Bearer {args.key}"} if args.key else {}, spec,
                         args.interval, args.timeout)
        result["stack"] = args.url
    else:
        with tempfile.TemporaryDirectory(prefix="taas-bench-") as tmp:
            process, url, headers = start_stack(Path(tmp), args.data, workers=1)
            try:
                result = measure(url, headers, spec, args.interval, args.timeout)
                result["stack"] = "taas up (SQLite + its own Redis), 1 worker"
            finally:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

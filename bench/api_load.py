"""GET /jobs/{id} by 64 clients while a job trains on the same machine, through the compose topology
(python -m app.server, a Celery worker, PostgreSQL, Redis) started as processes. Prints JSON.

    .venv/bin/python -m bench.api_load [--data ../shared/data] [--seconds 60] [--postgres URL]

Measured in one run: the tutorial job's epoch seconds alone (the reference), then those of the same job
(given epochs enough) that finished while wrk polled its status on 64 keep-alive connections (every answer
checked: 200, the job's id). Goals: >= 1,000 req/s, p99 <= 50 ms, no error, and epochs under load within 2x of alone.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from app.core.config import Settings
from app.local.processes import free_port
from bench import wrk
from bench.auth import bench_key
from bench.serving import start, stop, unpacked

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SPEC = {"name": "load", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "device": "cpu"}


def wait_job(client: httpx.Client, job_id: str, status: tuple[str, ...], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/jobs/{job_id}").json())["status"] not in status:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.2)
    return job


def epochs(client: httpx.Client, job_id: str) -> list[float]:
    job = wait_job(client, job_id, ("succeeded", "failed", "cancelled"))
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
    return [m["seconds"] for m in client.get(f"/jobs/{job_id}/metrics").json()["data"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="an admin URL: the bench creates and drops its own database there")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--worker-threads", type=int, default=1,
                    help="the worker's torch threads (TAAS_WORKER_TORCH_THREADS; 0: one per core)")
    ap.add_argument("--worker-nice", type=int, default=None,
                    help="the worker's CPU priority (TAAS_WORKER_NICE; default: the setting's default)")
    ap.add_argument("--api-processes", type=int, default=None,
                    help="API processes (TAAS_API_PROCESSES; default: the setting's default, one per core)")
    args = ap.parse_args()

    work = wrk.scratch()
    name = f"taas_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    services: list[subprocess.Popen[bytes]] = []
    try:
        data = unpacked(args.data, work / "data")
        prefix = f"taas-bench-{uuid.uuid4().hex[:8]}-"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAAS_")}
        env.update(TAAS_DATABASE_URL=args.postgres.rsplit("/", 1)[0] + f"/{name}", TAAS_REDIS_URL=args.redis,
                   TAAS_STATE_DIR=str(work / "state"), TAAS_DATA_ROOT=str(data), TAAS_QUEUE_PREFIX=prefix,
                   TAAS_WORKER_QUEUE="cpu", TAAS_WORKER_TORCH_THREADS=str(args.worker_threads),
                   PYTHONPATH=str(ROOT))
        if args.worker_nice is not None:
            env["TAAS_WORKER_NICE"] = str(args.worker_nice)
        if args.api_processes is not None:
            env["TAAS_API_PROCESSES"] = str(args.api_processes)
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        services.append(start([sys.executable, "-m", "app.server", "--port", str(port), "--log-level", "warning"],
                              env, work / "api.log", url))
        with (work / "worker.log").open("wb") as log:
            services.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", f"{prefix}cpu",
                 "--concurrency", "1", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
                 "--loglevel", "WARNING"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))

        headers = bench_key(env["TAAS_DATABASE_URL"], Settings().owner)
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            spec = {**SPEC, "epochs": args.epochs}
            warm = client.post("/jobs", json={**spec, "epochs": 1}).raise_for_status().json()["id"]
            epochs(client, warm)  # the worker has started, imported torch and decoded the data once
            alone = epochs(client, client.post("/jobs", json=spec).raise_for_status().json()["id"])
            # The same load with nothing training: the API's own ceiling here.
            idle = wrk.run(f"{url}/jobs/{warm}", wrk.script(method="GET", expect=f'"id":"{warm}"', headers=headers),
                           connections=args.connections, duration=min(args.seconds, 10), threads=2)
            # Every request for another job (64 of them, cancelled while queued), so no two polls in flight
            # are for one job: what many dashboards polling many jobs do.
            many = []
            for _ in range(args.connections):
                other = client.post("/jobs", json={**spec, "name": "other"}).raise_for_status().json()["id"]
                client.post(f"/jobs/{other}/cancel").raise_for_status()
                many.append(f"/jobs/{other}")
            distinct = wrk.run(url, wrk.script(method="GET", expect='"name":"other"', expect_count=2, paths=many,
                                               headers=headers),
                               connections=args.connections, duration=min(args.seconds, 10), threads=2)

            # Long enough to train through the whole load; the epochs it finished by then all ran under it.
            job_id = client.post("/jobs", json={**spec, "epochs": 1000}).raise_for_status().json()["id"]
            wait_job(client, job_id, ("running",))
            result = wrk.run(f"{url}/jobs/{job_id}", wrk.script(method="GET", expect=f'"id":"{job_id}"',
                                                                headers=headers),
                             connections=args.connections, duration=args.seconds, threads=2)
            loaded = [m["seconds"] for m in client.get(f"/jobs/{job_id}/metrics").json()["data"]]
            client.post(f"/jobs/{job_id}/cancel").raise_for_status()
            wait_job(client, job_id, ("cancelled", "succeeded", "failed"))
            job = client.get(f"/jobs/{job_id}").json()
            # An epoch that did not finish under load counts as at least as long as the load lasted.
            loaded = loaded or [float(args.seconds)]
            progress = job["progress"]

        out = {
            "benchmark": f"GET /jobs/{{id}} of a running job, {args.connections} keep-alive clients for "
                         f"{args.seconds:g} s, while it trains (fashion-mnist tutorial mlp), PostgreSQL",
            "machine": {"cores": os.cpu_count()},
            "worker_torch_threads": args.worker_threads or "one per core",
            "get_job_while_training": result,
            "get_job_nothing_training": idle,
            "get_distinct_jobs_nothing_training": distinct,
            "epoch_seconds_alone": alone,
            "epoch_seconds_under_load": loaded,
            "polled_job_progress_under_load": progress,
        }
        out["epoch_slowdown"] = round(statistics.median(loaded) / statistics.median(alone), 2)
        out["goals"] = {
            "req_per_s>=1000": result["req_per_s"] >= 1000,
            "p99_ms<=50": result["p99_ms"] <= 50,
            "no_error": result["non_200"] == result["wrong"] == result["socket_errors"] == 0,
            "epoch_slowdown<=2": out["epoch_slowdown"] <= 2,
        }
        print(json.dumps(out, indent=2))
    finally:
        for process in services:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

"""POST /predict under load: taas (python -m app.server, as taas up and compose run it) against a bare
FastAPI app (bench/bare_predict.py, one uvicorn process), one after the other in one run. Prints JSON.

    .venv/bin/python -m bench.serving [--data ../shared/data] [--seconds 10]

The Fashion-MNIST tutorial MLP is trained for one epoch here, its weights saved where the engine puts them
and a succeeded job recorded in a throwaway SQLite state folder. Each request carries 28x28 PNGs of the
test set's first image; every response is checked for the label the network gives it (wrk, bench/wrk.py).
"""

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image
from safetensors.torch import save_file
from sqlalchemy.orm import Session
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

from app.core.config import Settings
from app.core.db import make_engine
from app.core.migrate import upgrade_head
from app.core.tables import Job, JobStatus, utcnow
from app.local.processes import free_port
from bench import wrk
from bench.auth import bench_key
from bench.tutorial_loop import NeuralNetwork
from spec.datasets import BUILTIN_DATASETS, FASHION_CLASSES
from spec.job import JobSpec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def unpacked(data: Path, root: Path) -> Path:
    """A copy of ../shared/data's Fashion-MNIST, unpacked by torchvision (from the local archives, MD5 checked)."""
    shutil.copytree(data / "FashionMNIST", root / "FashionMNIST")
    datasets.FashionMNIST(root=str(root), download=True)
    return root


def train_tutorial_mlp(data: Path, seed: int = 0) -> tuple[nn.Module, tuple[Image.Image, int]]:
    """One epoch of the tutorial (SGD 1e-3, batch 64); the network and the test set's first image."""
    torch.manual_seed(seed)
    train = datasets.FashionMNIST(root=str(data), train=True, download=False, transform=ToTensor())
    test = datasets.FashionMNIST(root=str(data), train=False, download=False)
    network = NeuralNetwork()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    for x, y in DataLoader(train, batch_size=64):
        loss = nn.functional.cross_entropy(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    image, target = test[0]
    return network.eval(), (image, target)


def record_job(settings: Settings, network: nn.Module) -> str:
    """A succeeded job of the tutorial spec, with the network as its best weights."""
    upgrade_head(settings.database_url)
    spec = JobSpec.model_validate({"name": "bench", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}})
    job = Job(owner=settings.owner, name="bench", status=JobStatus.succeeded, spec=spec.model_dump(mode="json"),
              queue="cpu", finished_at=utcnow(),
              dataset_info=BUILTIN_DATASETS["fashion-mnist"].info.model_dump(mode="json"))
    engine = make_engine(settings.database_url)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(job)
    engine.dispose()
    path = settings.artifacts_path / job.id / "best.safetensors"
    path.parent.mkdir(parents=True)
    save_file(network.state_dict(), str(path))
    return job.id


def start(args: list[str], env: dict[str, str], log: Path, url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{args} exited:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url + "/openapi.json", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"{args} did not start:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, 15)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def measure(url: str, png: bytes, label: str, fields: dict[str, str], seconds: float,
            headers: dict[str, str] | None = None) -> dict:
    one, one_type = wrk.multipart(fields, [("files", "a.png", png)])
    many, many_type = wrk.multipart(fields, [("files", f"{i}.png", png) for i in range(64)])
    expect = f'"label":"{label}"'

    def load(body: bytes, content_type: str, connections: int, images: int) -> dict:
        lua = wrk.script(method="POST", body=body, headers={"Content-Type": content_type, **(headers or {})},
                         expect=expect,
                         expect_count=images)
        result = wrk.run(url + "/predict", lua, connections=connections, duration=seconds,
                         threads=min(connections, 2))
        result["images_per_s"] = round(result["req_per_s"] * images, 1)
        return result

    load(one, one_type, 8, 1)  # warm-up: the model loads, caches fill
    return {
        "one_image_1_client": load(one, one_type, 1, 1),
        "one_image_8_clients": load(one, one_type, 8, 1),
        "64_images_4_clients": load(many, many_type, 4, 64),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--processes", type=int, default=0, help="taas API processes (default: one per core)")
    args = ap.parse_args()

    work = wrk.scratch()
    try:
        network, (image, _) = train_tutorial_mlp(unpacked(args.data, work / "data"))
        with torch.inference_mode():
            label = FASHION_CLASSES[int(network(ToTensor()(image)[None]).argmax())]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png = buffer.getvalue()

        env = {k: v for k, v in os.environ.items() if not k.startswith("TAAS_")}
        env.update(TAAS_STATE_DIR=str(work / "state"), PYTHONPATH=str(ROOT))
        settings = Settings(state_dir=work / "state")
        job_id = record_job(settings, network)
        weights = settings.artifacts_path / job_id / "best.safetensors"

        out: dict = {
            "benchmark": "POST /predict, Fashion-MNIST tutorial MLP, 28x28 PNG, wrk keep-alive, labels checked",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch": torch.__version__},
            "seconds_per_load": args.seconds,
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        bare = start([sys.executable, "-m", "uvicorn", "bench.bare_predict:app", "--port", str(port),
                      "--log-level", "warning"], {**env, "BARE_WEIGHTS": str(weights)}, work / "bare.log", url)
        try:
            out["bare_fastapi_1_process"] = measure(url, png, label, {}, args.seconds)
        finally:
            stop(bare)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = [sys.executable, "-m", "app.server", "--port", str(port), "--log-level", "warning"]
        if args.processes:
            server += ["--processes", str(args.processes)]
        taas = start(server, env, work / "taas.log", url)
        try:
            out["taas"] = measure(url, png, label, {"job_id": job_id}, args.seconds,
                                  bench_key(settings.database_url, settings.owner))
        finally:
            stop(taas)

        taas_8, bare_8 = out["taas"]["one_image_8_clients"], out["bare_fastapi_1_process"]["one_image_8_clients"]
        out["taas_vs_bare_8_clients"] = round(taas_8["req_per_s"] / bare_8["req_per_s"], 2)
        out["goals"] = {
            "8_clients_req_per_s>=1500": taas_8["req_per_s"] >= 1500,
            "8_clients>=1.5x_bare": out["taas_vs_bare_8_clients"] >= 1.5,
            "1_client_p50_ms<=1.5": out["taas"]["one_image_1_client"]["p50_ms"] <= 1.5,
            "8_clients_p99_ms<=20": taas_8["p99_ms"] <= 20,
            "64_images_per_request>=5000_images_per_s": out["taas"]["64_images_4_clients"]["images_per_s"] >= 5000,
            "every_answer_checked_and_right": all(
                r["wrong"] == 0 and r["non_200"] == 0 and r["socket_errors"] == 0
                for side in ("taas", "bare_fastapi_1_process") for r in out[side].values()),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

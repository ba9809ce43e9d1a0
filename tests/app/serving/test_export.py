"""GET /jobs/{id}/export: ONNX run by onnxruntime and TorchScript run by torch.jit.load give the
probabilities POST /predict gives on the same images; each is produced once and kept with the job."""

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.core.tables import JobStatus
from tests.app.harness import ApiEnv, add_job, write_weights

MLP = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}
LENET_NORMALIZED = {"dataset": {"name": "mnist", "normalize": True}, "model": {"arch": "lenet5"}}


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def predicted(client: TestClient, job: str, arrays: np.ndarray) -> np.ndarray:
    files = []
    for i, a in enumerate(arrays):
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        files.append(("files", (f"{i}.png", buffer.getvalue(), "image/png")))
    r = client.post("/predict", data={"job_id": job}, files=files)
    assert r.status_code == 200, r.text
    return np.array([p["probabilities"] for p in r.json()["predictions"]], dtype=np.float32)


def pixels(arrays: np.ndarray) -> np.ndarray:
    """What ToTensor gives: float32 N x 1 x H x W in 0..1."""
    return (arrays.astype(np.float32) / 255)[:, None]


@pytest.mark.parametrize("spec", [MLP, LENET_NORMALIZED], ids=["mlp", "lenet5-normalized"])
def test_onnx_export_equals_predict(client: TestClient, env: ApiEnv, spec: dict):
    job = add_job(env, status=JobStatus.succeeded, spec=spec)
    write_weights(env, job, spec)
    arrays = images(6, seed=1)
    r = client.get(f"/jobs/{job}/export", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/onnx"
    assert r.headers["content-disposition"] == f'attachment; filename="{job}-model.onnx"'
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    (probabilities,) = session.run(None, {"input": pixels(arrays)})
    np.testing.assert_allclose(probabilities, predicted(client, job, arrays), atol=1e-5)
    # Any batch size: the batch axis is dynamic.
    (one,) = session.run(None, {"input": pixels(arrays[:1])})
    np.testing.assert_allclose(one, probabilities[:1], atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_equals_predict(client: TestClient, env: ApiEnv):
    job = add_job(env, status=JobStatus.succeeded, spec=LENET_NORMALIZED)
    write_weights(env, job, LENET_NORMALIZED)
    arrays = images(5, seed=2)
    r = client.get(f"/jobs/{job}/export", params={"format": "torchscript"})
    assert r.status_code == 200, r.text
    module = torch.jit.load(io.BytesIO(r.content))
    with torch.inference_mode():
        probabilities = module(torch.from_numpy(pixels(arrays))).numpy()
    np.testing.assert_allclose(probabilities, predicted(client, job, arrays), atol=1e-5)


def test_an_export_is_produced_once_and_kept_with_the_job(client: TestClient, env: ApiEnv):
    job = add_job(env, status=JobStatus.succeeded, spec=MLP)
    write_weights(env, job, MLP)
    kept = env.settings.artifacts_path / job / "model.onnx"
    assert not kept.exists()
    first = client.get(f"/jobs/{job}/export")  # onnx by default
    assert first.status_code == 200 and kept.read_bytes() == first.content
    stamp = kept.stat().st_mtime_ns
    second = client.get(f"/jobs/{job}/export", params={"format": "onnx"})
    assert second.content == first.content and kept.stat().st_mtime_ns == stamp
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind
    assert client.delete(f"/jobs/{job}").status_code == 204
    assert not kept.parent.exists()


def test_export_of_unknown_unfinished_and_foreign_jobs(client: TestClient, env: ApiEnv):
    assert client.get("/jobs/nope/export").status_code == 404
    running = add_job(env, status=JobStatus.running)
    r = client.get(f"/jobs/{running}/export")
    assert r.status_code == 409 and "is running, not succeeded" in r.json()["detail"]
    foreign = add_job(env, owner="someone-else")
    write_weights(env, foreign)
    assert client.get(f"/jobs/{foreign}/export").status_code == 404
    r = client.get(f"/jobs/{running}/export", params={"format": "tensorflow"})
    assert r.status_code == 422

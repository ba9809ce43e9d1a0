"""POST /predict with real weights (a seeded network saved as safetensors where the engine puts them)."""

import io
import uuid

import anyio
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.spec import JobSpec
from app.tables import JobStatus
from models import build_model
from tests.app.harness import ApiEnv, add_job, write_weights
from worker.datasets import DATASETS, FASHION_CLASSES

MNIST_MLP = {"dataset": {"name": "mnist"}, "model": {"arch": "mnist-mlp"}, "loss": "nll",
             "optimizer": {"name": "adam"}}


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (28, 28)).astype(np.uint8) for _ in range(n)]


def expected_probabilities(spec: dict, arrays: list[np.ndarray]) -> torch.Tensor:
    """The same network, seeded as write_weights seeds it, on ToTensor'd images."""
    job_spec = JobSpec.model_validate(spec)
    torch.manual_seed(0)
    network = build_model(job_spec.model.arch, job_spec.model_params, DATASETS[job_spec.dataset.name].shape).eval()
    batch = torch.stack([torch.from_numpy(a).float().div(255).unsqueeze(0) for a in arrays])
    with torch.no_grad():
        return torch.softmax(network(batch), dim=1)


@pytest.fixture
def job_id(env: ApiEnv) -> str:
    job = add_job(env, status=JobStatus.succeeded)
    write_weights(env, job)
    return job


def post(client: TestClient, job: str, files: list[tuple[str, bytes]]):
    return client.post("/predict", data={"job_id": job},
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def test_predicts_every_image_with_the_jobs_weights(client: TestClient, job_id: str):
    arrays = images(3)
    r = post(client, job_id, [(f"img{i}.png", png(a)) for i, a in enumerate(arrays)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["job_id"] == job_id
    expected = expected_probabilities({"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}, arrays)
    assert [p["filename"] for p in body["predictions"]] == ["img0.png", "img1.png", "img2.png"]
    for p, probs in zip(body["predictions"], expected, strict=True):
        assert p["probabilities"] == pytest.approx(probs.tolist(), abs=1e-6)
        assert p["class_index"] == int(probs.argmax())
        assert p["label"] == FASHION_CLASSES[p["class_index"]]
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_log_softmax_networks_give_probabilities_too(client: TestClient, env: ApiEnv):
    job = add_job(env, status=JobStatus.succeeded, spec=MNIST_MLP)
    write_weights(env, job, MNIST_MLP)
    arrays = images(2, seed=1)
    r = post(client, job, [("a.png", png(arrays[0])), ("b.png", png(arrays[1]))])
    assert r.status_code == 200, r.text
    expected = expected_probabilities(MNIST_MLP, arrays)
    got = [p["probabilities"] for p in r.json()["predictions"]]
    assert got == [pytest.approx(e.tolist(), abs=1e-6) for e in expected]
    assert r.json()["predictions"][0]["label"] == str(r.json()["predictions"][0]["class_index"])


def test_colour_and_other_sizes_are_converted(client: TestClient, job_id: str):
    rng = np.random.default_rng(3)
    rgb = png(rng.integers(0, 256, (56, 40, 3)), mode="RGB")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)).save(jpeg, format="JPEG")
    r = post(client, job_id, [("big.png", rgb), ("photo.jpg", jpeg.getvalue())])
    assert r.status_code == 200, r.text
    assert [len(p["probabilities"]) for p in r.json()["predictions"]] == [10, 10]


def test_unknown_foreign_and_unfinished_jobs(client: TestClient, env: ApiEnv):
    image = [("a.png", png(images(1)[0]))]
    assert post(client, "nope", image).status_code == 404
    foreign = add_job(env, owner="someone-else")
    write_weights(env, foreign)
    assert post(client, foreign, image).status_code == 404
    running = add_job(env, status=JobStatus.running)
    r = post(client, running, image)
    assert r.status_code == 409 and "is running, not succeeded" in r.json()["detail"]


def test_not_an_image_is_415_and_a_broken_one_400(client: TestClient, job_id: str):
    r = post(client, job_id, [("ok.png", png(images(1)[0])), ("notes.txt", b"hello, not an image")])
    assert r.status_code == 415 and "'notes.txt' is not an image" in r.json()["detail"]
    truncated = png(images(1)[0])[:60]
    r = post(client, job_id, [("cut.png", truncated)])
    assert r.status_code == 400 and "'cut.png' is broken" in r.json()["detail"]
    assert post(client, job_id, [("empty.png", b"")]).status_code == 415


def test_too_many_pixels_is_413(client: TestClient, job_id: str):
    huge = io.BytesIO()
    Image.new("L", (5000, 5000)).save(huge, format="PNG")  # compresses to a few KiB
    r = post(client, job_id, [("huge.png", huge.getvalue())])
    assert r.status_code == 413 and "5000x5000" in r.json()["detail"]


def test_no_files_and_no_job_id_are_422(client: TestClient, job_id: str):
    r = client.post("/predict", data={"job_id": job_id})
    assert r.status_code == 422 and any("files" in e["loc"] for e in r.json()["detail"])
    r = client.post("/predict", files=[("files", ("a.png", png(images(1)[0]), "image/png"))])
    assert r.status_code == 422 and any("job_id" in e["loc"] for e in r.json()["detail"])


def test_too_many_files_is_413(client: TestClient, env: ApiEnv, job_id: str):
    n = env.settings.predict_max_files + 1
    one = png(images(1)[0])
    r = post(client, job_id, [(f"{i}.png", one) for i in range(n)])
    assert r.status_code == 413 and f"{n} files" in r.json()["detail"]


def multipart(job: str, size: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"job_id\"\r\n\r\n{job}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return body + b"x" * size + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_body_over_the_limit_is_413_by_content_length(client: TestClient, env: ApiEnv, job_id: str):
    body, content_type = multipart(job_id, env.settings.predict_max_bytes)
    r = client.post("/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == 413
    assert f"at most {env.settings.predict_max_bytes} bytes" in r.json()["detail"]


def test_body_over_the_limit_is_413_while_streaming(client: TestClient, env: ApiEnv, job_id: str):
    body, content_type = multipart(job_id, env.settings.predict_max_bytes)
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    r = client.post("/predict", content=iter(chunks), headers={"content-type": content_type})
    assert "content-length" not in r.request.headers  # sent chunked
    assert r.status_code == 413
    assert f"at most {env.settings.predict_max_bytes} bytes" in r.json()["detail"]


def test_content_length_is_checked_before_reading_the_body(env: ApiEnv):
    """At the ASGI level: the 413 goes out without a single receive() call."""
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-length", str(10**9).encode()),
                         (b"content-type", b"multipart/form-data; boundary=x")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    anyio.run(create_app(), scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413

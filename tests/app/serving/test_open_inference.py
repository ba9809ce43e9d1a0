"""The Open Inference Protocol (KServe v2) routes, driven by tritonclient's HTTP client against the real
server process (app.server, PostgreSQL), compared with POST /predict on the same images."""

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tritonclient import http as httpclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from app.core.tables import JobStatus
from app.local.processes import free_port
from tests.app.harness import ApiEnv, add_job, api_key, bearer, write_weights
from tests.processes import Service, start_api, wait_healthy

LENET = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "lenet5"}}


def arrays(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class BearerAuth(InferenceServerClientPlugin):
    """An API key on every request, as tritonclient's own BasicAuth plugin adds credentials."""

    def __init__(self, key: str):
        self.header = bearer(key)["Authorization"]

    def __call__(self, request: object) -> None:
        request.headers["authorization"] = self.header  # type: ignore[attr-defined]


@pytest.fixture
def key(env: ApiEnv) -> str:
    return api_key(env.owner)


@pytest.fixture
def server(env: ApiEnv, tmp_path: Path, key: str) -> Iterator[tuple[str, Service]]:
    port = free_port()
    service = start_api(dict(os.environ), tmp_path / "logs", port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", service)
        yield f"127.0.0.1:{port}", service
    finally:
        service.stop()


def triton(address: str, key: str) -> "httpclient.InferenceServerClient":
    client = httpclient.InferenceServerClient(address)
    client.register_plugin(BearerAuth(key))
    return client


@pytest.fixture
def job(env: ApiEnv) -> str:
    job_id = add_job(env, status=JobStatus.succeeded)
    write_weights(env, job_id)
    return job_id


def labels(array: np.ndarray) -> list[str]:
    """BYTES elements: bytes from binary data, str from JSON (as tritonclient gives them)."""
    return [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]


def predict(address: str, key: str, job_id: str, images: np.ndarray) -> dict:
    files = [("files", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    response = httpx.post(f"http://{address}/predict", data={"job_id": job_id}, files=files, timeout=30,
                          headers=bearer(key))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    return {"probabilities": np.array([p["probabilities"] for p in predictions], dtype=np.float32),
            "labels": [p["label"] for p in predictions]}


def test_tritonclient_health_metadata_and_readiness(server: tuple[str, Service], job: str, key: str, env: ApiEnv):
    address, _ = server
    client = triton(address, key)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(job)
    assert metadata["name"] == job and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
                                  {"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                   {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert client.is_model_ready(job)
    # Scoped like every route: unknown, another owner's and unfinished jobs are not servable models.
    foreign = add_job(env, owner="someone-else")
    write_weights(env, foreign)
    running = add_job(env, status=JobStatus.running)
    for name in ("nope", foreign, running):
        assert not client.is_model_ready(name)
    with pytest.raises(InferenceServerException, match="no job 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="is running, not succeeded"):
        client.get_model_metadata(running)
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_fp32_gives_predicts_probabilities(server: tuple[str, Service], job: str, key: str,
                                                              binary: bool):
    address, _ = server
    images = arrays(5)
    expected = predict(address, key, job, images)
    client = triton(address, key)
    pixels = (images.astype(np.float32) / 255)[:, None]
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary),
               httpclient.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer(job, [tensor], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-6)
    assert labels(result.as_numpy("label")) == expected["labels"]
    client.close()


def test_tritonclient_infer_bytes_images_gives_predicts_probabilities(server: tuple[str, Service], job: str, key: str):
    address, _ = server
    images = arrays(4, seed=1)
    expected = predict(address, key, job, images)
    client = triton(address, key)
    encoded = np.array([png(a) for a in images], dtype=np.object_)
    tensor = httpclient.InferInput("images", [len(images)], "BYTES")
    tensor.set_data_from_numpy(encoded)  # binary data: tritonclient's default
    result = client.infer(job, [tensor])  # no outputs named: all of them, as JSON
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
    assert labels(result.as_numpy("label")) == expected["labels"]
    # One output asked for, as binary.
    result = client.infer(job, [tensor], outputs=[httpclient.InferRequestedOutput("label", binary_data=True)])
    assert result.as_numpy("probabilities") is None
    assert labels(result.as_numpy("label")) == expected["labels"]
    client.close()


def test_tritonclient_errors_carry_the_reason(server: tuple[str, Service], job: str, key: str):
    address, _ = server
    client = triton(address, key)
    wrong = httpclient.InferInput("input", [1, 3, 28, 28], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 28, 28), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"must have shape \[N, 1, 28, 28\]"):
        client.infer(job, [wrong])
    broken = httpclient.InferInput("images", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="is not an image"):
        client.infer(job, [broken])
    client.close()


# --- the protocol's edges, in process -----------------------------------------------------------------

def infer(client: TestClient, job: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body  # json.dumps writes NaN as NaN
    return client.post(f"/v2/models/{job}/infer", content=content, headers=headers)


def test_malformed_requests_are_400_with_an_error(client: TestClient, job: str):
    one = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}
    cases = [
        ({"inputs": []}, "exactly one input"),
        ({"inputs": [{**one, "data": [0.5] * 783}]}, "has 784 elements; data holds 783"),
        ({"inputs": [{**one, "data": [float("nan")] + [0.0] * 783}]}, "NaN"),
        ({"inputs": [{**one, "name": "pixels"}]}, "unknown input 'pixels'"),
        ({"inputs": [{**one, "shape": [0, 1, 28, 28]}]}, "at least one item"),
        ({"inputs": [one], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"inputs": [{**one, "parameters": {"binary_data_size": 3136}}]}, "declares 3136 bytes"),
    ]
    for body, message in cases:
        r = infer(client, job, body)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"], r.json()
    r = infer(client, job, b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    header = b'{"inputs":[{"name":"images","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":8}}]}'
    r = infer(client, job, header + struct.pack("<I", 100) + b"abcd",
              **{"inference-header-content-length": str(len(header))})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    assert infer(client, job, {"inputs": [one] * 1}).status_code == 200
    assert infer(client, "nope", {"inputs": [one]}).status_code == 404


def test_too_many_items_is_413(client: TestClient, env: ApiEnv, job: str):
    n = env.settings.predict_max_files + 1
    r = infer(client, job, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 1, 28, 28],
                                        "data": [0.0] * (n * 784)}]})
    assert r.status_code == 413 and f"{n} items" in r.json()["error"]


def test_a_batch_may_mix_v2_and_predict_requests_of_other_models(client: TestClient, env: ApiEnv, job: str):
    """Different models in one batch each go through their own network (app.serving.predictor.run)."""
    other = add_job(env, status=JobStatus.succeeded, spec=LENET)
    write_weights(env, other, LENET)
    images = arrays(2, seed=4)
    pixels = (images.astype(np.float32) / 255)[:, None]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 28, 28],
                        "data": pixels.reshape(-1).tolist()}]}
    a, b = infer(client, job, body), infer(client, other, body)
    assert a.status_code == b.status_code == 200
    pa = np.array(a.json()["outputs"][0]["data"]).reshape(2, 10)
    pb = np.array(b.json()["outputs"][0]["data"]).reshape(2, 10)
    assert not np.allclose(pa, pb)

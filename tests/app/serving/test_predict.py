"""POST /predict with real weights (a seeded network saved as safetensors where the engine puts them)."""

import io
import random
import uuid

import anyio
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update
from torchvision.transforms.functional import to_tensor

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.errors import NotFound
from app.core.tables import Job, JobStatus
from app.main import create_app
from app.serving.predictor import Predictor
from spec.datasets import BUILTIN_DATASETS, FASHION_CLASSES
from spec.job import JobSpec
from tests.app.harness import ApiEnv, add_job, api_client, seeded_network, write_weights

FASHION_MLP = {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}
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
    network = seeded_network(spec).eval()
    batch = torch.stack([torch.from_numpy(a).float().div(255).unsqueeze(0) for a in arrays])
    with torch.no_grad():
        return torch.softmax(network(batch), dim=1)


def reference_probabilities(images: list[Image.Image], spec: dict = FASHION_MLP) -> torch.Tensor:
    """The network on the reference preprocessing: convert("L"), bilinear resize to 28x28, ToTensor."""
    batch = torch.stack([to_tensor(i.convert("L").resize((28, 28), Image.Resampling.BILINEAR)) for i in images])
    with torch.no_grad():
        return torch.softmax(seeded_network(spec).eval()(batch), dim=1)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_matches(predictions: list[dict], expected: torch.Tensor) -> None:
    assert len(predictions) == len(expected)
    for p, probs in zip(predictions, expected, strict=True):
        assert p["probabilities"] == pytest.approx(probs.tolist(), abs=1e-5), p["filename"]
        assert p["class_index"] == int(probs.argmax())


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


def test_predictions_match_the_reference_preprocessing(client: TestClient, job_id: str):
    """8-bit grayscale PNG, RGB JPEG and 16-bit PNG, none of them 28x28."""
    rng = np.random.default_rng(3)
    gray = encode(Image.fromarray(rng.integers(0, 256, (36, 40)).astype(np.uint8)), "PNG")
    photo = encode(Image.fromarray(rng.integers(0, 256, (30, 50, 3)).astype(np.uint8)), "JPEG")
    # 16-bit samples 257 * v scale back to exactly v (65535 -> 255), so the reference is the 8-bit image.
    eight = rng.integers(0, 256, (29, 33)).astype(np.uint8)
    eight[0, :2] = (0, 255)
    deep = encode(Image.fromarray(eight.astype(np.uint16) * 257), "PNG")
    assert decoded(deep).mode == "I;16"

    r = post(client, job_id, [("gray.png", gray), ("photo.jpg", photo), ("deep.png", deep)])
    assert r.status_code == 200, r.text
    expected = reference_probabilities([decoded(gray), decoded(photo), Image.fromarray(eight)])
    assert_matches(r.json()["predictions"], expected)
    # Clipping instead of scaling would have made the 16-bit image all but white.
    assert not torch.allclose(expected[2], reference_probabilities([Image.new("L", (33, 29), 255)])[0])


@pytest.mark.parametrize(("orientation", "stored_as"), [
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied_before_resizing(client: TestClient, job_id: str, orientation: int,
                                                     stored_as: Image.Transpose):
    upright = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (30, 44)).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: how a viewer turns the stored pixels to show them upright
    r = post(client, job_id, [("turned.png", encode(upright.transpose(stored_as), "PNG", exif=exif))])
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"], reference_probabilities([upright]))


def test_transparent_pixels_are_black_whatever_colour_they_hold(client: TestClient, job_id: str):
    rng = np.random.default_rng(5)
    value = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    opaque = rng.random((28, 28)) < 0.5
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    hidden = np.full((28, 28), 255, dtype=np.uint8)  # what a plain convert() would show
    shown = np.where(opaque, value, hidden)
    rgba = Image.fromarray(np.stack([shown, shown, shown, alpha], axis=-1))
    la = Image.fromarray(np.stack([shown, alpha], axis=-1), mode="LA")
    palette = Image.fromarray(np.where(opaque, value // 2, 255).astype(np.uint8), mode="P")
    palette.putpalette([c for i in range(256) for c in (min(2 * i, 255),) * 3])
    files = [("rgba.png", encode(rgba, "PNG")), ("la.png", encode(la, "PNG")),
             ("palette.png", encode(palette, "PNG", transparency=255))]
    r = post(client, job_id, files)
    assert r.status_code == 200, r.text
    on_black = [Image.fromarray(np.where(opaque, value, 0).astype(np.uint8)),
                Image.fromarray(np.where(opaque, value, 0).astype(np.uint8)),
                Image.fromarray(np.where(opaque, np.minimum(2 * (value // 2), 255), 0).astype(np.uint8))]
    assert_matches(r.json()["predictions"], reference_probabilities(on_black))


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
    # A PPM header that promises more than 8 bits per sample: Pillow's ValueError at open.
    r = post(client, job_id, [("deep.ppm", b"P5 2 2 70000\n" + bytes(8))])
    assert r.status_code == 400 and "'deep.ppm' is broken" in r.json()["detail"]
    # Formats Pillow decodes but the service does not document (PCX, ICO, TGA) are not images to it.
    for fmt, name in (("PCX", "old.pcx"), ("ICO", "icon.ico"), ("TGA", "shot.tga")):
        buffer = io.BytesIO()
        Image.fromarray(images(1)[0]).save(buffer, fmt)
        r = post(client, job_id, [(name, buffer.getvalue())])
        assert r.status_code == 415 and f"{name!r} is not an image" in r.json()["detail"], (fmt, r.text)


def damaged(data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations at a few lengths and copies with a few random bytes overwritten."""
    cuts = [data[:n] for n in (8, 16, 40, len(data) // 3, len(data) // 2, len(data) - 5)]
    flips = []
    for _ in range(14):
        copy = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            copy[rng.randrange(8, len(copy))] = rng.randrange(256)
        flips.append(bytes(copy))
    return cuts + flips


def test_damaged_images_are_never_a_server_error(client: TestClient, job_id: str):
    """Fuzz-style: byte-flipped and truncated files answer 400 (broken) or 415 (unknown), or decode."""
    rgb = Image.fromarray(np.random.default_rng(7).integers(0, 256, (20, 30, 3)).astype(np.uint8))
    samples = {fmt: encode(rgb, fmt) for fmt in ("PNG", "JPEG", "BMP", "PPM", "WEBP", "TIFF")}
    samples["GIF"] = encode(rgb.convert("P"), "GIF")
    samples["PNG16"] = encode(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "PNG")
    rng = random.Random(0)
    statuses: dict[int, int] = {}
    for fmt, data in samples.items():
        for i, variant in enumerate(damaged(data, rng)):
            name = f"{fmt.lower()}-{i}"
            r = post(client, job_id, [(name, variant)])
            assert r.status_code in (200, 400, 415), (fmt, i, r.status_code, r.text)
            if r.status_code == 400:
                assert f"image {name!r} is broken" in r.json()["detail"]
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses.get(400, 0) > 50 and statuses.get(415, 0) > 5, statuses


def test_too_many_pixels_is_413(client: TestClient, job_id: str):
    huge = io.BytesIO()
    Image.new("L", (5000, 5000)).save(huge, format="PNG")  # compresses to a few KiB
    r = post(client, job_id, [("huge.png", huge.getvalue())])
    assert r.status_code == 413 and "5000x5000" in r.json()["detail"]


def test_the_decoding_work_of_a_request_is_bounded(client: TestClient, job_id: str):
    # Blank images compress a thousandfold: bytes alone do not bound the work of decoding them.
    blank = io.BytesIO()
    Image.new("L", (3000, 3000)).save(blank, format="PNG")
    assert len(blank.getvalue()) < 50_000
    one = post(client, job_id, [("a.png", blank.getvalue())])
    assert one.status_code == 200, one.text
    r = post(client, job_id, [("a.png", blank.getvalue()), ("b.png", blank.getvalue())])
    assert r.status_code == 413, r.text
    assert "18,000,000 pixels" in r.json()["detail"] and "TAAS_PREDICT_MAX_REQUEST_PIXELS" in r.json()["detail"]


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


# --- weights that cannot serve -----------------------------------------------------------------------

@pytest.mark.parametrize("weights_of", [
    {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "lenet5"}},  # other layers
    {"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp", "params": {"hidden": [256, 512]}}},  # other shapes
])
def test_weights_of_another_architecture_are_a_conflict(client: TestClient, env: ApiEnv, weights_of: dict):
    job = add_job(env, status=JobStatus.succeeded, spec=FASHION_MLP)
    write_weights(env, job, weights_of)
    r = post(client, job, [("a.png", png(images(1)[0]))])
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith(f"job {job}'s weights do not match the job's architecture ('mlp'")


def test_a_damaged_weights_file_is_a_conflict(client: TestClient, env: ApiEnv):
    job = add_job(env, status=JobStatus.succeeded)
    write_weights(env, job).write_bytes(b"not safetensors at all")
    r = post(client, job, [("a.png", png(images(1)[0]))])
    assert r.status_code == 409 and "do not match the job's architecture" in r.json()["detail"]


def test_a_stored_spec_this_version_rejects_is_a_conflict(client: TestClient, env: ApiEnv):
    job = add_job(env, status=JobStatus.succeeded)
    write_weights(env, job)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job).values(spec={"model": {"arch": "retired-net"}}))
    r = post(client, job, [("a.png", png(images(1)[0]))])
    assert r.status_code == 409 and "stored spec is not valid" in r.json()["detail"]


def test_weights_deleted_before_a_cold_load_are_not_found(client: TestClient, env: ApiEnv, job_id: str):
    weights = env.settings.artifacts_path / job_id / "best.safetensors"
    weights.unlink()
    predictor = Predictor(artifacts=env.settings.artifacts_path, max_pixels=100)
    with pytest.raises(NotFound, match=f"job {job_id} has no best weights file"):
        predictor.load(job_id=job_id, spec=JobSpec.model_validate(FASHION_MLP),
                       info=BUILTIN_DATASETS["fashion-mnist"].info)
    r = post(client, job_id, [("a.png", png(images(1)[0]))])
    assert r.status_code == 404 and "has no best weights file" in r.json()["detail"]


def test_the_served_models_are_bounded_in_bytes_too(env: ApiEnv, monkeypatch: pytest.MonkeyPatch):
    # The tutorial MLP's weights are 2.7 MB: a 4 MB budget holds one of them (not the default's 8 networks).
    monkeypatch.setenv("TAAS_PREDICT_CACHE_BYTES", str(4 << 20))
    get_settings.cache_clear()
    first, second = add_job(env), add_job(env)
    for job in (first, second):
        write_weights(env, job)
    with api_client(env) as client:
        for job in (first, second, first):
            assert post(client, job, [("a.png", png(images(1)[0]))]).status_code == 200
        served = client.app.state.served  # type: ignore[attr-defined]
        assert [key[1] for key in served._entries] == [first] and served.weight_bytes() < 4 << 20

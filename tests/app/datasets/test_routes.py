"""POST/GET/DELETE /datasets against the real PostgreSQL and Redis; the ingest runs as the worker runs it
(worker.ingest.task, called in-process), jobs and predictions on the result."""

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from sqlalchemy import delete, func, select
from starlette.datastructures import Headers

import app.jobs.service
from app.core.db import session_scope
from app.core.migrate import upgrade_head
from app.core.storage import ARCHIVE, STORE
from app.core.tables import Dataset, Job, JobStatus
from spec.datasets import DatasetInfo
from tests.app.harness import DEAD_REDIS_URL, ApiEnv, api_client, cleanup, configure, seeded_network
from tests.archives import bars, class_folders, png, zip_of
from worker.ingest.task import ingest_dataset

CLASSES = ["left", "middle", "right"]


@pytest.fixture(scope="module")
def archive() -> bytes:
    x, y = bars(60, seed=11, classes=3)
    return zip_of(class_folders(x, y, CLASSES))


def upload(client: TestClient, data: bytes, name: str = "bars", filename: str = "bars.zip",
           **options: str) -> Any:
    return client.post("/datasets", data={"name": name, **options}, files={"file": (filename, data)})


def ready(client: TestClient, data: bytes, **options: str) -> dict[str, Any]:
    r = upload(client, data, **options)
    assert r.status_code == 202, r.text
    assert ingest_dataset(r.json()["id"]) == "ready"
    dataset: dict[str, Any] = client.get(f"/datasets/{r.json()['id']}").json()
    return dataset


def folders(env: ApiEnv) -> list[str]:
    root = env.settings.datasets_path
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def rows(env: ApiEnv) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Dataset.owner == env.owner)) or 0)


def test_upload_answers_processing_then_the_ingest_makes_it_ready(client: TestClient, env: ApiEnv, archive: bytes):
    r = upload(client, archive, test_fraction="0.25", seed="3")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "processing" and body["name"] == "bars" and body["classes"] == []
    assert body["options"] == {"test_fraction": 0.25, "image_size": None, "channels": None, "skip_invalid": False,
                               "seed": 3}
    assert body["archive_bytes"] == len(archive)
    folder = env.settings.datasets_path / body["id"]
    assert (folder / ARCHIVE).read_bytes() == archive  # streamed to its folder as it came

    assert ingest_dataset(body["id"]) == "ready"
    dataset = client.get(f"/datasets/{body['id']}").json()
    assert dataset["status"] == "ready" and dataset["error"] is None and dataset["layout"] == "class_folders"
    assert dataset["classes"] == CLASSES
    assert dataset["shape"] == {"channels": 1, "height": 28, "width": 28}
    splits = dataset["splits"]
    assert splits["train"]["images"] + splits["test"]["images"] == 60
    assert set(splits["test"]["per_class"]) == set(CLASSES) and all(splits["test"]["per_class"].values())
    assert dataset["skipped"] == [] and dataset["progress"] == {"images": 60, "total": 60}
    assert len(dataset["mean"]) == len(dataset["std"]) == 1 and dataset["ready_at"] >= dataset["created_at"]
    # The archive goes once the store is written.
    assert sorted(p.name for p in folder.iterdir()) == [STORE] and dataset["store_bytes"] > 60 * 784
    assert ingest_dataset(body["id"]) == "skipped"  # a second delivery of the message does nothing


def test_a_failed_ingest_keeps_the_reason_and_no_files(client: TestClient, env: ApiEnv):
    r = upload(client, zip_of({"../evil.png": png(np.zeros((28, 28))), "a/1.png": b"x"}))
    assert r.status_code == 202
    assert ingest_dataset(r.json()["id"]) == "failed"
    dataset = client.get(f"/datasets/{r.json()['id']}").json()
    assert dataset["status"] == "failed" and "points outside the archive" in dataset["error"]
    assert dataset["ready_at"] is not None and folders(env) == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": ""}, "name: required"),
    ({"test_fraction": "1.5"}, "test_fraction: Input should be less than 1"),
    ({"image_size": "big"}, "image_size: Value error, give SIZE or HEIGHTxWIDTH"),
    ({"image_size": "4000x10"}, "image_size: Value error, each side must be between 1 and 1024"),
    ({"channels": "2"}, "channels: Input should be 1 or 3"),
    ({"skip_invalid": "perhaps"}, "skip_invalid: Input should be a valid boolean"),
    ({"colour": "blue"}, "unknown form field 'colour'"),
])
def test_bad_fields_are_422_and_leave_nothing(client: TestClient, env: ApiEnv, archive: bytes,
                                             fields: dict[str, str], message: str):
    r = client.post("/datasets", data={"name": "x", **fields}, files={"file": ("a.zip", archive)})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert folders(env) == [] and rows(env) == 0


def test_what_is_not_an_upload_of_one_archive(client: TestClient, env: ApiEnv, archive: bytes):
    r = client.post("/datasets", data={"name": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/datasets", data={"name": "x"}, files={"other": ("a.zip", archive)})
    assert r.status_code == 422 and "unknown form field 'other'" in r.json()["detail"]
    r = client.post("/datasets", data={"name": "x"}, files=[("file", ("a.zip", archive)), ("file", ("b.zip", archive))])
    assert r.status_code == 422 and "one archive per upload" in r.json()["detail"]
    r = client.post("/datasets", content=b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--x--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422 and "file: missing" in r.json()["detail"]
    r = upload(client, png(np.zeros((28, 28))), filename="image.png")
    assert r.status_code == 415 and "'image.png' is not a .zip, .tar or .tar.gz archive" in r.json()["detail"]
    cut = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nPK"
    r = client.post("/datasets", content=cut, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "ended before its closing boundary" in r.json()["detail"]
    assert folders(env) == [] and rows(env) == 0


def _multipart(archive: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_uploads_past_the_limit_are_413_before_or_while_streaming(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, migrated_postgres: str, redis_url: str):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url,
                    DATASET_MAX_UPLOAD_BYTES="200000")
    body, content_type = _multipart(np.random.default_rng(0).bytes(300_000))
    with api_client(env) as client:
        r = client.post("/datasets", content=body, headers={"content-type": content_type})
        assert r.status_code == 413 and "at most 200000 bytes are accepted by /datasets" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            for i in range(0, len(body), 16384):
                yield body[i:i + 16384]

        r = client.post("/datasets", content=chunks(), headers={"content-type": content_type})
        assert "content-length" not in Headers(raw=r.request.headers.raw) and r.status_code == 413
        small, _ = _multipart(b"")
        assert len(small) < 200_000
    assert folders(env) == [] and rows(env) == 0  # the partial file went with the refusal


def test_broker_down_answers_503_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    migrated_postgres: str, archive: bytes):
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=DEAD_REDIS_URL)
    with api_client(env) as client:
        r = upload(client, archive)
        assert r.status_code == 503 and "the dataset was not accepted" in r.json()["detail"]
    assert folders(env) == [] and rows(env) == 0


def test_list_pages_filter_and_owners(client: TestClient, env: ApiEnv, archive: bytes):
    ids = [upload(client, archive, name=f"d{i}").json()["id"] for i in range(5)]
    ingest_dataset(ids[0])
    seen, cursor = [], None
    while True:
        page = client.get("/datasets", params={"limit": 2} | ({"cursor": cursor} if cursor else {})).json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert [d["id"] for d in client.get("/datasets?status=ready").json()["data"]] == [ids[0]]
    assert client.get("/datasets?cursor=nonsense").status_code == 400
    # Another owner sees none of them, and gets 404 for each.
    with session_scope() as session:
        session.add(Dataset(id="e" * 32, owner="someone-else", name="theirs", options={}, archive_bytes=1))
    assert "e" * 32 not in {d["id"] for d in client.get("/datasets").json()["data"]}
    for method in ("get", "delete"):
        r = getattr(client, method)(f"/datasets/{'e' * 32}")
        assert r.status_code == 404 and r.json() == {"detail": f"no dataset {'e' * 32!r}"}
    r = client.post("/jobs", json={"dataset": {"id": "e" * 32}})
    assert r.status_code == 422 and "dataset.id: no dataset" in r.json()["detail"]
    with session_scope() as session:
        session.delete(session.get(Dataset, "e" * 32))


def test_jobs_on_a_dataset_and_the_catalog(client: TestClient, env: ApiEnv, archive: bytes):
    dataset = ready(client, archive)
    processing = upload(client, archive, name="later").json()
    r = client.post("/jobs", json={"dataset": {"id": processing["id"]}})
    assert r.status_code == 409 and "still processing" in r.json()["detail"]
    r = client.post("/jobs", json={"dataset": {"id": dataset["id"], "name": "mnist"}})
    assert r.status_code == 422 and "either 'name'" in r.text

    r = client.post("/jobs", json={"dataset": {"id": dataset["id"], "val_fraction": 0.1, "normalize": True},
                                   "model": {"arch": "lenet5"}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["dataset"] == {"id": dataset["id"], "val_fraction": 0.1, "normalize": True,
                                           "augment": {"random_crop": None, "horizontal_flip": False}}
    with session_scope() as session:
        job = session.get(Job, r.json()["id"])
        assert job is not None and job.dataset_id == dataset["id"]
        assert job.dataset_info == {"classes": CLASSES, "shape": dataset["shape"], "mean": dataset["mean"],
                                    "std": dataset["std"]}

    catalog = client.get("/catalog").json()["datasets"]
    uploads = [d for d in catalog if d["source"] == "upload"]
    assert uploads == [{"name": "bars", "id": dataset["id"], "source": "upload", "classes": CLASSES,
                        "shape": dataset["shape"], "description": uploads[0]["description"]}]


def test_an_architecture_too_big_for_the_images_is_422(client: TestClient, env: ApiEnv):
    x, y = bars(20, seed=2, classes=2, size=12)
    dataset = ready(client, zip_of(class_folders(x, y, ["a", "b"])))
    r = client.post("/jobs", json={"dataset": {"id": dataset["id"]}, "model": {"arch": "lenet5"}})
    assert r.status_code == 422
    assert "arch 'lenet5' needs images of at least 16 px a side; these are 12x12" in r.json()["detail"]
    assert client.post("/jobs", json={"dataset": {"id": dataset["id"]}, "model": {"arch": "mlp"}}).status_code == 201


def test_delete_waits_for_the_jobs_that_use_it(client: TestClient, env: ApiEnv, archive: bytes):
    dataset = ready(client, archive)
    job = client.post("/jobs", json={"dataset": {"id": dataset["id"]}}).json()["id"]
    r = client.delete(f"/datasets/{dataset['id']}")
    assert r.status_code == 409 and f"used by 1 queued or running job(s) ({job})" in r.json()["detail"]
    assert client.post(f"/jobs/{job}/cancel").status_code == 200
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert folders(env) == []
    # A processing dataset can be deleted too; its ingest then keeps nothing.
    processing = upload(client, archive).json()["id"]
    assert client.delete(f"/datasets/{processing}").status_code == 204
    assert ingest_dataset(processing) == "skipped" and folders(env) == []


def test_predict_applies_the_jobs_resize_channels_and_normalization(client: TestClient, env: ApiEnv,
                                                                   archive: bytes):
    dataset = ready(client, archive)
    spec = {"dataset": {"id": dataset["id"], "normalize": True}, "model": {"arch": "mlp"}}
    job = client.post("/jobs", json=spec).json()["id"]
    info = DatasetInfo.model_validate({k: dataset[k] for k in ("classes", "shape", "mean", "std")})
    network = seeded_network(spec, info=info)
    weights = env.settings.artifacts_path / job / "best.safetensors"
    weights.parent.mkdir(parents=True)
    save_file(network.state_dict(), str(weights))
    with session_scope() as session:
        row = session.get(Job, job)
        assert row is not None
        row.status = JobStatus.succeeded

    big_rgb = np.random.default_rng(5).integers(0, 256, (56, 84, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big_rgb).save(buffer, format="PNG")
    r = client.post("/predict", data={"job_id": job}, files=[("files", ("big.png", buffer.getvalue()))])
    assert r.status_code == 200, r.text
    [prediction] = r.json()["predictions"]
    expected_input = torch.from_numpy(np.array(
        Image.fromarray(big_rgb).convert("L").resize((28, 28), Image.Resampling.BILINEAR))).float().div(255)
    expected_input = (expected_input - info.mean[0]) / info.std[0]
    with torch.no_grad():
        expected = torch.softmax(network.eval()(expected_input.view(1, 1, 28, 28)), dim=1)[0]
    assert prediction["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert prediction["label"] == CLASSES[int(expected.argmax())]
    assert len(prediction["probabilities"]) == 3

    # The job keeps predicting once its dataset is gone: it kept what it needs.
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    again = client.post("/predict", data={"job_id": job}, files=[("files", ("big.png", buffer.getvalue()))])
    assert again.json()["predictions"][0]["probabilities"] == prediction["probabilities"]


def test_a_dataset_deleted_during_a_submission_is_a_conflict_on_sqlite(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, archive: bytes):
    """SQLite has no row locks: the submission checks again after its insert (PostgreSQL locks the row)."""
    url = f"sqlite:///{tmp_path / 'taas.db'}"
    upgrade_head(url)
    env = configure(monkeypatch, tmp_path, database_url=url, redis_url=redis_url)
    try:
        with api_client(env) as client:
            dataset = ready(client, archive)
            checked = app.jobs.service.dataset_for_job

            def deleted_right_after(**kwargs: Any) -> DatasetInfo:
                info = checked(**kwargs)
                with session_scope() as other:  # another request's deletion, committed in between
                    other.execute(delete(Dataset).where(Dataset.id == kwargs["dataset_id"]))
                return info

            monkeypatch.setattr(app.jobs.service, "dataset_for_job", deleted_right_after)
            r = client.post("/jobs", json={"dataset": {"id": dataset["id"]}})
            assert r.status_code == 409 and "was deleted while the job was being submitted" in r.json()["detail"]
            assert client.get("/jobs").json()["data"] == []
    finally:
        cleanup(env, redis_url)


def test_an_endless_multipart_header_is_400(client: TestClient, env: ApiEnv):
    body = b"--x\r\nContent-Disposition: form-data; name=\"" + b"n" * 20_000 + b"\"\r\n\r\nx\r\n--x--\r\n"
    r = client.post("/datasets", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "header" in r.json()["detail"]  # python-multipart's limit, or ours
    assert folders(env) == []

"""A test's side of the HTTP API: submit and wait for jobs, upload and wait for datasets, predict files."""

from typing import Any

import httpx

from tests.processes import Service, wait_for


def _with_logs(e: AssertionError, logs: tuple[Service, ...]) -> AssertionError:
    return AssertionError(f"{e}\n" + "\n".join(f"--- {s.name}:\n{s.log()[-3000:]}" for s in logs))


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_done(client: httpx.Client, job_id: str, timeout: float, *logs: Service) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        return wait_for(done, timeout=timeout, what=f"job {job_id} to end", interval=0.2)
    except AssertionError as e:
        raise _with_logs(e, logs) from None


def upload_dataset(client: httpx.Client, archive: bytes, *logs: Service, timeout: float = 120, name: str = "data",
                   **options: str) -> dict[str, Any]:
    """POST /datasets, then wait until it is ready or failed; returns the dataset."""
    response = client.post("/datasets", data={"name": name, **options}, files={"file": ("data.zip", archive)})
    assert response.status_code == 202, response.text
    dataset_id = response.json()["id"]

    def ended() -> dict[str, Any] | None:
        dataset: dict[str, Any] = client.get(f"/datasets/{dataset_id}").json()
        return dataset if dataset["status"] != "processing" else None

    try:
        return wait_for(ended, timeout=timeout, what=f"dataset {dataset_id} to be ingested", interval=0.2)
    except AssertionError as e:
        raise _with_logs(e, logs) from None


def predict(client: httpx.Client, job_id: str, files: dict[str, bytes], batch: int = 64) -> dict[str, str]:
    """{filename: predicted label} for every file, posted `batch` at a time."""
    names = list(files)
    labels: dict[str, str] = {}
    for i in range(0, len(names), batch):
        chunk = [("files", (name, files[name], "application/octet-stream")) for name in names[i:i + batch]]
        response = client.post("/predict", data={"job_id": job_id}, files=chunk)
        assert response.status_code == 200, response.text
        labels.update({p["filename"]: p["label"] for p in response.json()["predictions"]})
    return labels

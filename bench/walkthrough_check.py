"""Check the README walk-through end to end against a running taas (`./taas.sh run`).

Submits the Fashion-MNIST tutorial job (the smallest spec), waits for it to end, checks its status, result,
every per-batch loss (paged with next_cursor: steps 0..N-1, each once) and its 10 epochs of metrics, then
POSTs all 10,000 Fashion-MNIST test images as PNG files to /predict (at most 64 per request) and measures
how often the predicted label is the true one. Prints one JSON object:
{status, test_accuracy, n_losses, steps_ok, predict_accuracy, predict_seconds, train_seconds}.

    .venv/bin/python bench/walkthrough_check.py --url http://127.0.0.1:8000 --data .taas/data

The API key is the one `./taas.sh run` keeps in .taas/api-key (or --key, or TAAS_API_KEY).

Standard library only, plus torchvision (to read the test set) and Pillow (to encode the PNGs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from typing import Any

TUTORIAL_SPEC = {"name": "walkthrough-check", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}}
TUTORIAL_STEPS = 9380  # 10 epochs x ceil(60000 / 64) batches
TUTORIAL_EPOCHS = 10
FINAL = {"succeeded", "failed", "cancelled"}
# Sent with every request (set by main from --key).
HEADERS: dict[str, str] = {}


def call(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 120.0) -> tuple[int, Any]:
    """One HTTP request; returns (status, decoded JSON or None). Error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=HEADERS)
    if content_type:
        request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def expect(status: int, payload: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise SystemExit(f"walkthrough_check: {what}: HTTP {status} (wanted {wanted}): {payload}")
    return payload


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: plain fields, then every file under the name `files`."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        out.write(f'--{boundary}\r\ncontent-disposition: form-data; name="files"; filename="{filename}"\r\n'
                  "content-type: image/png\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def wait_for_end(api: str, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = expect(*call("GET", f"{api}/jobs/{job_id}"), 200, "GET /jobs/{id}")
        if job["status"] in FINAL:
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"walkthrough_check: job {job_id} still {job['status']} after {timeout:.0f} s "
                             f"(progress {job['progress']})")
        time.sleep(1.0)


def all_losses(api: str, job_id: str, page: int) -> list[dict[str, Any]]:
    """Every loss, paged with next_cursor until a page comes back empty."""
    losses: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(page)} | ({"after": cursor} if cursor else {})
        body = expect(*call("GET", f"{api}/jobs/{job_id}/losses?{urllib.parse.urlencode(query)}"), 200,
                      "GET /jobs/{id}/losses")
        if not body["data"]:
            return losses
        losses.extend(body["data"])
        cursor = body["next_cursor"]


def predict_all(api: str, job_id: str, data_root: str, batch: int) -> tuple[float, float, int]:
    """(agreement with the true labels, seconds spent in /predict, images sent)."""
    from torchvision import datasets  # the test set in torchvision's layout, as the service reads it

    test = datasets.FashionMNIST(data_root, train=False, download=False)
    pngs: list[tuple[str, bytes, int]] = []
    for i in range(len(test)):
        image, label = test[i]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append((f"test-{i:05d}.png", buffer.getvalue(), int(label)))
    correct = 0
    seconds = 0.0
    for start in range(0, len(pngs), batch):
        chunk = pngs[start:start + batch]
        body, content_type = multipart({"job_id": job_id}, [(name, data) for name, data, _ in chunk])
        began = time.perf_counter()
        status, payload = call("POST", f"{api}/predict", body, content_type)
        seconds += time.perf_counter() - began
        predictions = expect(status, payload, 200, "POST /predict")["predictions"]
        if [p["filename"] for p in predictions] != [name for name, _, _ in chunk]:
            raise SystemExit("walkthrough_check: /predict answered for other files, or in another order")
        correct += sum(p["class_index"] == label for p, (_, _, label) in zip(predictions, chunk, strict=True))
    return correct / len(pngs), seconds, len(pngs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running taas")
    parser.add_argument("--data", default=".taas/data", help="torchvision-layout root holding FashionMNIST")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the job to end")
    parser.add_argument("--page", type=int, default=1000, help="losses per GET /losses page")
    parser.add_argument("--batch", type=int, default=64, help="images per /predict request (at most 64)")
    parser.add_argument("--key", default=os.environ.get("TAAS_API_KEY"),
                        help="API key (default: TAAS_API_KEY, else the one in .taas/api-key)")
    args = parser.parse_args()
    key = args.key or (open(".taas/api-key").read().strip() if os.path.exists(".taas/api-key") else None)
    if key:
        HEADERS["Authorization"] = f"Bearer {key}"
    api = args.url.rstrip("/")
    batch = max(1, min(args.batch, 64))

    expect(*call("GET", f"{api}/health"), 200, "GET /health")
    body = json.dumps(TUTORIAL_SPEC).encode()
    job = expect(*call("POST", f"{api}/jobs", body, "application/json"), 201, "POST /jobs")
    submitted = time.monotonic()
    job = wait_for_end(api, job["id"], args.timeout)
    wall = time.monotonic() - submitted
    train_seconds = seconds_between(job.get("started_at"), job.get("finished_at"))

    problems: list[str] = []
    result = job.get("result") or {}
    test_accuracy = result.get("test_accuracy")
    if job["status"] != "succeeded":
        problems.append(f"status {job['status']}: {job.get('error')}")
    if not isinstance(test_accuracy, (int, float)):
        problems.append(f"result has no test_accuracy: {job.get('result')}")

    losses = all_losses(api, job["id"], args.page)
    steps = [point["step"] for point in losses]
    total = job["progress"].get("total_steps") or TUTORIAL_STEPS
    steps_ok = steps == list(range(TUTORIAL_STEPS)) and total == TUTORIAL_STEPS
    if not steps_ok:
        problems.append(f"losses: {len(steps)} points, {len(set(steps))} distinct steps, "
                        f"total_steps {total}, wanted steps 0..{TUTORIAL_STEPS - 1} each once")

    metrics = expect(*call("GET", f"{api}/jobs/{job['id']}/metrics"), 200, "GET /jobs/{id}/metrics")["data"]
    epochs = [row["epoch"] for row in metrics]
    if epochs != list(range(1, TUTORIAL_EPOCHS + 1)):
        problems.append(f"metrics: epochs {epochs}, wanted 1..{TUTORIAL_EPOCHS}")

    predict_accuracy = predict_seconds = None
    if job["status"] == "succeeded":
        predict_accuracy, predict_seconds, _ = predict_all(api, job["id"], args.data, batch)

    report = {
        "status": job["status"],
        "test_accuracy": test_accuracy,
        "n_losses": len(losses),
        "steps_ok": steps_ok,
        "predict_accuracy": predict_accuracy,
        "predict_seconds": None if predict_seconds is None else round(predict_seconds, 2),
        "train_seconds": None if train_seconds is None else round(train_seconds, 2),
    }
    print(json.dumps(report))
    for problem in problems:
        print(f"walkthrough_check: {problem}", file=sys.stderr)
    print(f"walkthrough_check: job {job['id']}, {wall:.1f} s from submit to end, "
          f"{len(metrics)} epochs of metrics", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""A small Python client of the taas API (httpx), for scripts and notebooks; the `taas` command is built on it.

    from app.client import Client
    taas = Client()                       # TAAS_API_URL / TAAS_API_KEY, else localhost and ./.taas/api-key
    job = taas.submit({"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 2})
    for event in taas.events(job["id"]):  # live: loss, epoch, status, then end
        if event.event == "epoch":
            print(event.data["epoch"], event.data["test_accuracy"])
    taas.predict(job["id"], ["boot.png"])["predictions"][0]["label"]

Every error answer raises ApiError, whose message is the API's own (`HTTP 404: no job 'x'`).
"""

import json
import mimetypes
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from app.core.config import Settings, get_settings
from app.core.storage import KEY_FILE

# follow(): the API unreachable (0) or briefly unable to answer: reconnect, backing off.
RECONNECT_STATUSES = frozenset({0, 502, 503, 504})
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0


class ApiError(Exception):
    """An answer of the API that is not a success: its status and its message."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of GET /jobs/{id}/events: its name, its JSON data, its id (for Last-Event-ID)."""

    event: str
    data: Any
    id: str | None


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from the lines of a text/event-stream (comments and keep-alives skipped)."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(event, json.loads("\n".join(data)), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def default_key(settings: Settings) -> str | None:
    """The key of TAAS_API_KEY, else the one `taas up` keeps in the state folder, else none."""
    if settings.api_key:
        return settings.api_key
    path = settings.state_dir / KEY_FILE
    return path.read_text().strip() if path.is_file() else None


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0,
                 settings: Settings | None = None):
        settings = settings or get_settings()
        self.url = (url or settings.api_url).rstrip("/")
        key = key or default_key(settings)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The HTTP round trip.

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(0, f"cannot reach the API at {self.url}: {e}") from None
        if response.is_error:
            raise ApiError(response.status_code, _detail(response))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # Jobs.

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self._json("POST", "/jobs", json=spec))

    def jobs(self, *, status: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The owner's jobs, newest first (all pages, or the first `limit`)."""
        yield from self._pages("/jobs", {"status": status}, limit)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/jobs/{job_id}"))

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/jobs/{job_id}/metrics")["data"])

    def losses(self, job_id: str, *, after: str | None = None, limit: int = 10_000) -> tuple[list[dict], str]:
        """One page of per-batch losses after a cursor, and the cursor that follows it."""
        params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
        page = self._json("GET", f"/jobs/{job_id}/losses", params=params)
        return list(page["data"]), str(page["next_cursor"])

    def all_losses(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page, cursor = self.losses(job_id, after=cursor)
            out += page
            if not page:
                return out

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("POST", f"/jobs/{job_id}/cancel"))

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/jobs/{job_id}")

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's live events until `end` (Server-Sent Events); pass an event's id to continue after it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        try:
            with self.http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as response:
                if response.is_error:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                yield from parse_events(response.iter_lines())
        except httpx.HTTPError as e:
            raise ApiError(0, f"the event stream of job {job_id} broke off: {e}") from None

    def follow(self, job_id: str, *, give_up_after: float = 120.0) -> Iterator[Event]:
        """events(), reconnecting with Last-Event-ID when the connection drops (or the API answers 502, 503 or
        504), until `end`. Reconnects wait 0.5 s, then twice as long each time up to 10 s; after give_up_after
        seconds without an event the last error is raised."""
        last: str | None = None
        delay, failing_since = RECONNECT_FIRST_SECONDS, None
        while True:
            try:
                for event in self.events(job_id, last_event_id=last):
                    last = event.id or last
                    delay, failing_since = RECONNECT_FIRST_SECONDS, None
                    yield event
                    if event.event == "end":
                        return
                return
            except ApiError as e:
                if e.status not in RECONNECT_STATUSES:
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= give_up_after:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def weights(self, job_id: str, dest: str | Path, *, which: str = "best") -> Path:
        return self._download(f"/jobs/{job_id}/weights", dest, params={"which": which})

    def export(self, job_id: str, dest: str | Path, *, format: str = "onnx") -> Path:
        return self._download(f"/jobs/{job_id}/export", dest, params={"format": format})

    def tensorboard(self, job_id: str, dest: str | Path) -> Path:
        return self._download(f"/jobs/{job_id}/tensorboard", dest)

    def predict(self, job_id: str, images: Sequence[str | Path | tuple[str, bytes]]) -> dict[str, Any]:
        """Predictions for image files (paths, or (name, bytes) pairs), 64 at most per request."""
        files = []
        for image in images:
            if isinstance(image, tuple):
                name, data = image
            else:
                name, data = Path(image).name, Path(image).read_bytes()
            files.append(("files", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream")))
        return dict(self._json("POST", "/predict", data={"job_id": job_id}, files=files))

    # Datasets.

    def datasets(self, *, status: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        yield from self._pages("/datasets", {"status": status}, limit)

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/datasets/{dataset_id}"))

    def upload_dataset(self, name: str, archive: str | Path, *, progress: Callable[[int, int], None] | None = None,
                       **options: str) -> dict[str, Any]:
        """POST /datasets with the archive streamed from disk; progress(sent, total) as it goes."""
        path = Path(archive)
        total = path.stat().st_size
        with path.open("rb") as file:
            stream = _Reading(file, total, progress) if progress else file
            return dict(self._json("POST", "/datasets", data={"name": name, **options},
                                   files={"file": (path.name, stream, "application/octet-stream")}))

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/datasets/{dataset_id}")

    # Keys (admin), the catalog, health.

    def create_key(self, owner: str, *, admin: bool = False, name: str | None = None,
                   limits: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(self._json("POST", "/keys", json={"owner": owner, "admin": admin, "name": name,
                                                      "limits": limits or {}}))

    def keys(self, *, owner: str | None = None, revoked: bool = False) -> Iterator[dict[str, Any]]:
        yield from self._pages("/keys", {"owner": owner, "revoked": revoked or None}, None)

    def revoke_key(self, key_id: str) -> None:
        self.request("DELETE", f"/keys/{key_id}")

    def catalog(self) -> dict[str, Any]:
        return dict(self._json("GET", "/catalog"))

    def health(self) -> dict[str, Any]:
        response = self.http.get("/health")
        return dict(response.json())

    # Helpers.

    def _pages(self, path: str, params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
        query = {k: v for k, v in params.items() if v is not None}
        given = 0
        while True:
            page = self._json("GET", path, params=query)
            for item in page["data"]:
                yield item
                given += 1
                if limit is not None and given >= limit:
                    return
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def _download(self, path: str, dest: str | Path, **kwargs: Any) -> Path:
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".part")
        with self.http.stream("GET", path, **kwargs) as response:
            if response.is_error:
                response.read()
                raise ApiError(response.status_code, _detail(response))
            with tmp.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        tmp.replace(dest)
        return dest


class _Reading:
    """A file that reports how much of it was read (the upload's progress)."""

    def __init__(self, file: BinaryIO, total: int, progress: Callable[[int, int], None]):
        self.file, self.total, self.progress, self.sent = file, total, progress, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size)
        self.sent += len(chunk)
        self.progress(self.sent, self.total)
        return chunk


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors: the first, as a person reads it
        first = detail[0] if detail else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return f"{where}: {first.get('msg', detail)}" + (f" (and {len(detail) - 1} more)" if len(detail) > 1 else "")
    return str(detail)

"""All settings, from the environment (prefix TAAS_) or a .env file; nothing else reads os.environ."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import limits
from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

UNLIMITED = "unlimited"


def parse_rate(text: str) -> limits.RateLimitItem | None:
    """A rate in the limits library's notation ("60/minute"), or None for "unlimited"; ValueError names the rule."""
    if text.strip().lower() == UNLIMITED:
        return None
    try:
        return limits.parse(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate: write it as N/second, N/minute, N/hour or N/day "
                         f"(e.g. \"60/minute\"), or {UNLIMITED!r}") from None


def _rate(text: str) -> str:
    parse_rate(text)
    return text


# A request rate (app.accounts.rate_limits), in a setting or a key's limits.
Rate = Annotated[str, AfterValidator(_rate), Field(max_length=64)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAAS_", env_file=".env", extra="ignore")

    # Where the embedded mode keeps everything (SQLite file, artifacts, data, Redis dump).
    state_dir: Path = Path(".taas")
    # Empty means "derive from state_dir" (see _derive_paths).
    database_url: str = ""
    artifacts_dir: Path | None = None
    data_root: Path | None = None
    # Uploaded datasets, a folder each (the archive until it is ingested, then its decoded store); shared by
    # the API (which writes uploads) and the workers (which ingest and train).
    datasets_dir: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Datasets: torchvision may fetch them from the internet only when this is true.
    data_download: bool = False
    # "memory" decodes the dataset once into a tensor on the training device; "loader" uses a
    # DataLoader; "auto" picks memory when the decoded dataset fits in data_memory_budget_mb.
    data_mode: Literal["auto", "memory", "loader"] = "auto"
    data_memory_budget_mb: int = Field(default=4096, ge=0)
    data_num_workers: int = Field(default=0, ge=0, le=64)

    # Authentication (app.accounts.principal): every route but /health and /v2/health/* takes
    # `Authorization: Bearer <key>`, and each key belongs to an owner. false serves every request as `owner`,
    # with admin rights; the server then refuses to listen on anything but a loopback address (app.server).
    auth: bool = True
    # The owner of every request when auth is off, and of the admin key `taas up` creates. Stored in
    # jobs.owner, a String(64).
    owner: str = Field(default="local", min_length=1, max_length=64)
    # Host header values the API answers (comma-separated; "*": any). `taas up` on a loopback address sets
    # the loopback names, so a web page whose DNS name was rebound to 127.0.0.1 gets 400, not the API.
    allowed_hosts: str = "*"
    # Origins a browser may call the API from (comma-separated); empty: no CORS headers at all.
    cors_origins: str = ""
    # Serve /docs (Swagger UI, from the package) and /openapi.json.
    docs: bool = True
    # Where the `taas` command and the Python client (app.client) find the API, and the key they send (empty:
    # the one `taas up` keeps in the state folder).
    api_url: str = "http://127.0.0.1:8000"
    api_key: str = ""

    # Limits, per owner or per key, each overridable per key (POST /keys "limits", taas keys create): over
    # one, 429 with Retry-After (queue, storage, rate) or 422 (a job too big), the message naming the limit.
    # Queued + running jobs of an owner.
    limit_active_jobs: int = Field(default=100, ge=0)
    # Bytes of an owner's datasets (archives being ingested, decoded stores).
    limit_dataset_bytes: int = Field(default=20 << 30, ge=0)
    # Requests per key on POST /jobs and POST /datasets, and on /predict and /v2/models/{id}/infer
    # (limits' notation: "60/minute", "10/second"; "unlimited").
    limit_submit_rate: Rate = "60/minute"
    limit_predict_rate: Rate = "100/second"
    # A job's network (parameters), training memory (weights, gradients, optimizer state and one batch's
    # activations, estimated by spec.budget), epochs and attempts.
    limit_job_params: int = Field(default=200_000_000, ge=0)
    limit_job_memory_bytes: int = Field(default=16 << 30, ge=0)
    limit_job_epochs: int = Field(default=500, ge=1)
    limit_job_attempts: int = Field(default=5, ge=1)

    # Worker: a lease the worker renews every heartbeat_seconds; an expired lease lets another claim.
    lease_seconds: int = Field(default=60, ge=5)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_queue: str = "cpu,ingest"
    # torch intra-op threads of each worker process; 0: torch's default, one per core. Where the API shares
    # the cores and takes heavy traffic, fewer threads keep training steady (bench/api_load.py: on 2 cores
    # under 64 polling clients, an epoch took 5.5x as long with 2 threads, 1.5x the idle 2-thread time with 1).
    # `taas up --workers N` sets cores / N when it is 0.
    worker_torch_threads: int = Field(default=0, ge=0, le=256)
    # CPU priority of training and ingest processes (nice, 0-19; also their session's autogroup on Linux, where
    # nice alone only ranks a process against its own session). Above 0, an API sharing the cores goes first
    # and training takes what is left (bench/api_load.py, 64 clients polling while a job trains on 2 cores:
    # nice 2 gave 4,390 req/s and 1.7x epochs, nice 0 3,400-3,700 req/s and 1.2x). With nothing else to run,
    # training gets every cycle whatever its nice.
    worker_nice: int = Field(default=0, ge=0, le=19)
    # How often a running job looks for a cancel request (a Redis key; the DB flag on each heartbeat).
    cancel_poll_seconds: float = Field(default=0.2, gt=0)
    # How often each worker requeues jobs whose lease expired (their worker died), and at its start.
    reap_interval_seconds: float = Field(default=30.0, gt=0)
    # A queued job not picked up this long after its message was sent gets its message sent again
    # (duplicates are harmless: the claim lets one delivery train it).
    resend_queued_after_seconds: float = Field(default=600.0, ge=10)
    # Loss reporting: a chunk is handed over after this many batches or seconds, whichever is first.
    loss_flush_batches: int = Field(default=64, ge=1)
    loss_flush_seconds: float = Field(default=0.2, gt=0)
    stop_check_batches: int = Field(default=8, ge=1)
    loss_stream_maxlen: int = Field(default=200_000, ge=1000)

    # API processes run by `python -m app.server` (taas up, compose); 0: one per CPU core.
    api_processes: int = Field(default=0, ge=0, le=256)

    # Request bodies over this are refused (413) before parsing; /predict uses predict_max_bytes instead.
    request_max_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)

    # Predict
    predict_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    predict_max_files: int = Field(default=64, ge=1)
    predict_cache_size: int = Field(default=8, ge=1)
    # And at most this many bytes of their weights (the newest one is kept whatever its size).
    predict_cache_bytes: int = Field(default=2 << 30, ge=0)
    # Larger images are refused before decoding (a small PNG can decode to gigabytes).
    predict_max_pixels: int = Field(default=4096 * 4096, ge=1)
    # And all images of one request together, read from their headers before any is decoded.
    predict_max_request_pixels: int = Field(default=4096 * 4096, ge=1)
    # Dynamic batching (app.serving.batching): concurrent requests for one job run as one batch of at most
    # batch_max_images; a batch that is not full waits up to batch_max_delay_ms for requests still being
    # received (0: never wait, as Triton's default). Past queue_max_images waiting, requests get 503.
    predict_batch_max_images: int = Field(default=256, ge=1)
    predict_batch_max_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    predict_queue_max_images: int = Field(default=4096, ge=1)
    # A served job's row and weights file are checked again once its cached model is this old (app.serving.loaded):
    # another API process stops serving a deleted job within this time.
    predict_recheck_seconds: float = Field(default=2.0, gt=0)
    # torch threads for inference in each API process; 0 leaves torch's default (one per core). The
    # multi-process server (app.server) sets it to cores / processes.
    predict_threads: int = Field(default=0, ge=0, le=256)

    # Job queues: "cuda*" devices go to "gpu", "cpu"/"mps" to "cpu", device "auto" to default_queue.
    # queue_prefix is prepended to every queue name, the worker's too (app.core.queue.queue_name); tests use
    # a throwaway one so their messages never reach a real worker.
    default_queue: Literal["cpu", "gpu"] = "cpu"
    # With the base name ("cpu"/"gpu") it is stored in jobs.queue, a String(32).
    queue_prefix: str = Field(default="", max_length=24)
    # Socket timeouts for the API's Redis clients (loss streams, cancel flags, the Celery producer).
    redis_timeout_seconds: float = Field(default=5.0, gt=0)

    # Connections to PostgreSQL, per process: pool_size kept open, up to max_overflow more for the workers'
    # threads under load. The API runs at most pool_size database calls at once (app.core.db.Database); a request
    # that waits longer than pool_timeout for its turn gets 503 with Retry-After.
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_max_overflow: int = Field(default=10, ge=0, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # Connections of each API process's asyncio pool for GET /jobs/{id} on PostgreSQL (app.jobs.reads): one
    # query takes about 0.1 ms, so a few serve thousands of requests a second.
    db_read_pool_size: int = Field(default=4, ge=1, le=100)

    # Listing
    page_size_max: int = Field(default=500, ge=1)
    # An idle GET /jobs/{id}/events stream gets a comment line this often (proxies close silent connections).
    events_keepalive_seconds: float = Field(default=15.0, gt=0, le=3600)

    # Dataset uploads (POST /datasets) and their ingest. An upload over the first is refused (413) while it
    # streams; the others make an ingest fail with the reason (hostile or oversized archives).
    dataset_max_upload_bytes: int = Field(default=2 << 30, ge=1024)
    dataset_max_members: int = Field(default=500_000, ge=1)
    dataset_max_uncompressed_bytes: int = Field(default=8 << 30, ge=1024)
    # Uncompressed / compressed size, per member (past 1 MiB) and for the whole archive: a zip bomb's is
    # in the thousands, images barely compress and CSV text about 10x.
    dataset_max_compression_ratio: float = Field(default=100.0, ge=2)
    dataset_max_member_bytes: int = Field(default=64 << 20, ge=1024)
    # Larger images are refused before decoding (a small PNG can decode to gigabytes).
    dataset_max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    # The decoded store, N x C x H x W bytes: past this, resize with image_size.
    dataset_max_store_bytes: int = Field(default=8 << 30, ge=1024)

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> "Settings":
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of "
                             f"lease_seconds ({self.lease_seconds}), or leases expire between renewals")
        return self

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.state_dir / 'taas.db').resolve()}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.state_dir / "artifacts"
        if self.data_root is None:
            self.data_root = self.state_dir / "data"
        if self.datasets_dir is None:
            self.datasets_dir = self.state_dir / "datasets"
        return self

    @property
    def artifacts_path(self) -> Path:
        assert self.artifacts_dir is not None
        return self.artifacts_dir

    @property
    def data_path(self) -> Path:
        assert self.data_root is not None
        return self.data_root

    @property
    def datasets_path(self) -> Path:
        assert self.datasets_dir is not None
        return self.datasets_dir


# Settings of the client side only (the taas command, app.client): the services never read them.
CLIENT_SETTINGS = frozenset({"api_url", "api_key"})


@lru_cache
def get_settings() -> Settings:
    return Settings()

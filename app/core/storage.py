"""File names on the shared disk (artifacts and datasets folders): the one home of these names, imported by
the API and the workers alike."""

import re
from pathlib import Path
from typing import Literal

# A folder per job under the artifacts folder.
CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
LAST = "last.safetensors"
WEIGHT_FILES = {"best": BEST, "last": LAST}
ARTIFACT_FILES = {"best": BEST, "last": LAST, "checkpoint": CHECKPOINT}
# The best weights exported for other runtimes (GET /jobs/{id}/export), written on first request.
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
# A worker writes each epoch's files into its claim's own folder inside the job's (hidden: the API never
# serves from it); they are renamed into the job's folder only while that worker still holds the job's lease
# (worker.training.reporter), so a worker that lost the job never overwrites the files of the one that has it.
ATTEMPT_PREFIX = ".attempt-"
# TensorBoard event files (worker.training.tensorboard), a file per attempt, read while they grow: `tensorboard --logdir
# <artifacts>` shows each job as the run "<job id>/tensorboard"; GET /jobs/{id}/tensorboard archives them.
TENSORBOARD = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."  # how TensorBoard's writers name their files

# The admin API key `taas up` creates, in the state folder (app.local.admin_key; the client and the CLI read it).
KEY_FILE = "api-key"

# A folder per dataset under the datasets folder: the upload until it is ingested, then the store.
ARCHIVE = "archive"
STORE = "store.safetensors"


ArchiveKind = Literal["zip", "tar", "gzip", "bzip2", "xz"]


def archive_kind(head: bytes) -> ArchiveKind | None:
    """What an uploaded file is, from its first 512 bytes (compressed ones are expected to hold a tar)."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[257:262] == b"ustar" or (len(head) >= 512 and not head.strip(b"\x00")):
        return "tar"  # with a POSIX/GNU header, or empty (a tar of nothing is all zeros)
    return None


def job_dir(artifacts: Path, job_id: str) -> Path:
    return artifacts / job_id


def attempt_token(lease_owner: str) -> str:
    """The lease owner ("host:pid:nonce") as a portable folder-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", lease_owner)


def attempt_dir(job_folder: Path, lease_owner: str) -> Path:
    """Where the claim `lease_owner` stages its epochs' files: <job folder>/.attempt-<lease token>."""
    return job_folder / f"{ATTEMPT_PREFIX}{attempt_token(lease_owner)}"


def staged_epoch_dir(attempt: Path, epoch: int) -> Path:
    """One epoch's files inside an attempt folder (an epoch's files never mix with the next one's)."""
    return attempt / f"epoch-{epoch}"


def attempt_dirs(job_folder: Path) -> list[Path]:
    """The attempt folders in a job's folder (a crashed or fenced-off worker's may be left over)."""
    try:
        return [p for p in job_folder.iterdir() if p.name.startswith(ATTEMPT_PREFIX) and p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def tensorboard_dir(job_folder: Path) -> Path:
    return job_folder / TENSORBOARD


def event_files(job_folder: Path) -> list[Path]:
    """The job's TensorBoard event files, oldest first (their names start with their creation time, and
    TensorBoard reads them in name order too); symbolic links are never among them."""
    folder = tensorboard_dir(job_folder)
    if folder.is_symlink():
        return []
    try:
        return sorted(p for p in folder.iterdir()
                      if p.name.startswith(EVENT_FILE_PREFIX) and not p.is_symlink() and p.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def dataset_dir(datasets: Path, dataset_id: str) -> Path:
    return datasets / dataset_id


def last_touched(folder: Path) -> float:
    """The latest modification time of a folder and of what it holds directly (FileNotFoundError once it is gone)."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])

"""A job's TensorBoard event files as one download (GET /jobs/{id}/tensorboard): opened first (what is deleted or
grows meanwhile cannot break the archive), then a tar.gz made as it is sent."""

import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.core import storage

EventFile = tuple[str, BinaryIO, os.stat_result]


def open_event_files(job_folder: Path) -> list[EventFile]:
    """The job's event files, opened (what is deleted or grows meanwhile cannot break the archive); never a
    symbolic link, nor anything but a regular file, so nothing outside the job's folder is read."""
    opened: list[EventFile] = []
    for path in storage.event_files(job_folder):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone, or replaced by a link, since it was listed
        file = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            opened.append((path.name, file, info))
        else:
            file.close()
    return opened


def tar_gz(top: str, files: list[EventFile]) -> Iterator[bytes]:
    """A tar.gz of `files` under the folder `top`, compressed as it is sent (a sync iterator: Starlette runs it
    on a thread, off the event loop)."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    for part in _tar(top, files):
        if compressed := gz.compress(part):
            yield compressed
    yield gz.flush()


def _tar(top: str, files: list[EventFile], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The tar stream: each file as long as it was when opened (one still being written grows meanwhile)."""
    for name, file, info in files:
        header = tarfile.TarInfo(f"{top}/{name}")
        header.size, header.mtime, header.mode = info.st_size, int(info.st_mtime), 0o644
        yield header.tobuf(format=tarfile.PAX_FORMAT)  # any name length
        remaining = info.st_size
        while remaining:
            # Zeros if it shrank (nothing truncates event files): the archive stays well formed.
            data = file.read(min(chunk, remaining)) or b"\0" * min(chunk, remaining)
            remaining -= len(data)
            yield data
        yield b"\0" * (-info.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def close_all(files: list[EventFile]) -> None:
    for _, file, _ in files:
        file.close()

"""Reading an uploaded archive without extracting it: members are listed and checked against hostile
patterns and limits, then read into memory one at a time. Nothing is ever written to a path taken from
an archive, so no member can land outside the dataset's folder, whatever its name says.

A compressed tar is first decompressed, within the limits, into a scratch file in the dataset's folder.
"""

import bz2
import gzip
import io
import lzma
import re
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.storage import archive_kind

# Compression ratios are judged only past this many bytes: tiny members and archives may compress well.
RATIO_FLOOR_BYTES = 1 << 20
COPY_BYTES = 1 << 20
# zipfile decompresses these in bounded steps (bzip2 and lzma members it would decompress whole).
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# A tar's extended headers (long names, pax records) are read whole by tarfile: bound them.
MAX_EXTENDED_HEADER_BYTES = 1 << 20
EXTENDED_HEADERS = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                              tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})


class ArchiveRejected(Exception):
    """An archive we refuse to read, with the reason in words for the person who uploaded it."""


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_uncompressed_bytes: int
    max_ratio: float
    max_member_bytes: int


@dataclass(frozen=True)
class Member:
    path: str  # normalized: relative, "/"-separated, no "." or ".." parts
    size: int
    ref: Any  # the ZipInfo or TarInfo


def normalize(name: str) -> str:
    """The member's path, relative and "/"-separated; refuses absolute paths and ".." (zip slip)."""
    if "\x00" in name:
        raise ArchiveRejected(f"member {name!r} has a NUL character in its name")
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ArchiveRejected(f"member {name!r} has an absolute path: archives must hold relative paths only")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(f"member {name!r} points outside the archive (a '..' in its path)")
    return "/".join(parts)


class Archive:
    """The checked members of an archive and a way to read each one (bounded by its checked size)."""

    def __init__(self, members: list[Member], read: Callable[[Member], bytes], close: Callable[[], None]):
        self.members = members
        self._read = read
        self._close = close

    def read(self, member: Member) -> bytes:
        return self._read(member)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tally:
    """Counts members and their total size as they are listed, refusing past the limits."""

    def __init__(self, limits: Limits):
        self.limits, self.count, self.total = limits, 0, 0
        self.seen: set[str] = set()

    def entry(self) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveRejected(f"the archive has more than {self.limits.max_members} members "
                                  "(TAAS_DATASET_MAX_MEMBERS)")

    def file(self, name: str, size: int, ref: Any) -> Member | None:
        path = normalize(name)
        if not path:
            return None
        if path in self.seen:
            raise ArchiveRejected(f"member {path!r} appears twice in the archive")
        self.seen.add(path)
        self.total += size
        if self.total > self.limits.max_uncompressed_bytes:
            raise ArchiveRejected(f"the archive holds more than {self.limits.max_uncompressed_bytes} bytes "
                                  "uncompressed (TAAS_DATASET_MAX_UNCOMPRESSED_BYTES)")
        return Member(path, size, ref)


def open_archive(path: Path, *, limits: Limits, scratch: Path) -> Archive:
    """Open and check the archive at `path`; `scratch` is where a compressed tar is decompressed to."""
    with path.open("rb") as f:
        kind = archive_kind(f.read(512))
    if kind is None:
        raise ArchiveRejected("the upload is not a .zip, .tar or .tar.gz archive")
    if kind == "zip":
        return _open_zip(path, limits)
    if kind != "tar":
        _decompress(path, kind, scratch, limits)
        path = scratch
    return _open_tar(path, limits)


def _ratio_exceeded(uncompressed: int, compressed: int, limits: Limits) -> bool:
    return uncompressed > RATIO_FLOOR_BYTES and uncompressed > limits.max_ratio * max(compressed, 1)


def _bomb(where: str, limits: Limits) -> ArchiveRejected:
    return ArchiveRejected(f"{where} expands more than {limits.max_ratio:g} times when decompressed: refused as a "
                           "compression bomb (TAAS_DATASET_MAX_COMPRESSION_RATIO)")


def _count_zip_entries(path: Path, limits: Limits) -> None:
    """Walk the central directory's headers, refusing past max_members, before zipfile builds an object per
    entry (the end record's own count is not to be trusted: it can say 1 over millions of entries)."""
    with path.open("rb") as f:
        try:
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
        except OSError:
            end = None
        if end is None:
            raise ArchiveRejected("the zip archive is damaged: its end record is missing (was the upload cut "
                                  "short?)")
        size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
        # Where zipfile finds it: just before the end record (and before the zip64 end record and locator,
        # for archives of more than 65,535 entries); bytes prepended to the archive shift every offset alike.
        position = end[zipfile._ECD_LOCATION] - size  # type: ignore[attr-defined]
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            position -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if position < 0 or offset < 0:
            raise ArchiveRejected("the zip archive is damaged: its central directory is out of place")
        stop, count = position + size, 0
        while position < stop:
            f.seek(position)
            header = f.read(46)
            if len(header) < 46 or header[:4] != b"PK\x01\x02":
                raise ArchiveRejected("the zip archive is damaged: a central directory entry is malformed")
            name, extra, comment = struct.unpack("<3H", header[28:34])
            position += 46 + name + extra + comment
            count += 1
            if count > limits.max_members:
                raise ArchiveRejected(f"the archive has more than {limits.max_members} members "
                                      "(TAAS_DATASET_MAX_MEMBERS)")


def _open_zip(path: Path, limits: Limits) -> Archive:
    _count_zip_entries(path, limits)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArchiveRejected(f"the zip archive is damaged: {e}") from None
    try:
        tally = _Tally(limits)
        members = []
        for info in zf.infolist():
            tally.entry()
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveRejected(f"member {info.filename!r} is a symbolic link: links are not allowed")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise ArchiveRejected(f"member {info.filename!r} is encrypted: upload an archive without a password")
            if info.compress_type not in ZIP_METHODS:
                raise ArchiveRejected(f"member {info.filename!r} is compressed with method {info.compress_type}: "
                                      "zip archives must store or deflate their members (the usual zip)")
            if _ratio_exceeded(info.file_size, info.compress_size, limits):
                raise _bomb(f"member {info.filename!r}", limits)
            if (member := tally.file(info.filename, info.file_size, info)) is not None:
                members.append(member)
        if _ratio_exceeded(tally.total, path.stat().st_size, limits):
            raise _bomb("the archive", limits)
    except BaseException:
        zf.close()
        raise

    def read(member: Member) -> bytes:
        _check_member_size(member, limits)
        # In bounded steps, and never past the size the directory declared: a member that lies about its
        # size stops here, not after its whole (bomb) content was decompressed.
        chunks, got = [], 0
        try:
            with zf.open(member.ref) as f:
                while got <= member.size and (chunk := f.read(min(COPY_BYTES, member.size + 1 - got))):
                    chunks.append(chunk)
                    got += len(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise ArchiveRejected(f"member {member.path!r} cannot be read: {e}") from None
        if got != member.size:
            raise ArchiveRejected(f"member {member.path!r} is not the size the archive says: it is damaged")
        return b"".join(chunks)

    return Archive(members, read, zf.close)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses extended headers (long names, pax records) larger than a header could need, before tarfile
    reads them into memory: they are not members, so no member limit would see them."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in EXTENDED_HEADERS and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise ArchiveRejected(f"the tar archive has an extended header of {self.size} bytes (at most "
                                  f"{MAX_EXTENDED_HEADER_BYTES}): refused")
        info: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return info


def _open_tar(path: Path, limits: Limits) -> Archive:
    try:
        tf = tarfile.open(path, mode="r:", tarinfo=_BoundedTarInfo)
    except (tarfile.TarError, OSError) as e:
        raise ArchiveRejected(f"the tar archive is damaged: {e}") from None
    try:
        tally = _Tally(limits)
        members = []
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, OSError) as e:
                raise ArchiveRejected(f"the tar archive is damaged: {e}") from None
            if info is None:
                break
            tally.entry()
            if info.issym() or info.islnk():
                raise ArchiveRejected(f"member {info.name!r} is a {'symbolic' if info.issym() else 'hard'} link: "
                                      "links are not allowed")
            if info.isdir():
                continue
            if not info.isreg():
                raise ArchiveRejected(f"member {info.name!r} is a device, pipe or other special file")
            if (member := tally.file(info.name, info.size, info)) is not None:
                members.append(member)
            # tarfile keeps every header it read; we keep our own list, so let it forget them.
            tf.members = []  # type: ignore[attr-defined]
    except BaseException:
        tf.close()
        raise

    def read(member: Member) -> bytes:
        _check_member_size(member, limits)
        file = tf.extractfile(member.ref)
        if file is None:
            raise ArchiveRejected(f"member {member.path!r} cannot be read")
        try:
            return file.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveRejected(f"member {member.path!r} cannot be read: {e}") from None

    return Archive(members, read, tf.close)


def _check_member_size(member: Member, limits: Limits) -> None:
    if member.size > limits.max_member_bytes:
        raise ArchiveRejected(f"member {member.path!r} is {member.size} bytes; files of at most "
                              f"{limits.max_member_bytes} bytes are read (TAAS_DATASET_MAX_MEMBER_BYTES)")


_DECOMPRESSORS: dict[str, Callable[[Path], io.BufferedIOBase]] = {
    "gzip": lambda p: gzip.GzipFile(p, "rb"),
    "bzip2": lambda p: bz2.BZ2File(p, "rb"),
    "xz": lambda p: lzma.LZMAFile(p, "rb"),
}


def _decompress(path: Path, kind: str, dest: Path, limits: Limits) -> None:
    """Decompress into `dest`, stopping as soon as the output passes the size or ratio limit."""
    compressed = path.stat().st_size
    written = 0
    try:
        with _DECOMPRESSORS[kind](path) as src, dest.open("wb") as out:
            while chunk := src.read(COPY_BYTES):
                written += len(chunk)
                if written > limits.max_uncompressed_bytes:
                    raise ArchiveRejected(f"the archive holds more than {limits.max_uncompressed_bytes} bytes "
                                          "uncompressed (TAAS_DATASET_MAX_UNCOMPRESSED_BYTES)")
                if _ratio_exceeded(written, compressed, limits):
                    raise _bomb("the archive", limits)
                out.write(chunk)
    except (OSError, EOFError, lzma.LZMAError) as e:
        dest.unlink(missing_ok=True)
        raise ArchiveRejected(f"the {kind} stream is damaged: {e}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    with dest.open("rb") as f:
        if archive_kind(f.read(512)) != "tar":
            dest.unlink(missing_ok=True)
            raise ArchiveRejected(f"the {kind} file does not hold a tar archive: upload a .tar.gz, .tar or .zip")

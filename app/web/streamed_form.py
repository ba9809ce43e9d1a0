"""A multipart upload streamed to disk as it arrives: one file part written straight into its destination
(never held whole in memory, never spooled elsewhere), a few small text fields kept.

The body's size limit is BodyLimit's (app.web.body_limit), which stops the stream with a 413."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.core.errors import InvalidSpec, MalformedRequest, UnsupportedMedia

MAX_FIELD_BYTES = 1024
MAX_PARTS = 32
MAX_HEADER_BYTES = 8192
# File data is handed to a thread in writes of about this size, so the event loop never waits on the disk.
WRITE_BYTES = 1 << 20
HEAD_BYTES = 512


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    head: bytes = b""  # the file's first bytes, to tell what it is


class _Receiver:
    """python-multipart callbacks: file bytes to `pending` (written by the caller), fields into `form`."""

    def __init__(self, file_field: str, allowed: frozenset[str], check_head: Callable[[str, bytes], None],
                 check_size: Callable[[int], None]):
        self.file_field, self.allowed, self.check_head = file_field, allowed, check_head
        self.check_size = check_size
        self._head_checked = False
        self.form = ReceivedForm()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.parts = 0
        self.complete = False
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidSpec(f"too many form fields: at most {MAX_PARTS}")
        self._disposition, self._name, self._is_file, self._value = b"", None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._bounded_header()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._bounded_header()

    def _bounded_header(self) -> None:
        if len(self._header_name) + len(self._header_value) > MAX_HEADER_BYTES:
            raise MalformedRequest(f"a multipart header is longer than {MAX_HEADER_BYTES} bytes")

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == self.file_field:
            if self.form.filename is not None:
                raise InvalidSpec(f"{self.file_field}: send one archive per upload")
            self._is_file = True
            self.form.filename = options.get(b"filename", b"").decode("utf-8", "replace") or self.file_field
        elif name not in self.allowed:
            expected = ", ".join(sorted({self.file_field, *self.allowed}))
            raise InvalidSpec(f"unknown form field {name[:100]!r}: the fields are {expected}")
        elif name in self.form.fields:
            raise InvalidSpec(f"{name}: given twice")
        self._name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            if len(self.form.head) < HEAD_BYTES:
                self.form.head += chunk[:HEAD_BYTES - len(self.form.head)]
                if len(self.form.head) == HEAD_BYTES:
                    self._check_head()
            self.form.size += len(chunk)
            self.check_size(self.form.size)
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidSpec(f"{self._name}: at most {MAX_FIELD_BYTES} bytes")

    def on_end(self) -> None:
        self.complete = True

    def take(self) -> bytes:
        """The file bytes received since the last take()."""
        data, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
        return data

    def _check_head(self) -> None:
        # As soon as the file's first bytes are in: a wrong kind of file is refused before the rest arrives.
        if not self._head_checked:
            self._head_checked = True
            self.check_head(self.form.filename or self.file_field, self.form.head)

    def on_part_end(self) -> None:
        if self._is_file:
            self._check_head()
        if not self._is_file and self._name is not None:
            try:
                self.form.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidSpec(f"{self._name}: not UTF-8 text") from None


def _any_size(size: int) -> None:
    pass


async def receive_form(request: Request, *, dest: Path, file_field: str, fields: frozenset[str],
                       check_head: Callable[[str, bytes], None],
                       check_size: Callable[[int], None] = _any_size) -> ReceivedForm:
    """Stream the request's multipart body: the `file_field` part into `dest`, the `fields` into memory.
    `check_head(filename, first bytes)` may refuse the file (by raising) once its first 512 bytes are in;
    `check_size(bytes so far)` as it grows (a quota stops the stream as soon as it is passed).

    On any error the partial file is removed before the error propagates."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise UnsupportedMedia("send multipart/form-data (e.g. curl -F name=... -F file=@data.zip)")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedRequest("multipart/form-data without a boundary")
    receiver = _Receiver(file_field, fields, check_head, check_size)
    parser = MultipartParser(boundary, {  # type: ignore[arg-type]
        name: getattr(receiver, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
            "on_header_end", "on_headers_finished", "on_end")})
    file: BinaryIO = await anyio.to_thread.run_sync(dest.open, "wb")
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as e:
                raise MalformedRequest(f"the multipart body is malformed: {e}") from None
            if receiver.pending_bytes >= WRITE_BYTES:
                await anyio.to_thread.run_sync(file.write, receiver.take())
        parser.finalize()
        if not receiver.complete:
            raise MalformedRequest("the multipart body ended before its closing boundary")
        await anyio.to_thread.run_sync(file.write, receiver.take())
        await anyio.to_thread.run_sync(file.close)
    except BaseException:
        file.close()
        dest.unlink(missing_ok=True)
        raise
    if receiver.form.filename is None:
        dest.unlink(missing_ok=True)
        raise InvalidSpec(f"{file_field}: missing; send the archive as the form field {file_field!r}")
    return receiver.form

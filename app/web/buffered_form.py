"""A multipart/form-data body already in memory (bounded by the route's body limit), split into its parts.

For /predict, whose bodies are small and many: bytes.find over the whole body costs a few microseconds,
where the streaming parser (python-multipart, with a spooled temporary file per file part, as Starlette's
request.form() uses it) costs several hundred. Strict RFC 7578 framing; anything else is a 400.
"""

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from python_multipart.multipart import parse_options_header

from app.core.errors import MalformedRequest, PayloadTooLarge, UnsupportedMedia

MAX_FIELDS = 16
MAX_HEADER_BYTES = 8192
_SPACE = b" \t"


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    data: bytes


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)  # parts without a filename (the first of a name)
    files: list[Part] = field(default_factory=list)  # parts with a filename, in order


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UnsupportedMedia("send the form as multipart/form-data")
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 70:
        raise MalformedRequest("multipart/form-data needs a boundary of 1 to 70 characters")
    return boundary


def parse_form(body: bytes, content_type: str, *, max_files: int) -> Form:
    """The form's parts; more than max_files file parts (past a margin, to name the count) is a 413.
    A urlencoded form is read too (it can hold fields, not files); other bodies are a 415."""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("ascii"), max_num_fields=MAX_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise MalformedRequest("the urlencoded form is malformed or has too many fields") from None
        return Form(fields=dict(reversed(pairs)))
    delimiter = b"--" + boundary_of(content_type)
    start = body.find(delimiter)
    if start < 0:
        raise MalformedRequest("multipart body without its boundary")
    separator = b"\r\n" + delimiter
    form = Form()
    pos = start + len(delimiter)
    max_parts = 2 * max_files + MAX_FIELDS
    parts = 0
    while not body.startswith(b"--", pos):  # the close delimiter ends the body (an epilogue may follow)
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(_SPACE):
            raise MalformedRequest("multipart body is malformed: a boundary line holds other text")
        end = body.find(separator, line_end)
        if end < 0:
            raise MalformedRequest("multipart body is truncated: no closing boundary")
        parts += 1
        if parts > max_parts:
            raise PayloadTooLarge(f"more than {max_parts} parts in one request; at most {max_files} files are "
                                  "accepted")
        _add_part(form, body, line_end + 2, end)
        pos = end + len(separator)
    return form


def _add_part(form: Form, body: bytes, start: int, end: int) -> None:
    headers_end = body.find(b"\r\n\r\n", start - 2, end)  # start - 2: a part may have no headers at all
    if headers_end < 0 or headers_end - start > MAX_HEADER_BYTES:
        raise MalformedRequest("multipart part without the blank line that ends its headers")
    disposition = None
    for line in body[start:headers_end].split(b"\r\n") if headers_end > start else ():
        name, colon, value = line.partition(b":")
        if not colon:
            raise MalformedRequest("multipart part with a malformed header line")
        if name.strip().lower() == b"content-disposition":
            disposition = value.strip()
    if disposition is None:
        raise MalformedRequest("multipart part without a Content-Disposition header")
    kind, options = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in options:
        raise MalformedRequest("multipart part whose Content-Disposition is not form-data with a name")
    field_name = options[b"name"].decode("utf-8", "replace")
    data = body[headers_end + 4:end]
    if b"filename" in options:
        form.files.append(Part(field_name, options[b"filename"].decode("utf-8", "replace"), data))
    elif len(form.fields) >= MAX_FIELDS and field_name not in form.fields:
        raise PayloadTooLarge(f"more than {MAX_FIELDS} form fields")
    else:
        form.fields.setdefault(field_name, data.decode("utf-8", "replace"))

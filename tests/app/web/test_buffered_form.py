"""app.web.buffered_form.parse_form: the in-memory multipart parser of /predict, against the framing clients send
(httpx builds the bodies) and the malformed ones they should not."""

import httpx
import pytest

from app.core.errors import MalformedRequest, PayloadTooLarge, UnsupportedMedia
from app.web.buffered_form import parse_form


def encoded(data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/predict", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_fields_and_files_as_httpx_sends_them():
    payloads = [b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3, b"", b"--not-a-boundary\r\n\r\n"]
    files = [("files", (f"{i}; odd \"name\".png", p, "image/png")) for i, p in enumerate(payloads)]
    body, content_type = encoded({"job_id": "abc", "note": "héllo"}, files)
    form = parse_form(body, content_type, max_files=8)
    assert form.fields == {"job_id": "abc", "note": "héllo"}
    assert [f.data for f in form.files] == payloads
    assert [f.name for f in form.files] == ["files"] * 3
    # Quotes arrive escaped as %22 (HTML5's rule, httpx's too) and are kept as sent, as Starlette keeps them.
    assert form.files[0].filename == "0; odd %22name%22.png"


def test_preamble_epilogue_and_a_header_we_do_not_know():
    body = (b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"job_id\"\r\nX-Other: 1\r\n\r\nj1\r\n"
            b"--XyZ\r\ncontent-disposition: form-data; name=files; filename=a.png\r\n\r\nPNGDATA\r\n"
            b"--XyZ--\r\nepilogue")
    form = parse_form(body, "multipart/form-data; boundary=XyZ", max_files=4)
    assert form.fields == {"job_id": "j1"} and form.files[0].filename == "a.png" and form.files[0].data == b"PNGDATA"


def test_a_urlencoded_form_has_fields_and_no_files():
    form = parse_form(b"job_id=j%201&x=2", "application/x-www-form-urlencoded", max_files=4)
    assert form.fields == {"job_id": "j 1", "x": "2"} and form.files == []


@pytest.mark.parametrize("body, content_type, error", [
    (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nno end", "multipart/form-data; boundary=b",
     MalformedRequest),
    (b"nothing here", "multipart/form-data; boundary=b", MalformedRequest),
    (b"--b\r\nContent-Disposition: form-data; name=a\r\nno blank line\r\n--b--", "multipart/form-data; boundary=b",
     MalformedRequest),
    (b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", MalformedRequest),
    (b"--b\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b",
     MalformedRequest),
    (b"--b junk\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b",
     MalformedRequest),
    (b"--b--", "multipart/form-data", MalformedRequest),
    (b"{}", "application/json", UnsupportedMedia),
    (b"", "", UnsupportedMedia),
])
def test_malformed_bodies_are_refused(body: bytes, content_type: str, error: type[Exception]):
    with pytest.raises(error):
        parse_form(body, content_type, max_files=4)


def test_part_counts_are_bounded():
    body, content_type = encoded({}, [("files", (f"{i}.png", b"x", "image/png")) for i in range(6)])
    assert len(parse_form(body, content_type, max_files=4).files) == 6  # counted by the route: it names the number
    body, content_type = encoded({}, [("files", (f"{i}.png", b"x", "image/png")) for i in range(30)])
    with pytest.raises(PayloadTooLarge, match="at most 4 files"):
        parse_form(body, content_type, max_files=4)
    body, content_type = encoded({f"f{i}": "v" for i in range(20)}, [("files", ("a.png", b"x", "image/png"))])
    with pytest.raises(PayloadTooLarge, match="form fields"):
        parse_form(body, content_type, max_files=64)

"""What every route shares in its answers: the error body and its OpenAPI entries, JSON serialized once."""

from collections.abc import Iterator
from typing import Any, BinaryIO

from fastapi import Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask


class ErrorPublic(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it.")


ERROR_DESCRIPTIONS = {
    400: "Bad request (e.g. a cursor this API did not hand out, a broken image)",
    401: "No API key, or an unknown or revoked one (Authorization: Bearer <key>)",
    403: "The key is not an admin key",
    404: "No such job or dataset for this owner",
    409: "The job's or dataset's status does not allow this",
    413: "Too many bytes, files or pixels",
    415: "An upload that is not an image (predict) or not an archive (datasets)",
    422: "A field breaks a rule (or a limit): the message names the field and the rule",
    429: "Over a quota or a rate limit (named in the message); retry after Retry-After seconds",
    503: "The database, Redis or the job queue is unreachable",
}


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """A model as a JSON response, serialized once (a route returning it declares response_model)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the domain errors a route can answer."""
    return {code: {"model": ErrorPublic, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def _chunks(file: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with file:
        while chunk := file.read(size):
            yield chunk


def stream_file(file: BinaryIO, size: int, *, media_type: str, filename: str) -> StreamingResponse:
    """An open file as a download, read as it is sent (a sync iterator: Starlette runs it on a thread). Served from
    the open file, so a file deleted or replaced meanwhile cannot break the answer; closed at the end, also when
    the client went away before the first chunk."""
    return StreamingResponse(
        _chunks(file), media_type=media_type, background=BackgroundTask(file.close),
        headers={"content-length": str(size), "content-disposition": f'attachment; filename="{filename}"'})

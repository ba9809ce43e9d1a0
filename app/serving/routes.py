"""Serving a finished job: POST /predict, its network exported for other runtimes (GET /jobs/{id}/export), and
the Open Inference Protocol (app.serving.v2_routes)."""

import os
from time import perf_counter
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.accounts.deps import OwnerDep, PrincipalDep, count_rate
from app.core import storage
from app.core.config import get_settings
from app.core.errors import NotFound, PayloadTooLarge
from app.live.metrics import observe_prediction
from app.serving import export, v2_routes
from app.serving.export import ExportFormat
from app.serving.loaded import ServedDep
from app.serving.predictor import Upload, Work, postprocess
from app.serving.schemas import PredictionPublic, PredictionsPublic
from app.web.buffered_form import parse_form
from app.web.deps import SettingsDep
from app.web.responses import error_responses, stream_file

router = APIRouter(tags=["predict"], responses=error_responses(401))
jobs_router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401))

_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["job_id", "files"],
            "properties": {
                "job_id": {"type": "string", "description": "A succeeded job."},
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "One or more images (PNG, JPEG, BMP, GIF, TIFF, WebP or PPM)."},
            },
        }}},
    },
}


def _missing(name: str) -> RequestValidationError:
    return RequestValidationError([{"type": "missing", "loc": ("body", name), "msg": "Field required",
                                    "input": None}])


# The body size limit (settings.predict_max_bytes) is enforced before parsing, by app.web.body_limit. Decoding
# and inference run on the batcher's inference thread, never on the event loop.
@router.post("/predict", openapi_extra=_FORM, response_model=PredictionsPublic,
             responses=error_responses(400, 404, 409, 413, 415, 429, 503))
async def predict(request: Request, principal: PrincipalDep) -> Response:
    """Classify images with a succeeded job's best weights: class index, label and probabilities."""
    # A hot path: its clients come from app.state, not from dependencies (each one resolved per request).
    started, state = perf_counter(), request.app.state
    await count_rate(request, principal, "predict")
    settings, served, batcher = get_settings(), state.served, state.batcher
    owner = principal.owner
    with batcher.receiving():
        form = parse_form(await request.body(), request.headers.get("content-type", ""),
                          max_files=settings.predict_max_files)
        job_id = form.fields.get("job_id")
        files = [f for f in form.files if f.name == "files"]
        if job_id is None:
            raise _missing("job_id")
        if not files:
            raise _missing("files")
        if len(files) > settings.predict_max_files:
            raise PayloadTooLarge(
                f"{len(files)} files in one request; at most {settings.predict_max_files} are accepted")
        model = await served.get(owner=owner, job_id=job_id)
    uploads = [Upload(f.filename or f"files[{i}]", f.data) for i, f in enumerate(files)]
    probabilities = await batcher.submit(Work(model, uploads=uploads))
    body = PredictionsPublic(
        job_id=job_id, classes=model.classes,
        predictions=[PredictionPublic(filename=p.filename, class_index=p.class_index, label=p.label,
                                      probabilities=p.probabilities)
                     for p in postprocess(uploads, probabilities, model.classes)],
    )
    observe_prediction("/predict", started, len(uploads))
    return Response(body.model_dump_json(), media_type="application/json")


EXPORT_MEDIA = {"onnx": "application/onnx", "torchscript": "application/octet-stream"}


@jobs_router.get(
    "/{job_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/onnx": {}, "application/octet-stream": {}},
                     "description": "The best network with its preprocessing and softmax: float32 pixels "
                                    "N x C x H x W (0..1, as ToTensor gives them) in, probabilities N x K out"},
               **error_responses(404, 409)},
)
async def export_job(
    job_id: str, owner: OwnerDep, settings: SettingsDep, served: ServedDep,
    format: Annotated[ExportFormat, Query(description="onnx (input 'input', output 'probabilities', dynamic "
                                           "batch) or torchscript (torch.jit.load)")] = "onnx",
) -> StreamingResponse:
    """A succeeded job's best network for other runtimes, produced on first request and kept with the job's
    artifacts; onnxruntime and torch.jit.load give the probabilities POST /predict gives."""
    model = await served.get(owner=owner, job_id=job_id)

    def open_export() -> tuple[BinaryIO, int]:
        try:
            file = export.ensure_export(model, format, settings.artifacts_path).open("rb")
        except FileNotFoundError:
            raise NotFound(f"job {job_id}'s artifacts are gone (the job was deleted)") from None
        return file, os.fstat(file.fileno()).st_size

    file, size = await run_in_threadpool(open_export)
    return stream_file(file, size, media_type=EXPORT_MEDIA[format],
                       filename=f"{job_id}-{storage.EXPORT_FILES[format]}")


router.include_router(jobs_router)
router.include_router(v2_routes.router)

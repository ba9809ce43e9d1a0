"""Predictions with a finished job's best weights."""

from time import perf_counter
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError

from app.core.config import get_settings
from app.core.errors import PayloadTooLarge
from app.live.metrics import observe_prediction
from app.serving.predictor import Upload, Work, postprocess
from app.web.buffered_form import parse_form
from app.web.deps import PrincipalDep, count_rate
from app.web.schemas import PredictionPublic, PredictionsPublic, error_responses

router = APIRouter(tags=["predict"], responses=error_responses(401))

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

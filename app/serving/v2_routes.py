"""The Open Inference Protocol (KServe v2 REST): health, server and model metadata, readiness, inference.

Standard clients (tritonclient's HTTP client, KServe's) work unchanged; the model name is a job id and,
like every route, only the owner's succeeded jobs are found. Errors answer {"error": message}, as the
protocol has them (app.main). Requests share /predict's batcher: one batch may hold both."""

from time import perf_counter
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.accounts.deps import OwnerDep, PrincipalDep, count_rate
from app.core.config import get_settings
from app.live.health import select_one
from app.live.metrics import observe_prediction
from app.serving import oip
from app.serving.loaded import ServedDep
from app.serving.predictor import Upload, Work
from app.web.deps import DbDep
from app.web.responses import error_responses

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

# JSON bodies past this size are parsed on a worker thread, not on the event loop.
PARSE_INLINE_BYTES = 64 * 1024


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    return {"name": "taas", "version": "0.1.0", "extensions": oip.EXTENSIONS}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The server process answers."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "The database is unreachable"}})
async def ready(db: DbDep) -> JSONResponse:
    """The server can serve models (its database answers)."""
    ok = await db.read(select_one) == "ok"
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503, headers=None if ok else {"retry-after": "1"})


@router.get("/models/{name}", responses=error_responses(401, 404, 409))
async def model_metadata(name: str, owner: OwnerDep, served: ServedDep) -> dict[str, Any]:
    """A succeeded job as a model: its inputs and outputs, with datatypes and shapes."""
    model = await served.get(owner=owner, job_id=name)
    return oip.model_metadata(name, model.input_shape, len(model.classes))


@router.get("/models/{name}/ready", responses=error_responses(401, 404, 409))
async def model_ready(name: str, owner: OwnerDep, served: ServedDep) -> dict[str, Any]:
    """200 when the job's weights are loaded and can serve; 404 or 409 (with the reason) otherwise."""
    await served.get(owner=owner, job_id=name)
    return {"name": name, "ready": True}


@router.post(
    "/models/{name}/infer",
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "JSON, or with binary outputs the JSON part then the tensors "
                                    "(Inference-Header-Content-Length)"},
               **error_responses(400, 401, 404, 409, 413, 415, 429, 503)},
)
async def infer(name: str, request: Request, principal: PrincipalDep) -> Response:
    """Class probabilities and labels for FP32 pixels [N, C, H, W] or BYTES images [N] (JSON, or the
    binary tensor data extension)."""
    started, state = perf_counter(), request.app.state  # a hot path, as /predict
    await count_rate(request, principal, "predict")
    settings, served, batcher, owner = get_settings(), state.served, state.batcher, principal.owner
    with batcher.receiving():
        body = await request.body()
        model = await served.get(owner=owner, job_id=name)
        header = request.headers.get(oip.HEADER_LENGTH)

        def parse() -> oip.InferRequest:
            return oip.parse_infer(body, header, input_shape=model.input_shape, max_items=settings.predict_max_files)

        parsed = parse() if len(body) <= PARSE_INLINE_BYTES else await run_in_threadpool(parse)
    if parsed.pixels is not None:
        work = Work(model, pixels=parsed.pixels)
    else:
        work = Work(model, uploads=[Upload(f"images[{i}]", data) for i, data in enumerate(parsed.images or ())])
    probabilities = await batcher.submit(work)
    labels = [model.classes[i] for i in probabilities.argmax(axis=1).tolist()]
    content, headers = oip.encode_infer(parsed, name, probabilities, labels)
    observe_prediction("/v2/models/{name}/infer", started, len(probabilities))
    return Response(content, headers=headers)

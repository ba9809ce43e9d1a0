"""Predictions with a finished job's best weights."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app import jobs
from app.deps import OwnerDep, PredictorDep, SessionDep, SettingsDep
from app.errors import InvalidSpec, PayloadTooLarge
from app.predictor import Upload
from app.schemas import PredictionPublic, PredictionsPublic, error_responses

router = APIRouter(tags=["predict"])


# Sync on purpose: FastAPI runs it in the threadpool, so decoding and inference stay off the event loop.
# The body size limit (settings.predict_max_bytes) is enforced before parsing, by app.body_limit.
@router.post(
    "/predict",
    responses=error_responses(400, 404, 409, 413, 415),
    # Starlette's own part-count limit would answer 400; let ours (predict_max_files) answer instead.
    form_limits={"max_files": 100_000},
)
def predict(
    job_id: Annotated[str, Form(description="A succeeded job.")],
    files: Annotated[list[UploadFile], File(description="One or more images (anything Pillow reads).")],
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    predictor: PredictorDep,
) -> PredictionsPublic:
    """Classify images with a succeeded job's best weights: class index, label and probabilities."""
    if not files:
        raise InvalidSpec("files: send at least one image")
    if len(files) > settings.predict_max_files:
        raise PayloadTooLarge(
            f"{len(files)} files in one request; at most {settings.predict_max_files} are accepted")
    job = jobs.succeeded_job(session=session, owner=owner, job_id=job_id)
    uploads = [Upload(f.filename or f"files[{i}]", f.file.read()) for i, f in enumerate(files)]
    spec = jobs.job_spec(job)
    predictions = predictor.predict(job_id=job.id, spec=spec, info=jobs.job_dataset(job, spec), uploads=uploads)
    return PredictionsPublic(
        job_id=job.id,
        predictions=[PredictionPublic(filename=p.filename, class_index=p.class_index, label=p.label,
                                      probabilities=p.probabilities) for p in predictions],
    )

"""Dependencies for route signatures, as Annotated aliases."""

from collections.abc import Iterator
from typing import Annotated

import redis
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import new_session
from app.predictor import Predictor


def get_session() -> Iterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) when the request ends."""
    with new_session() as session:
        yield session


def get_owner(settings: Annotated[Settings, Depends(get_settings)]) -> str:
    # One local owner until authentication arrives; every query is already scoped by it.
    return settings.owner


def get_redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


def get_predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OwnerDep = Annotated[str, Depends(get_owner)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]

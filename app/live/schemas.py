"""What GET /health answers."""

from typing import Literal

from pydantic import BaseModel, Field


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    db: str = Field(description="'ok', or why the database check failed.")
    redis: str = Field(description="'ok', or why the Redis check failed.")

"""The limits an owner's requests run under: the settings' values, each overridable per API key.

Kinds of limit: how many jobs may wait or run (active_jobs), how many bytes of datasets (dataset_bytes),
how many expensive requests per key (submit_rate, predict_rate, kept in Redis so every API process shares
them), and how big one job may be (job_params, job_memory_bytes, job_epochs, job_attempts)."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.config import Rate, Settings


class Limits(BaseModel):
    """Per-key overrides; a field left out takes the setting limit_<field> (TAAS_LIMIT_<FIELD>)."""

    model_config = ConfigDict(extra="forbid")

    active_jobs: int | None = Field(default=None, ge=0, description="Queued + running jobs of the key's owner.")
    dataset_bytes: int | None = Field(default=None, ge=0, description="Bytes of the owner's datasets.")
    submit_rate: Rate | None = Field(default=None, description='POST /jobs and /datasets per key, e.g. "60/minute".')
    predict_rate: Rate | None = Field(default=None, description="/predict and v2 infer requests per key.")
    job_params: int | None = Field(default=None, ge=0, description="Parameters of a job's network.")
    job_memory_bytes: int | None = Field(default=None, ge=0, description="A job's estimated training memory.")
    job_epochs: int | None = Field(default=None, ge=1, description="Epochs of a job.")
    job_attempts: int | None = Field(default=None, ge=1, description="max_attempts of a job.")


class EffectiveLimits(BaseModel):
    """Every limit with its value for one key: its override, else the setting."""

    active_jobs: int
    dataset_bytes: int
    submit_rate: str
    predict_rate: str
    job_params: int
    job_memory_bytes: int
    job_epochs: int
    job_attempts: int

    @classmethod
    def of(cls, settings: Settings, overrides: Limits | None = None) -> "EffectiveLimits":
        given = overrides.model_dump(exclude_none=True) if overrides is not None else {}
        return cls(**{name: given.get(name, getattr(settings, f"limit_{name}")) for name in cls.model_fields})

    @classmethod
    def of_stored(cls, settings: Settings, stored: dict[str, Any] | None) -> "EffectiveLimits":
        """of() for a key row's limits column, remembered per distinct value (it is read on every request)."""
        cache_key = (id(settings), tuple(sorted((stored or {}).items())))
        found = _EFFECTIVE.get(cache_key)
        if found is None:
            if len(_EFFECTIVE) > 1024:
                _EFFECTIVE.clear()
            found = _EFFECTIVE[cache_key] = cls.of(settings, Limits.model_validate(stored) if stored else None)
        return found


_EFFECTIVE: dict[tuple[int, tuple[tuple[str, Any], ...]], EffectiveLimits] = {}


def setting_name(limit: str) -> str:
    """The environment variable of a limit's default, for messages."""
    return f"TAAS_LIMIT_{limit.upper()}"

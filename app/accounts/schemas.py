"""The bodies and answers of the keys and audit routes."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.accounts.limits import EffectiveLimits, Limits
from app.core.tables import ApiKey

Owner = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$",
                             description="Letters, digits and . _ @ - (an account, team or e-mail name).")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner
    admin: bool = False
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    limits: Limits = Field(default_factory=Limits, description="Overrides of the server's limits for this key.")


class KeyPublic(BaseModel):
    id: str
    owner: str
    admin: bool
    name: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    limits: Limits = Field(description="This key's overrides (absent ones: the server's settings).")
    effective_limits: EffectiveLimits
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey, effective: EffectiveLimits) -> "KeyPublic":
        return cls(id=row.id, owner=row.owner, admin=row.admin, name=row.name, prefix=row.prefix,
                   limits=Limits.model_validate(row.limits or {}), effective_limits=effective,
                   created_at=row.created_at, revoked_at=row.revoked_at)


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown only in this answer, stored only as a hash.")


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    next_cursor: str | None


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    key_id: str | None
    owner: str | None
    method: str
    route: str
    object_id: str | None
    status_code: int
    outcome: Literal["succeeded", "denied", "limited", "refused", "failed"]
    client: str | None


class AuditPublic(BaseModel):
    data: list[AuditEventPublic]
    next_cursor: str | None

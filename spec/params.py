"""Base for the typed, bounded parameter models of every registry entry."""

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Parameters of one registry entry: unknown fields are rejected, every number is bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """An entry that takes no parameters."""

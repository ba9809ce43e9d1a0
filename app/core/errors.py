"""Domain errors raised by service code; app.web.errors maps each to one HTTP status in one table."""


class DomainError(Exception):
    """An error whose message is meant for the person who made the request."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Headers its answer carries (app.web.errors)."""
        return {}


class NotFound(DomainError):
    """No such resource for this owner (another owner's resources are not found either)."""


class Conflict(DomainError):
    """The resource is in a state that does not allow the request (e.g. cancelling a finished job)."""


class InvalidSpec(DomainError):
    """A request body or parameter that passed parsing but breaks a rule."""


class BadCursor(DomainError):
    """A pagination cursor that this API did not hand out."""


class PayloadTooLarge(DomainError):
    """Too many bytes, files or pixels in one request."""


class UnsupportedMedia(DomainError):
    """An upload that is not in a format we can read (e.g. not an image)."""


class MalformedRequest(DomainError):
    """A request body that cannot be parsed at all (e.g. broken multipart framing)."""


class BadImage(DomainError):
    """An upload in a known format whose content is broken (e.g. a truncated PNG)."""


class Unavailable(DomainError):
    """A backing service (database, Redis, the job queue) cannot be reached right now."""


class Unauthorized(DomainError):
    """No API key, or one that is unknown or revoked (401, with WWW-Authenticate)."""

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="taas"'}


class Forbidden(DomainError):
    """A valid key without the right to this route (admin routes)."""


class TooManyRequests(DomainError):
    """Over a quota or a rate limit: 429 with Retry-After."""

    def __init__(self, detail: str, *, retry_after: int):
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}

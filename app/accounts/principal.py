"""API keys and who a request is: `Authorization: Bearer <key>` -> a Principal (owner, admin, limits).

A key is "taas_" + 32 random bytes (URL-safe base64); the database keeps only its SHA-256, looked up on every
request (no cache: a revoked key fails the very next request, on every API process). The key travels only in
the Authorization header, never in a cookie or the URL, so a page on another site cannot make a browser send it.
"""

import hashlib
import secrets
from dataclasses import dataclass

from app.accounts.limits import EffectiveLimits

KEY_PREFIX = "taas_"
# Characters of a key shown in listings (the prefix and 7 of the random part).
SHOWN_CHARS = len(KEY_PREFIX) + 7
REALM = 'Bearer realm="taas"'


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the key (None when auth is off), its owner, whether it is an admin, its limits."""

    key_id: str | None
    owner: str
    admin: bool
    limits: EffectiveLimits

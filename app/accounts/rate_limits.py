"""Request rates per API key on the expensive routes, kept in Redis (the `limits` library's moving window), so
every API process and replica counts the same requests. Over the rate: 429 with Retry-After.

If Redis cannot be reached, requests go through unlimited (with a warning in the log): the limit protects the
service, and refusing all predictions because the counter is down would be the bigger outage."""

import logging
import math
import time
from typing import Literal

from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.accounts.limits import setting_name
from app.accounts.principal import Principal
from app.core.config import Settings, parse_rate
from app.core.errors import TooManyRequests
from app.core.redis_client import timeouts
from app.core.redis_keys import RATE_KEY_PREFIX

RateKind = Literal["submit", "predict"]
ROUTES: dict[RateKind, str] = {
    "submit": "POST /jobs and POST /datasets",
    "predict": "POST /predict and POST /v2/models/{id}/infer",
}

log = logging.getLogger(__name__)


class RateLimits:
    def __init__(self, settings: Settings):
        self.storage = RedisStorage(f"async+{settings.redis_url}", implementation="redispy",
                                    key_prefix=RATE_KEY_PREFIX, wrap_exceptions=True, **timeouts(settings))
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def hit(self, principal: Principal, kind: RateKind) -> None:
        """Count one request of `kind` for the principal's key; TooManyRequests when over its rate."""
        text = getattr(principal.limits, f"{kind}_rate")
        rate = parse_rate(text)
        if rate is None:
            return
        who = principal.key_id or principal.owner
        try:
            if await self.limiter.hit(rate, kind, who):
                return
            stats = await self.limiter.get_window_stats(rate, kind, who)
        except (StorageError, RedisError, OSError) as e:
            log.warning("rate limit of %s not checked (Redis unreachable): %s", kind, e)
            return
        wait = math.ceil(stats.reset_time - time.time())
        raise TooManyRequests(
            f"rate limit reached: {rate} for {ROUTES[kind]} per API key (this key's {kind}_rate, by default "
            f"{setting_name(kind + '_rate')}); retry in {max(wait, 1)} s", retry_after=wait)

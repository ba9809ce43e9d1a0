"""Every Redis key of ours, in one place (the queues' are kombu's, named by app.core.queue): what the API and the
workers must spell alike."""

# Per job.


def stream_key(job_id: str) -> str:
    """The job's per-batch losses (a Redis Stream, app.core.loss_stream)."""
    return f"taas:job:{job_id}:loss"


def cancel_key(job_id: str) -> str:
    """Set by a cancel request; the running job's heartbeat polls it (worker.training.heartbeat)."""
    return f"taas:job:{job_id}:cancel"


def lease_key(job_id: str) -> str:
    """Holds the lease owner whose appends the job's stream accepts (app.core.loss_stream)."""
    return f"taas:job:{job_id}:lease"


def job_keys(job_id: str) -> tuple[str, str, str]:
    """Every key of a job (removed with it)."""
    return stream_key(job_id), cancel_key(job_id), lease_key(job_id)


# Per deployment (a queue prefix).


def workers_key(queue_prefix: str) -> str:
    """The sorted set of the workers' liveness beats (app.core.liveness)."""
    return f"taas:{queue_prefix}workers"


# Request rates per API key (app.accounts.rate_limits; the limits library appends its own parts).
RATE_KEY_PREFIX = "taas:rate"

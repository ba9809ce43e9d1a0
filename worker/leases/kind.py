"""What the lease machinery (worker.leases) needs to know of a pipeline's table."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement

# What a change writes besides the lease, given its time.
Values = Callable[[datetime], Mapping[str, Any]]


@dataclass(frozen=True)
class Rule:
    """One way a change to a leased row can go: where `when` holds (None: always), write values(now, row), where
    row holds the columns the reaper selected (id, attempt, max_attempts); `outcome` names it ("requeued" rows get
    their message again)."""

    outcome: str
    values: Callable[[datetime, Any], Mapping[str, Any]]
    when: ColumnElement[bool] | None = None


def _nothing(now: datetime) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class LeasedKind:
    """A table whose rows are leased to workers. Its rows have the columns id, lease_owner and lease_expires_at
    (set while a worker holds the lease, or held it until it expired), attempt, enqueued_at (when its message was
    last sent) and created_at.

    A row is `waiting` (in its queue, no lease) or `claimed` (under a lease, live or expired); a claim takes a
    waiting row, or a claimed one whose lease expired, with attempts left."""

    name: str  # for logs: "job", "dataset"
    entity: Any  # the ORM class
    task: str  # the task its messages name (app.core.queue)
    queue: Callable[[Any], str]  # the queue of a row (from the columns in `columns`)
    waiting: ColumnElement[bool]
    claimed: ColumnElement[bool]
    max_attempts: Any  # a column, or one number for every row
    on_claim: Values  # written by a claim, beside the lease and the attempt count
    # A row whose lease expired (its worker stopped responding), by the first rule that holds: e.g. ended as
    # cancelled, requeued while attempts are left, failed when none are.
    on_expiry: tuple[Rule, ...]
    # A row its worker gives back at shutdown, by the first rule that holds: e.g. ended as cancelled, else requeued
    # without counting the attempt.
    on_hand_back: tuple[Rule, ...]
    # Written when the worker records the outcome and releases the lease (e.g. finished_at).
    on_finish: Values
    # Written with an expired lease when a requeue's message could not be sent: the row is claimed-and-expired
    # again, for the next reap.
    on_unqueue: Values = _nothing
    # Further conditions of a claim (e.g. no cancel requested).
    claimable: tuple[ColumnElement[bool], ...] = ()
    # Columns the reaper selects for `queue`.
    columns: tuple[Any, ...] = ()
    # What to remove for rows the reaper ended other than by a requeue (their files), by id.
    cleanup: Callable[[str], None] | None = None
    ended_outcomes: frozenset[str] = field(default=frozenset({"failed", "cancelled"}))

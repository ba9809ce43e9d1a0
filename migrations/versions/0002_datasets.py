"""Uploaded datasets, and the dataset a job trains on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("archive_bytes", sa.BigInteger(), nullable=False),
        sa.Column("layout", sa.String(length=32), nullable=True),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.Column("splits", sa.JSON(), nullable=True),
        sa.Column("skipped", sa.JSON(), nullable=True),
        sa.Column("store_bytes", sa.BigInteger(), nullable=True),
        sa.Column("images_done", sa.Integer(), nullable=False),
        sa.Column("images_total", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", UTC_DATETIME, nullable=True),
        sa.Column("enqueued_at", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("ready_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_owner"), ["owner"], unique=False)
        batch_op.create_index("ix_datasets_owner_created", ["owner", "created_at", "id"], unique=False)
        batch_op.create_index("ix_datasets_status_lease", ["status", "lease_expires_at"], unique=False)
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("dataset_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("dataset_info", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_dataset_id"), ["dataset_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_dataset_id"))
        batch_op.drop_column("dataset_info")
        batch_op.drop_column("dataset_id")
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_index("ix_datasets_status_lease")
        batch_op.drop_index("ix_datasets_owner_created")
        batch_op.drop_index(batch_op.f("ix_datasets_owner"))
    op.drop_table("datasets")

"""Worker leases, calls held by a worker, post-call report jobs claimed row by row, and
recordings kept in the database (PostgreSQL deployments, where every worker must read them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer()),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("lease_expires_at", sa.Float(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("closed_by", sa.Text()),
        sa.Column("closed_at", sa.Float()),
        sa.CheckConstraint("state IN ('alive', 'draining', 'stopped', 'lost')", name="workers_state"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("workers_lease", "workers", ["state", "lease_expires_at"])
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("worker_id", sa.Text()))
    op.create_index("calls_open", "calls", ["worker_id", "ended_at"])
    op.create_table(
        "report_jobs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("subject_hash", sa.Text()),
        sa.Column("input_enc", sa.LargeBinary()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("claimed_until", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'running')", name="report_jobs_status"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "call_id"),
    )
    op.create_index("report_jobs_due", "report_jobs", ["status", "claimed_until"])
    op.create_index("report_jobs_subject", "report_jobs", ["tenant_id", "subject_hash"])
    op.create_index("report_jobs_expiry", "report_jobs", ["expires_at"])
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("location", sa.Text(), nullable=False, server_default="file"))
    op.create_table(
        "recording_chunks",
        sa.Column(
            "recording_id",
            sa.Text(),
            sa.ForeignKey("recordings.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("recording_id", "idx"),
    )


def downgrade() -> None:
    op.drop_table("recording_chunks")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("location")
    op.drop_index("report_jobs_expiry", table_name="report_jobs")
    op.drop_index("report_jobs_subject", table_name="report_jobs")
    op.drop_index("report_jobs_due", table_name="report_jobs")
    op.drop_table("report_jobs")
    op.drop_index("calls_open", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("worker_id")
    op.drop_index("workers_lease", table_name="workers")
    op.drop_table("workers")

"""Outbound campaigns: the campaigns, each contact's place in them, and every dial attempt.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("pipeline", sa.Text(), nullable=False),
        sa.Column("segment", sa.Text(), nullable=False),
        sa.Column("from_number", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_after_s", sa.Float(), nullable=False),
        sa.Column("start_at", sa.Float()),
        sa.Column("machine_action", sa.Text(), nullable=False, server_default="hangup"),
        sa.Column("voicemail_enc", sa.LargeBinary()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("paused_reason", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('draft', 'running', 'paused', 'done')", name="campaigns_status"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_table(
        "campaign_contacts",
        sa.Column("campaign_id", sa.Text(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("contact_id", sa.Text(), sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("phone_hash", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.Text()),
        sa.Column("last_reason", sa.Text()),
        sa.Column("last_attempt_id", sa.Text()),
        sa.Column("last_call_id", sa.Text()),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("claimed_until", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'dialing', 'done')", name="campaign_contacts_status"),
        sa.PrimaryKeyConstraint("campaign_id", "contact_id"),
    )
    op.create_index("campaign_contacts_due", "campaign_contacts", ["status", "next_attempt_at"])
    op.create_index("campaign_contacts_subject", "campaign_contacts", ["tenant_id", "phone_hash"])
    op.create_table(
        "call_attempts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("campaign_id", sa.Text(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("contact_id", sa.Text(), nullable=False),
        sa.Column("phone_hash", sa.Text(), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("provider_call_id", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text()),
        sa.Column("error_code", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column("call_id", sa.Text()),
        sa.Column("worker_id", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("answered_at", sa.Float()),
        sa.Column("ended_at", sa.Float()),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('dialing', 'ringing', 'answered', 'done')", name="call_attempts_status"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "contact_id", "attempt_no"),
    )
    op.create_index("call_attempts_subject", "call_attempts", ["tenant_id", "phone_hash", "created_at"])
    op.create_index("call_attempts_provider", "call_attempts", ["provider", "provider_call_id"])
    op.create_index("call_attempts_open", "call_attempts", ["campaign_id", "status"])


def downgrade() -> None:
    op.drop_table("call_attempts")
    op.drop_table("campaign_contacts")
    op.drop_table("campaigns")

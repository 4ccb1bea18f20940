"""One-time call tokens in the database, so a token minted by one worker's answer URL is
accepted by another worker's media stream, once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_tokens",
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("pipeline", sa.Text()),
        sa.Column("provider", sa.Text()),
        sa.Column("call_id", sa.Text()),
        sa.Column("numbers_enc", sa.LargeBinary()),
        sa.Column("caller_hash", sa.Text()),
        sa.Column("callee_hash", sa.Text()),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float()),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("call_tokens_call", "call_tokens", ["call_id"])
    op.create_index("call_tokens_expiry", "call_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("call_tokens_expiry", table_name="call_tokens")
    op.drop_index("call_tokens_call", table_name="call_tokens")
    op.drop_table("call_tokens")

"""Contact segments: the labels a tenant imports its contacts under (``contacts import --segment``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contact_segments",
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("contact_id", sa.Text(), sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("segment", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("contact_id", "segment"),
    )
    op.create_index("contact_segments_segment", "contact_segments", ["tenant_id", "segment"])


def downgrade() -> None:
    op.drop_index("contact_segments_segment", table_name="contact_segments")
    op.drop_table("contact_segments")

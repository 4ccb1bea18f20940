"""The audit chain's head row (one append order for every writer) and wrapped keys
(shared by every worker of a PostgreSQL deployment).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_GENESIS = "0" * 64


def upgrade() -> None:
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "wrapped_keys",
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    # The head of an existing chain: its last entry, and on SQLite the highest id ever given
    # (AUTOINCREMENT's sqlite_sequence), so entries deleted at the end before the upgrade are found.
    bind = op.get_bind()
    last = bind.execute(sa.text("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")).first()
    last_id, last_hash = (int(last[0]), str(last[1])) if last else (0, _GENESIS)
    if bind.dialect.name == "sqlite":
        seq = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'")).first()
        if seq is not None and int(seq[0]) > last_id:
            last_id, last_hash = int(seq[0]), "deleted"
    op.bulk_insert(head, [{"id": 1, "last_id": last_id, "last_hash": last_hash}])


def downgrade() -> None:
    op.drop_table("wrapped_keys")
    op.drop_table("audit_head")

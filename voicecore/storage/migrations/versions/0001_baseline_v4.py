"""Baseline: the schema version 4 of the code before Alembic (``PRAGMA user_version`` 4).

A SQLite file made by that code is recognised and stamped at this revision (its data kept);
a new database is built from it.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('tenant', sa.Text(), nullable=True),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('object_id', sa.Text(), nullable=True),
    sa.Column('prev_hash', sa.Text(), nullable=False),
    sa.Column('hash', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index('audit_log_tenant', 'audit_log', ['tenant_id', 'id'], unique=False)
    op.create_table('tenants',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('policy_yaml', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('api_keys',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('salt', sa.LargeBinary(), nullable=False),
    sa.Column('hash', sa.LargeBinary(), nullable=False),
    sa.Column('label', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.CheckConstraint("role IN ('admin', 'agent', 'analyst', 'viewer')", name='api_keys_role'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('api_keys_tenant', 'api_keys', ['tenant_id'], unique=False)
    op.create_table('calls',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=False),
    sa.Column('pipeline', sa.Text(), nullable=False),
    sa.Column('transport', sa.Text(), nullable=False),
    sa.Column('caller_enc', sa.LargeBinary(), nullable=True),
    sa.Column('callee_enc', sa.LargeBinary(), nullable=True),
    sa.Column('caller_hash', sa.Text(), nullable=True),
    sa.Column('callee_hash', sa.Text(), nullable=True),
    sa.Column('provider_ids', sa.Text(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('end_reason', sa.Text(), nullable=True),
    sa.Column('flags', sa.Text(), nullable=False),
    sa.Column('turn_count', sa.Integer(), nullable=False),
    sa.Column('optout', sa.Integer(), server_default='0', nullable=False),
    sa.Column('transcript_redacted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('stored_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'call_id')
    )
    op.create_index('calls_callee', 'calls', ['tenant_id', 'callee_hash'], unique=False)
    op.create_index('calls_caller', 'calls', ['tenant_id', 'caller_hash'], unique=False)
    op.create_index('calls_expiry', 'calls', ['expires_at'], unique=False)
    op.create_index('calls_started', 'calls', ['tenant_id', 'started_at'], unique=False)
    op.create_table('contacts',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('phone_hash', sa.Text(), nullable=False),
    sa.Column('fields_enc', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'phone_hash')
    )
    op.create_index('contacts_expiry', 'contacts', ['expires_at'], unique=False)
    op.create_table('exports',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('subject_hash', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('exports_expiry', 'exports', ['expires_at'], unique=False)
    op.create_index('exports_subject', 'exports', ['tenant_id', 'subject_hash'], unique=False)
    op.create_table('opt_outs',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('phone_hash', sa.Text(), nullable=False),
    sa.Column('phone_enc', sa.LargeBinary(), nullable=True),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'phone_hash')
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=True),
    sa.Column('subject_hash', sa.Text(), nullable=True),
    sa.Column('payload_enc', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('dispatched', sa.Integer(), server_default='0', nullable=False),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name='outbox_status'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    op.create_index('outbox_dispatch', 'outbox', ['dispatched', 'status'], unique=False)
    op.create_index('outbox_expiry', 'outbox', ['expires_at'], unique=False)
    op.create_index('outbox_pending', 'outbox', ['status', 'next_attempt_at'], unique=False)
    op.create_table('provider_credentials',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('provider', sa.Text(), nullable=False),
    sa.Column('secrets_enc', sa.LargeBinary(), nullable=False),
    sa.Column('account_id', sa.Text(), nullable=True),
    sa.Column('stream_key_id', sa.Text(), nullable=True),
    sa.Column('stream_salt', sa.LargeBinary(), nullable=True),
    sa.Column('stream_hash', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'provider'),
    sa.UniqueConstraint('stream_key_id')
    )
    op.create_index('provider_credentials_account', 'provider_credentials', ['provider', 'account_id'], unique=False)
    op.create_table('recordings',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=False),
    sa.Column('track', sa.Text(), nullable=False),
    sa.Column('subject_hash', sa.Text(), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sample_rate', sa.Integer(), nullable=False),
    sa.Column('channels', sa.Integer(), nullable=False),
    sa.Column('sample_width', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.Integer(), server_default='0', nullable=False),
    sa.Column('complete', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'call_id', 'track')
    )
    op.create_index('recordings_expiry', 'recordings', ['expires_at'], unique=False)
    op.create_index('recordings_subject', 'recordings', ['tenant_id', 'subject_hash'], unique=False)
    op.create_table('reports',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=False),
    sa.Column('subject_hash', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('body_enc', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.CheckConstraint("status IN ('ready', 'failed')", name='reports_status'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('reports_call', 'reports', ['tenant_id', 'call_id'], unique=False)
    op.create_index('reports_expiry', 'reports', ['expires_at'], unique=False)
    op.create_index('reports_subject', 'reports', ['tenant_id', 'subject_hash'], unique=False)
    op.create_table('restrictions',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('phone_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'phone_hash')
    )
    op.create_table('turns',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('call_id', sa.Text(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=True),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('interrupted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('text_enc', sa.LargeBinary(), nullable=True),
    sa.Column('generated_enc', sa.LargeBinary(), nullable=True),
    sa.Column('timeline', sa.Text(), nullable=True),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('text_expires_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'call_id', 'idx')
    )
    op.create_index('turns_expiry', 'turns', ['expires_at'], unique=False)
    op.create_index('turns_text_expiry', 'turns', ['text_expires_at'], unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('endpoint_id', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name='webhook_deliveries_status'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id', 'endpoint_id')
    )
    op.create_index('webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index('webhook_deliveries_endpoint', 'webhook_deliveries', ['tenant_id', 'endpoint_id'], unique=False)
    op.create_table('webhook_endpoints',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('events', sa.Text(), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=False),
    sa.Column('previous_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('previous_secret_until', sa.Float(), nullable=True),
    sa.Column('secret_rotated_at', sa.Float(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('active', sa.Integer(), server_default='1', nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('webhook_endpoints_tenant', 'webhook_endpoints', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_table('webhook_endpoints')
    op.drop_table('webhook_deliveries')
    op.drop_table('turns')
    op.drop_table('restrictions')
    op.drop_table('reports')
    op.drop_table('recordings')
    op.drop_table('provider_credentials')
    op.drop_table('outbox')
    op.drop_table('opt_outs')
    op.drop_table('exports')
    op.drop_table('contacts')
    op.drop_table('calls')
    op.drop_table('api_keys')
    op.drop_table('tenants')
    op.drop_table('audit_log')

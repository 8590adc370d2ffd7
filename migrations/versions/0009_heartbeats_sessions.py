"""worker heartbeats; admin sessions that end on sign-out; deactivated accounts

Revision ID: 0009_heartbeats_sessions
Revises: 0008_bounce_events
Create Date: 2026-12-02 09:00:00.000000

"""
import secrets

from alembic import op
import sqlalchemy as sa


revision = '0009_heartbeats_sessions'
down_revision = '0008_bounce_events'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('worker_heartbeat',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_heartbeat')),
    sa.UniqueConstraint('name', name=op.f('uq_worker_heartbeat_name'))
    )
    with op.batch_alter_table('worker_heartbeat', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_heartbeat_seen_at'), ['seen_at'], unique=False)

    # Existing accounts get a random token each; cookies issued before (plain ids) stop working.
    with op.batch_alter_table('admin_user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_token', sa.String(length=32), nullable=False, server_default='migrated'))
        batch_op.add_column(sa.Column('active', sa.Boolean(), nullable=False, server_default=sa.true()))
    conn = op.get_bind()
    for (user_id,) in conn.execute(sa.text("SELECT id FROM admin_user")).all():
        conn.execute(
            sa.text("UPDATE admin_user SET session_token = :token WHERE id = :id"),
            {"token": secrets.token_urlsafe(12), "id": user_id},
        )
    with op.batch_alter_table('admin_user', schema=None) as batch_op:
        batch_op.alter_column('session_token', server_default=None)
        batch_op.alter_column('active', server_default=None)


def downgrade():
    with op.batch_alter_table('admin_user', schema=None) as batch_op:
        batch_op.drop_column('active')
        batch_op.drop_column('session_token')

    with op.batch_alter_table('worker_heartbeat', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeat_seen_at'))

    op.drop_table('worker_heartbeat')

"""sent outbox mails found by their Message-ID without reading the whole outbox

Revision ID: 0018_bounce_indexes
Revises: 0017_signup_queue
Create Date: 2026-12-05 11:20:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0018_bounce_indexes'
down_revision = "0017_signup_queue"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.create_index(
            'ix_outbox_message_key',
            ['message_key'],
            unique=False,
            sqlite_where=sa.text("status = 'sent'"),
            postgresql_where=sa.text("status = 'sent'"),
        )


def downgrade():
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_message_key')

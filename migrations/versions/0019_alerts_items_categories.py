"""breaking alerts: when an alert item was taken for mailing, and the feed categories each
list reads as breaking news

Revision ID: 0019_alerts_items_categories
Revises: 0019_freq_editions
Create Date: 2026-12-05 14:10:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0019_alerts_items_categories'
down_revision = '0019_freq_editions'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('alerted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_item_alert_pending', ['alert', 'alerted_at'], unique=False)
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('alert_categories', sa.String(length=500), nullable=False, server_default='')
        )


def downgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('alert_categories')
    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.drop_index('ix_item_alert_pending')
        batch_op.drop_column('alerted_at')

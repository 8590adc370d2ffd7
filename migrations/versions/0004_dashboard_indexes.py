"""indexes for the dashboard's counts

Revision ID: 0004_dashboard_indexes
Revises: 0003_suppression_audit_import
Create Date: 2026-11-25 04:30:00

"""
from alembic import op


revision = '0004_dashboard_indexes'
down_revision = '0003_suppression_audit_import'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('subscription', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_newsletter_subscribed', ['newsletter_id', 'subscribed_at'], unique=False)
        batch_op.create_index('ix_subscription_newsletter_confirmed', ['newsletter_id', 'status', 'confirmed_at'], unique=False)
        batch_op.create_index('ix_subscription_newsletter_unsubscribed', ['newsletter_id', 'unsubscribed_at', 'status', 'confirmed_at'], unique=False)


def downgrade():
    with op.batch_alter_table('subscription', schema=None) as batch_op:
        batch_op.drop_index('ix_subscription_newsletter_unsubscribed')
        batch_op.drop_index('ix_subscription_newsletter_confirmed')
        batch_op.drop_index('ix_subscription_newsletter_subscribed')

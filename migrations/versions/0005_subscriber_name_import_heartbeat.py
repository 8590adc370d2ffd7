"""subscriber names; import jobs' heartbeat

Revision ID: 0005_subscriber_name_heartbeat
Revises: 0004_dashboard_indexes
Create Date: 2026-11-25 05:30:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0005_subscriber_name_heartbeat'
down_revision = '0004_dashboard_indexes'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=200), nullable=True))
    with op.batch_alter_table('import_job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('import_job', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('name')

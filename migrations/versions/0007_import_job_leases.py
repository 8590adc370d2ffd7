"""import jobs are claimed with a lease, as outbox mails and digest deliveries are

Revision ID: 0007_import_job_leases
Revises: 0006_digests
Create Date: 2026-12-05 08:00:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0007_import_job_leases'
down_revision = '0006_digests'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('import_job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
    # Queued jobs are due at once; a running job's lease ends five minutes after its last
    # heartbeat, as its worker's would.
    op.execute("UPDATE import_job SET next_attempt_at = created_at")
    if op.get_bind().dialect.name == 'postgresql':
        later = "heartbeat_at + interval '5 minutes'"
    else:
        later = "strftime('%Y-%m-%d %H:%M:%S.000000', heartbeat_at, '+5 minutes')"
    op.execute(
        f"UPDATE import_job SET next_attempt_at = {later}"
        " WHERE status = 'running' AND heartbeat_at IS NOT NULL"
    )
    with op.batch_alter_table('import_job', schema=None) as batch_op:
        batch_op.alter_column('next_attempt_at', nullable=False)


def downgrade():
    with op.batch_alter_table('import_job', schema=None) as batch_op:
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('claim')

"""a newsletter's archive of sent editions: public, or for its readers only

Revision ID: 0019_archive_public
Revises: 0019_frequencies
Create Date: 2026-12-05 14:00:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0019_archive_public'
down_revision = '0019_frequencies'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('archive_public', sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('archive_public')

"""how often readers hear from a list: its offered frequencies, each subscription's choice,
one combined mail per edition, picks and alerts among the items, and each digest's edition

Revision ID: 0019_frequencies
Revises: 0018_bounce_indexes
Create Date: 2026-12-05 14:00:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0019_frequencies'
down_revision = '0018_bounce_indexes'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('frequencies', sa.String(length=32), nullable=False, server_default='')
        )
        batch_op.add_column(sa.Column('default_frequency', sa.String(length=8), nullable=True))
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('combined', sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table('subscription', schema=None) as batch_op:
        batch_op.add_column(sa.Column('frequency', sa.String(length=8), nullable=True))
    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pick', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(
            sa.Column('alert', sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.add_column(sa.Column('frequency', sa.String(length=8), nullable=True))


def downgrade():
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.drop_column('frequency')
    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.drop_column('alert')
        batch_op.drop_column('pick')
    with op.batch_alter_table('subscription', schema=None) as batch_op:
        batch_op.drop_column('frequency')
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('combined')
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('default_frequency')
        batch_op.drop_column('frequencies')

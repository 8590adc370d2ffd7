"""a proof of work (ALTCHA) asked for by a newsletter's boxes, off for every list

Revision ID: 0014_altcha
Revises: 0011_newsletter_texts
Create Date: 2026-12-06 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = '0014_altcha'
down_revision = '0011_newsletter_texts'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(sa.Column('altcha', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('altcha')

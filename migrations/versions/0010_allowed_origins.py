"""host sites an admin allows to embed the signup boxes

Revision ID: 0010_allowed_origins
Revises: 0009_heartbeats_sessions
Create Date: 2026-12-02 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = '0010_allowed_origins'
down_revision = '0009_heartbeats_sessions'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('allowed_origin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('origin', sa.String(length=300), nullable=False),
    sa.Column('note', sa.String(length=200), nullable=False),
    sa.Column('added_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['added_by_id'], ['admin_user.id'], name=op.f('fk_allowed_origin_added_by_id_admin_user'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_allowed_origin')),
    sa.UniqueConstraint('origin', name=op.f('uq_allowed_origin_origin'))
    )


def downgrade():
    op.drop_table('allowed_origin')

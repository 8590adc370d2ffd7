"""admin users

Revision ID: 0002_admin_users
Revises: 88b1d1633c04
Create Date: 2026-11-25 04:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0002_admin_users'
down_revision = '88b1d1633c04'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('admin_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_user')),
    sa.UniqueConstraint('email', name=op.f('uq_admin_user_email'))
    )


def downgrade():
    op.drop_table('admin_user')

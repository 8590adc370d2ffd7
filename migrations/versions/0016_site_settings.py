"""the site's brand: name, logo, accent colour, home page, postal address, default sender

Revision ID: 0016_site_settings
Revises: 0014_altcha
Create Date: 2026-12-06 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = '0016_site_settings'
down_revision = '0014_altcha'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('site_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('logo_url', sa.String(length=1000), nullable=False),
    sa.Column('accent_colour', sa.String(length=7), nullable=False),
    sa.Column('home_url', sa.String(length=1000), nullable=False),
    sa.Column('postal_address', sa.String(length=500), nullable=False),
    sa.Column('from_name', sa.String(length=100), nullable=False),
    sa.Column('from_address', sa.String(length=254), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['updated_by_id'], ['admin_user.id'], name=op.f('fk_site_settings_updated_by_id_admin_user'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_site_settings'))
    )


def downgrade():
    op.drop_table('site_settings')

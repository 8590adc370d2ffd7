"""a newsletter's own texts in more languages

Revision ID: 0011_newsletter_texts
Revises: 0010_allowed_origins
Create Date: 2026-12-05 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = '0011_newsletter_texts'
down_revision = '0010_allowed_origins'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('newsletter_text',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('newsletter_id', sa.Integer(), nullable=False),
    sa.Column('locale', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('prompt_text', sa.String(length=200), nullable=False),
    sa.Column('button_text', sa.String(length=60), nullable=False),
    sa.Column('thanks_text', sa.String(length=500), nullable=False),
    sa.Column('welcome_text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['newsletter_id'], ['newsletter.id'], name=op.f('fk_newsletter_text_newsletter_id_newsletter'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_newsletter_text')),
    sa.UniqueConstraint('newsletter_id', 'locale', name=op.f('uq_newsletter_text_newsletter_id'))
    )


def downgrade():
    op.drop_table('newsletter_text')

"""the daily and weekly editions a list offers besides its cadence's, each with its own
schedule, and the weekly edition's cap on items

Revision ID: 0019_freq_editions
Revises: 0019_archive_public
Create Date: 2026-12-05 15:00:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0019_freq_editions'
down_revision = '0019_archive_public'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'edition',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('newsletter_id', sa.Integer(), nullable=False),
        sa.Column('frequency', sa.String(length=8), nullable=False),
        sa.Column('send_time', sa.String(length=5), nullable=False),
        sa.Column('timezone', sa.String(length=64), nullable=False),
        sa.Column('send_weekday', sa.Integer(), nullable=False),
        sa.Column('auto_digest', sa.String(length=8), nullable=False),
        sa.Column('next_digest_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['newsletter_id'], ['newsletter.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('newsletter_id', 'frequency'),
    )
    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_edition_next_digest_at'), ['next_digest_at'], unique=False
        )
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('weekly_max_items', sa.Integer(), nullable=False, server_default='10')
        )


def downgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('weekly_max_items')
    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edition_next_digest_at'))
    op.drop_table('edition')

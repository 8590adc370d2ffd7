"""the site's combined daily and weekly editions: a digest may carry several lists

Revision ID: 0019_combined_editions
Revises: 0019_alerts_items_categories
Create Date: 2026-12-05 14:05:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0019_combined_editions'
down_revision = '0019_alerts_items_categories'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.alter_column('newsletter_id', existing_type=sa.Integer(), nullable=True)
    op.create_table(
        'digest_newsletter',
        sa.Column('digest_id', sa.Integer(), nullable=False),
        sa.Column('newsletter_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['newsletter_id'], ['newsletter.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('digest_id', 'newsletter_id'),
    )
    edition = op.create_table(
        'combined_edition',
        sa.Column('frequency', sa.String(length=8), nullable=False),
        sa.Column('automatic', sa.Boolean(), nullable=False),
        sa.Column('send_time', sa.String(length=5), nullable=False),
        sa.Column('timezone', sa.String(length=64), nullable=False),
        sa.Column('send_weekday', sa.Integer(), nullable=False),
        sa.Column('next_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('frequency'),
    )
    # On, at 07:00 UTC (weekly: Mondays): a reader who ticks "combined" is never left
    # without mail. The worker sets next_at when it first sees a row without one.
    op.bulk_insert(
        edition,
        [
            {'frequency': f, 'automatic': True, 'send_time': '07:00', 'timezone': 'UTC',
             'send_weekday': 0, 'next_at': None}
            for f in ('daily', 'weekly')
        ],
    )


def downgrade():
    op.drop_table('combined_edition')
    op.drop_table('digest_newsletter')
    op.execute('DELETE FROM digest WHERE newsletter_id IS NULL')
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.alter_column('newsletter_id', existing_type=sa.Integer(), nullable=False)

"""returned mail and complaints: bounce events; suppressions keep a masked address to list

Revision ID: 0008_bounce_events
Revises: 0007_import_job_leases
Create Date: 2026-12-05 08:30:00

"""
import sqlalchemy as sa
from alembic import op


revision = '0008_bounce_events'
down_revision = '0007_import_job_leases'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('bounce_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('subscriber_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('diagnostic', sa.Text(), nullable=True),
    sa.Column('newsletter_id', sa.Integer(), nullable=True),
    sa.Column('digest_id', sa.Integer(), nullable=True),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('outbox_message_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=True),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['delivery.id'], name=op.f('fk_bounce_event_delivery_id_delivery'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], name=op.f('fk_bounce_event_digest_id_digest'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['newsletter_id'], ['newsletter.id'], name=op.f('fk_bounce_event_newsletter_id_newsletter'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['outbox_message_id'], ['outbox_message.id'], name=op.f('fk_bounce_event_outbox_message_id_outbox_message'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['subscriber_id'], ['subscriber.id'], name=op.f('fk_bounce_event_subscriber_id_subscriber'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bounce_event')),
    sa.UniqueConstraint('event_id', name=op.f('uq_bounce_event_event_id'))
    )
    with op.batch_alter_table('bounce_event', schema=None) as batch_op:
        batch_op.create_index('ix_bounce_event_address_created', ['email_hash', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_event_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_event_digest_id'), ['digest_id'], unique=False)
        batch_op.create_index('ix_bounce_event_newsletter_created', ['newsletter_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_event_outbox_message_id'), ['outbox_message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounce_event_subscriber_id'), ['subscriber_id'], unique=False)


    with op.batch_alter_table('suppression', schema=None) as batch_op:
        batch_op.add_column(sa.Column('masked', sa.String(length=254), nullable=True))


def downgrade():
    with op.batch_alter_table('suppression', schema=None) as batch_op:
        batch_op.drop_column('masked')
    op.drop_table('bounce_event')

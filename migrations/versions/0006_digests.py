"""digests, their ledger and items; API tokens; cadence settings

Revision ID: 0006_digests
Revises: 0005_subscriber_name_heartbeat
Create Date: 2026-11-25 05:13:45.383590

"""
from alembic import op
import sqlalchemy as sa


revision = '0006_digests'
down_revision = '0005_subscriber_name_heartbeat'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('admin_user_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['admin_user_id'], ['admin_user.id'], name=op.f('fk_api_token_admin_user_id_admin_user'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_token_token_hash'))
    )
    op.create_table('digest',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('newsletter_id', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('intro', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('automatic', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('message_key', sa.String(length=32), nullable=False),
    sa.Column('recipients', sa.Integer(), nullable=False),
    sa.Column('sent_count', sa.Integer(), nullable=False),
    sa.Column('failed_count', sa.Integer(), nullable=False),
    sa.Column('skipped_count', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['admin_user.id'], name=op.f('fk_digest_created_by_admin_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['newsletter_id'], ['newsletter.id'], name=op.f('fk_digest_newsletter_id_newsletter'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_digest'))
    )
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.create_index('ix_digest_newsletter_status', ['newsletter_id', 'status'], unique=False)

    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest_id', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claim', sa.String(length=32), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], name=op.f('fk_delivery_digest_id_digest'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subscription_id'], ['subscription.id'], name=op.f('fk_delivery_subscription_id_subscription'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery')),
    sa.UniqueConstraint('digest_id', 'subscription_id', name=op.f('uq_delivery_digest_id'))
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_due', ['digest_id', 'status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_subscription_id'), ['subscription_id'], unique=False)

    op.create_table('digest_item',
    sa.Column('digest_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['digest_id'], ['digest.id'], name=op.f('fk_digest_item_digest_id_digest'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['item_id'], ['item.id'], name=op.f('fk_digest_item_item_id_item'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('digest_id', 'item_id', name=op.f('pk_digest_item'))
    )
    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=16), nullable=False, server_default='admin'))
        batch_op.create_unique_constraint(batch_op.f('uq_item_url'), ['url'])

    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.add_column(sa.Column('send_time', sa.String(length=5), nullable=False, server_default='08:00'))
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=False, server_default='UTC'))
        batch_op.add_column(sa.Column('send_weekday', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('auto_digest', sa.String(length=8), nullable=False, server_default='off'))
        batch_op.add_column(sa.Column('next_digest_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('feed_url', sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column('feed_checked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('feed_error', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('newsletter', schema=None) as batch_op:
        batch_op.drop_column('feed_error')
        batch_op.drop_column('feed_checked_at')
        batch_op.drop_column('feed_url')
        batch_op.drop_column('next_digest_at')
        batch_op.drop_column('auto_digest')
        batch_op.drop_column('send_weekday')
        batch_op.drop_column('timezone')
        batch_op.drop_column('send_time')

    with op.batch_alter_table('item', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_item_url'), type_='unique')
        batch_op.drop_column('source')

    op.drop_table('digest_item')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_subscription_id'))
        batch_op.drop_index('ix_delivery_due')

    op.drop_table('delivery')
    with op.batch_alter_table('digest', schema=None) as batch_op:
        batch_op.drop_index('ix_digest_newsletter_status')

    op.drop_table('digest')
    op.drop_table('api_token')

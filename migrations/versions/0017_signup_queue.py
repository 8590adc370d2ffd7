"""the signup queue the worker applies, and each subscriber's mailbox for the confirmation limit

Revision ID: 0017_signup_queue
Revises: 0016_site_settings
Create Date: 2026-12-05 11:00:00.000000

"""

from alembic import op
import sqlalchemy as sa

from newsletter.addresses import mailbox_key


revision = "0017_signup_queue"
down_revision = "0016_site_settings"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "signup_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("email_key", sa.String(length=254), nullable=False),
        sa.Column("newsletters", sa.JSON(), nullable=False),
        sa.Column("locale", sa.String(length=16), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signup_queue_due", "signup_queue", ["status", "next_attempt_at"])
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mailbox_key", sa.String(length=254), nullable=True))
        batch_op.create_index("ix_subscriber_mailbox_key", ["mailbox_key"], unique=False)
    # Every address there is gets its mailbox, so the limit counts its earlier mails too.
    subscriber = sa.table(
        "subscriber",
        sa.column("id", sa.Integer),
        sa.column("email_key", sa.String),
        sa.column("mailbox_key", sa.String),
    )
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(subscriber.c.id, subscriber.c.email_key)
            .where(subscriber.c.id > last)
            .order_by(subscriber.c.id)
            .limit(1000)
        ).all()
        if not rows:
            break
        conn.execute(
            subscriber.update()
            .where(subscriber.c.id == sa.bindparam("row_id"))
            .values(mailbox_key=sa.bindparam("key")),
            [{"row_id": row.id, "key": mailbox_key(row.email_key)} for row in rows],
        )
        last = rows[-1].id


def downgrade():
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriber_mailbox_key")
        batch_op.drop_column("mailbox_key")
    op.drop_index("ix_signup_queue_due", table_name="signup_queue")
    op.drop_table("signup_queue")

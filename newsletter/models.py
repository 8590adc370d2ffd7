"""Database tables."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.extensions import db


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_nonce() -> str:
    """A fresh random value that invalidates links signed with the previous one."""
    return secrets.token_urlsafe(12)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes in UTC and hands them back aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None:
            # SQLite hands back naive values; PostgreSQL aware ones in the session's zone.
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


# The texts of the signup boxes on the site this service was first built for.
DEFAULT_PROMPT = "Enter your email to subscribe"
DEFAULT_BUTTON = "Subscribe"
DEFAULT_THANKS = (
    "Thank you for signing up for this newsletter. We\u2019ve sent you a confirmation email."
)


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class ConsentAction(enum.StrEnum):
    SIGNUP = "signup"
    CONFIRMATION_SENT = "confirmation_sent"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    # The reader chose how often to hear from the list, or one combined mail for all.
    FREQUENCY_CHANGED = "frequency_changed"
    COMBINED_CHANGED = "combined_changed"
    # What came back: not the reader's choice, but it changes what they get.
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINED = "complained"


class BounceKind(enum.StrEnum):
    HARD = "hard"  # 5.x.x: the address does not take mail
    SOFT = "soft"  # 4.x.x: not now (full, greylisted, down)
    COMPLAINT = "complaint"  # the reader marked a mail as spam


class SignupStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for the worker, or held by one under a lease
    FAILED = "failed"  # the rules could not be applied, its attempts used up


class OutboxStatus(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything, accounts and imports included
    EDITOR = "editor"  # newsletters, items and digests


class SuppressionReason(enum.StrEnum):
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    ERASED = "erased"


class ImportMode(enum.StrEnum):
    CONFIRM = "confirm"  # rows become pending and get the double opt-in mail
    CONSENTED = "consented"  # consent was given elsewhere: rows become confirmed


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class MailKind(enum.StrEnum):
    CONFIRMATION = "confirmation"
    WELCOME = "welcome"
    DIGEST_TEST = "digest_test"  # an editor's "Send a test to me"
    LEAVE_LINK = "leave_link"  # the unsubscribe link, for a reader who wrote to ask


class DigestStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"  # claimed by a worker until its lease runs out
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # the reader left, or the digest was cancelled, before it went


class AutoDigest(enum.StrEnum):
    OFF = "off"
    DRAFT = "draft"  # the cadence composes a draft for an editor to review
    SEND = "send"  # the cadence composes and sends


class Newsletter(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    cadence: Mapped[str] = mapped_column(String(32), default="weekly")
    from_name: Mapped[str | None] = mapped_column(String(200))
    from_address: Mapped[str | None] = mapped_column(String(254))
    reply_to: Mapped[str | None] = mapped_column(String(254))
    prompt_text: Mapped[str] = mapped_column(String(200), default=DEFAULT_PROMPT)
    button_text: Mapped[str] = mapped_column(String(60), default=DEFAULT_BUTTON)
    thanks_text: Mapped[str] = mapped_column(String(500), default=DEFAULT_THANKS)
    welcome_text: Mapped[str] = mapped_column(Text, default="")
    welcome_enabled: Mapped[bool] = mapped_column(default=True)
    archived: Mapped[bool] = mapped_column(default=False)
    position: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The cadence's moment: HH:MM in `timezone`; weekly on `send_weekday` (0 = Monday),
    # monthly on the first day of the month.
    send_time: Mapped[str] = mapped_column(String(5), default="08:00")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_weekday: Mapped[int] = mapped_column(default=0)
    auto_digest: Mapped[AutoDigest] = mapped_column(String(8), default=AutoDigest.OFF)
    # When the worker next composes a digest on the cadence; None while automation is off.
    next_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A feed of the site's news the worker pulls on the cadence, before composing.
    feed_url: Mapped[str | None] = mapped_column(String(1000))
    feed_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    feed_error: Mapped[str | None] = mapped_column(Text)
    # Its boxes ask the reader's browser for a proof of work (ALTCHA) before a signup counts.
    altcha: Mapped[bool] = mapped_column(default=False)
    # How often readers may choose to hear from it (newsletter/frequencies.py): a comma-
    # separated choice of alert, daily and weekly; empty offers no choice, only the cadence.
    frequencies: Mapped[str] = mapped_column(String(32), default="")
    # The choice preselected in a box; None means the cadence.
    default_frequency: Mapped[str | None] = mapped_column(String(8))
    # Its sent editions are on the web for anyone; when not, a reader's signed link opens them.
    archive_public: Mapped[bool] = mapped_column(default=True)
    # How many items the weekly edition carries at most, the editor's picks first.
    weekly_max_items: Mapped[int] = mapped_column(default=10)

    # The schedules of its other editions (the cadence's edition uses the fields above).
    editions: Mapped[list[Edition]] = relationship(
        back_populates="newsletter", cascade="all, delete-orphan", order_by="Edition.frequency"
    )
    # Categories of its feed's entries that mark breaking news (comma-separated, any case).
    alert_categories: Mapped[str] = mapped_column(String(500), default="")

    def __repr__(self) -> str:
        return f"<Newsletter {self.slug}>"


class Edition(db.Model):
    """A daily or weekly edition a list offers besides its cadence's, with its own schedule.

    The cadence's edition keeps the list's own schedule fields; each other one has a row.
    """

    __table_args__ = (UniqueConstraint("newsletter_id", "frequency"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    frequency: Mapped[str] = mapped_column(String(8))
    send_time: Mapped[str] = mapped_column(String(5), default="08:00")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_weekday: Mapped[int] = mapped_column(default=0)
    auto_digest: Mapped[AutoDigest] = mapped_column(String(8), default=AutoDigest.OFF)
    # When the worker next composes this edition; None while automation is off.
    next_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    newsletter: Mapped[Newsletter] = relationship(back_populates="editions")

    def __repr__(self) -> str:
        return f"<Edition {self.newsletter_id} {self.frequency}>"


class Subscriber(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    # As the reader typed it, normalised by email-validator (Unicode domain, lowercased).
    email: Mapped[str] = mapped_column(String(254))
    # Lowercased copy: Reader@Example.COM and reader@example.com are one person.
    email_key: Mapped[str] = mapped_column(String(254), unique=True)
    # The mailbox the address reaches, its variants folded (`addresses.mailbox_key`): the
    # confirmation limit counts per mailbox. None for rows an import wrote.
    mailbox_key: Mapped[str | None] = mapped_column(String(254), index=True)
    # How the reader is addressed, when an import or the admin gave a name.
    name: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(16))
    # One mail per edition for every list they follow at that frequency, not one per list.
    combined: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Part of every link for this person, so a reused row id cannot inherit old links.
    token_key: Mapped[str] = mapped_column(String(32), default=lambda: secrets.token_urlsafe(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Subscriber {self.id}>"


class Subscription(db.Model):
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter_id"),
        Index("ix_subscription_newsletter_status", "newsletter_id", "status"),
        # The dashboard counts index ranges, never rows: signups, confirmations and
        # departures per list and day (see newsletter/stats.py).
        Index("ix_subscription_newsletter_subscribed", "newsletter_id", "subscribed_at"),
        Index("ix_subscription_newsletter_confirmed", "newsletter_id", "status", "confirmed_at"),
        Index(
            "ix_subscription_newsletter_unsubscribed",
            "newsletter_id",
            "unsubscribed_at",
            "status",
            "confirmed_at",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    status: Mapped[SubscriptionStatus] = mapped_column(
        String(16), default=SubscriptionStatus.PENDING
    )
    nonce: Mapped[str] = mapped_column(String(32), default=new_nonce)
    source: Mapped[str | None] = mapped_column(String(100))
    subscribed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The reader's choice among the list's frequencies; None keeps the list's cadence.
    frequency: Mapped[str | None] = mapped_column(String(8))

    # Joined: nearly every use of a subscription needs its list's name or its reader's address.
    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions", lazy="joined")
    newsletter: Mapped[Newsletter] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<Subscription {self.subscriber_id}->{self.newsletter_id} {self.status}>"


class ConsentEvent(db.Model):
    """Append-only trail of what each reader agreed to, when, and from where."""

    __table_args__ = (Index("ix_consent_event_subscription", "subscription_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscription.id", ondelete="CASCADE"))
    action: Mapped[ConsentAction] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    source: Mapped[str | None] = mapped_column(String(100))
    text_shown: Mapped[str | None] = mapped_column(Text)

    subscription: Mapped[Subscription] = relationship()

    def __repr__(self) -> str:
        return f"<ConsentEvent {self.subscription_id} {self.action}>"


class OutboxMessage(db.Model):
    """A transactional mail, written with the change that causes it and sent by the worker."""

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient", "subscriber_id", "kind", "created_at"),
        # Returned mail and providers' events name an outbox mail by its Message-ID; only sent
        # mail comes back, and leaving queued rows out keeps an import's million confirmations
        # from writing this (random) index as they are queued.
        Index(
            "ix_outbox_message_key",
            "message_key",
            sqlite_where=text("status = 'sent'"),
            postgresql_where=text("status = 'sent'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[MailKind] = mapped_column(String(32))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL")
    )
    to_address: Mapped[str] = mapped_column(String(254))
    payload: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    # Left part of the Message-ID, fixed at queue time so every retry carries the same one.
    message_key: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(16))
    status: Mapped[OutboxStatus] = mapped_column(String(16), default=OutboxStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    # Doubles as the claim lease: a claiming worker moves it past the time it needs.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Which claim holds the row: a worker sends only rows still holding its own claim.
    claim: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriber: Mapped[Subscriber | None] = relationship()

    def __repr__(self) -> str:
        return f"<OutboxMessage {self.id} {self.kind} {self.status}>"


class QueuedSignup(db.Model):
    """A signup as the request took it, waiting for the worker to apply the rules to it.

    Holds the consent evidence of the moment (address, lists and the box texts shown, IP,
    user agent, source, language, time); the row goes once the worker has applied it.
    """

    __tablename__ = "signup_queue"
    __table_args__ = (Index("ix_signup_queue_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))  # normalised, as the reader typed it
    email_key: Mapped[str] = mapped_column(String(254))
    # [[newsletter id, the text the box showed], ...] in the site's order.
    newsletters: Mapped[list[list[object]]] = mapped_column(JSON)
    locale: Mapped[str | None] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    source: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[SignupStatus] = mapped_column(String(16), default=SignupStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    # Doubles as the claim lease, as in the outbox.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claim: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<QueuedSignup {self.id} {self.status}>"


item_newsletter = Table(
    "item_newsletter",
    db.Model.metadata,
    Column("item_id", ForeignKey("item.id", ondelete="CASCADE"), primary_key=True),
    Column("newsletter_id", ForeignKey("newsletter.id", ondelete="CASCADE"), primary_key=True),
)


class Item(db.Model):
    """A news item of the site, material for digests."""

    # The alert runner's look for breaking items not yet taken.
    __table_args__ = (Index("ix_item_alert_pending", "alert", "alerted_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    guid: Mapped[str] = mapped_column(String(500), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    # One item per story: a second post of the same link is the same item.
    url: Mapped[str | None] = mapped_column(String(1000), unique=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # api, feed, admin or demo: where the item came from.
    source: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An editor's pick: first in a weekly edition.
    pick: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Breaking news: mailed at once to the readers who chose alerts.
    alert: Mapped[bool] = mapped_column(default=False, server_default=false())
    # When a worker took the alert to mail it: it is taken once, by one worker.
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Selectin: a page of items shows their lists without a query per item.
    newsletters: Mapped[list[Newsletter]] = relationship(secondary=item_newsletter, lazy="selectin")

    def __repr__(self) -> str:
        return f"<Item {self.guid}>"


class AdminUser(UserMixin, db.Model):
    """Someone who signs in to the admin area."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(String(16), default=Role.EDITOR)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Part of every session cookie's user id: a new value (sign-out, new password,
    # deactivation) makes every cookie issued before it open nothing.
    session_token: Mapped[str] = mapped_column(String(32), default=new_nonce)
    active: Mapped[bool] = mapped_column(default=True)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    def __repr__(self) -> str:
        return f"<AdminUser {self.email} {self.role}>"


class Suppression(db.Model):
    """An address never to be mailed or imported again, kept only as a hash."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the lowercased address: enough to recognise it, not to read it back.
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Enough of the address for a list of suppressions (j***@example.org), no more.
    masked: Mapped[str | None] = mapped_column(String(254))
    reason: Mapped[SuppressionReason] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<Suppression {self.reason}>"


class AuditEvent(db.Model):
    """What an admin account did that touches readers' data: exports, imports, erasures."""

    __table_args__ = (Index("ix_audit_event_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_user.id", ondelete="SET NULL")
    )
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<AuditEvent {self.action}>"


class ImportJob(db.Model):
    """A CSV of subscribers being added to a newsletter, with its progress and report."""

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    admin_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_user.id", ondelete="SET NULL")
    )
    filename: Mapped[str] = mapped_column(String(255))
    mode: Mapped[ImportMode] = mapped_column(String(16))
    consent_note: Mapped[str | None] = mapped_column(Text)
    status: Mapped[JobStatus] = mapped_column(String(16), default=JobStatus.QUEUED)
    rows_read: Mapped[int] = mapped_column(default=0)
    added: Mapped[int] = mapped_column(default=0)
    unchanged: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Claimed with a lease (newsletter/leases.py), renewed after each batch: a job whose
    # worker died stops being renewed, and another worker takes the job over.
    claim: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(default=0)
    # When a queued job is due; for a running one, when its lease runs out.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When its worker last moved it on, for the admin's page.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    newsletter: Mapped[Newsletter] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<ImportJob {self.id} {self.status}>"


class ApiToken(db.Model):
    """A bearer token for the API, made and revoked by an admin; only its hash is kept."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # SHA-256 of the token: a copy of the database does not give the tokens away.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so an admin can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    admin_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_user.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<ApiToken {self.prefix}>"


digest_newsletter = Table(
    "digest_newsletter",
    db.Model.metadata,
    Column("digest_id", ForeignKey("digest.id", ondelete="CASCADE"), primary_key=True),
    Column("newsletter_id", ForeignKey("newsletter.id", ondelete="CASCADE"), primary_key=True),
)


class Digest(db.Model):
    """One mailing of news items to a newsletter's confirmed readers.

    A combined edition (the site's one mail per edition for readers who chose it) has no
    newsletter of its own: `newsletter_id` is None and `lists` are the lists it carries.
    """

    __table_args__ = (Index("ix_digest_newsletter_status", "newsletter_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int | None] = mapped_column(
        ForeignKey("newsletter.id", ondelete="CASCADE")
    )
    subject: Mapped[str] = mapped_column(String(300))
    intro: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[DigestStatus] = mapped_column(String(16), default=DigestStatus.DRAFT)
    # Composed by the cadence rather than by an editor.
    automatic: Mapped[bool] = mapped_column(default=False)
    # The edition (newsletter/frequencies.py) whose readers it goes to; None: every reader.
    frequency: Mapped[str | None] = mapped_column(String(8))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("admin_user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Left part of every recipient's Message-ID, with the delivery's id after it.
    message_key: Mapped[str] = mapped_column(String(32), default=lambda: secrets.token_hex(8))
    # Figures kept when the digest is done: the ledger loses rows when readers are erased.
    recipients: Mapped[int] = mapped_column(default=0)
    sent_count: Mapped[int] = mapped_column(default=0)
    failed_count: Mapped[int] = mapped_column(default=0)
    skipped_count: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)

    newsletter: Mapped[Newsletter | None] = relationship(lazy="joined")
    entries: Mapped[list[DigestItem]] = relationship(
        order_by="DigestItem.position", cascade="all, delete-orphan", lazy="selectin"
    )
    # A combined edition's lists, in id order; empty for a list's own digest.
    lists: Mapped[list[Newsletter]] = relationship(
        secondary=digest_newsletter, lazy="selectin", order_by="Newsletter.id"
    )

    @property
    def items(self) -> list[Item]:
        return [entry.item for entry in self.entries]

    @property
    def combined(self) -> bool:
        """Whether this is a combined edition of several lists rather than one list's digest."""
        return self.newsletter_id is None

    def __repr__(self) -> str:
        return f"<Digest {self.id} {self.status}>"


class DigestItem(db.Model):
    """An item in a digest, at its place in the editor's order."""

    digest_id: Mapped[int] = mapped_column(
        ForeignKey("digest.id", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[int] = mapped_column(
        ForeignKey("item.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(default=0)

    item: Mapped[Item] = relationship(lazy="joined")


class Delivery(db.Model):
    """The ledger: one row per reader of a digest, claimed and marked by the workers."""

    __table_args__ = (
        UniqueConstraint("digest_id", "subscription_id"),
        Index("ix_delivery_due", "digest_id", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"))
    # Erasing a reader erases their rows here too.
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscription.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[DeliveryStatus] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    # When a queued row is due; for a claimed (sending) row, when its lease runs out.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claim: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<Delivery {self.digest_id}/{self.subscription_id} {self.status}>"


class BounceEvent(db.Model):
    """A returned mail or a complaint, as it came in: what, about which mail, when."""

    __table_args__ = (
        Index("ix_bounce_event_newsletter_created", "newsletter_id", "created_at"),
        Index("ix_bounce_event_address_created", "email_hash", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The address as a hash (addresses.address_hash): enough to count per address.
    email_hash: Mapped[str] = mapped_column(String(64))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[BounceKind] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(16))  # the enhanced code, such as 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    # The mail it answers, when it could be told: a digest's delivery, or an outbox mail.
    newsletter_id: Mapped[int | None] = mapped_column(
        ForeignKey("newsletter.id", ondelete="SET NULL")
    )
    digest_id: Mapped[int | None] = mapped_column(
        ForeignKey("digest.id", ondelete="SET NULL"), index=True
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("delivery.id", ondelete="SET NULL"), index=True
    )
    outbox_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbox_message.id", ondelete="SET NULL"), index=True
    )
    # smtp (refused while sending), pipe, mbox, maildir, imap, ses, postmark, webhook
    source: Mapped[str] = mapped_column(String(16))
    # What the provider or the returned mail calls it: the same event twice changes nothing.
    event_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    # Whether it suppressed the address.
    suppressed: Mapped[bool] = mapped_column(default=False)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<BounceEvent {self.kind} {self.source}>"


class WorkerHeartbeat(db.Model):
    """The last sign of life of each worker process, for readiness checks and metrics."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # host:pid, unique: one row per process, updated in place.
    name: Mapped[str] = mapped_column(String(200), unique=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"<WorkerHeartbeat {self.name}>"


class AllowedOrigin(db.Model):
    """A host site an admin listed: its pages may read our JSON answers and get readers back."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # scheme://host[:port], lowercase, punycode, no default port: as browsers send `Origin`.
    origin: Mapped[str] = mapped_column(String(300), unique=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    added_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_user.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Joined: the list shows who added each site.
    added_by: Mapped[AdminUser | None] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<AllowedOrigin {self.origin}>"


class NewsletterText(db.Model):
    """A newsletter's own texts in one more language; an empty field shows the newsletter's."""

    __table_args__ = (UniqueConstraint("newsletter_id", "locale"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletter.id", ondelete="CASCADE"))
    locale: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    prompt_text: Mapped[str] = mapped_column(String(200), default="")
    button_text: Mapped[str] = mapped_column(String(60), default="")
    thanks_text: Mapped[str] = mapped_column(String(500), default="")
    welcome_text: Mapped[str] = mapped_column(Text, default="")

    def __repr__(self) -> str:
        return f"<NewsletterText {self.newsletter_id} {self.locale}>"


class CombinedEdition(db.Model):
    """The site's combined daily or weekly edition: when it goes, and when it is next due.

    One row per edition (frequencies.EDITIONS); readers who chose one combined mail get it
    instead of each list's own edition.
    """

    frequency: Mapped[str] = mapped_column(String(8), primary_key=True)
    automatic: Mapped[bool] = mapped_column(default=True)
    send_time: Mapped[str] = mapped_column(String(5), default="07:00")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_weekday: Mapped[int] = mapped_column(default=0)
    next_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<CombinedEdition {self.frequency}>"


class SiteSettings(db.Model):
    """The site's brand, one row: what every public page and every mail shows of it.

    An empty field means "not set": newsletter/site.py fills it from the configuration.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    logo_url: Mapped[str] = mapped_column(String(1000), default="")
    accent_colour: Mapped[str] = mapped_column(String(7), default="")
    home_url: Mapped[str] = mapped_column(String(1000), default="")
    postal_address: Mapped[str] = mapped_column(String(500), default="")
    from_name: Mapped[str] = mapped_column(String(100), default="")
    from_address: Mapped[str] = mapped_column(String(254), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("admin_user.id", ondelete="SET NULL")
    )

    def __repr__(self) -> str:
        return f"<SiteSettings {self.name!r}>"

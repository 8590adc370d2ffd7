"""What came back, as an editor reads it: per digest, and per newsletter over 30 days.

Gmail and Yahoo refuse bulk mail from senders whose complaint rate passes 0.3 %, and mailbox
providers distrust senders who keep mailing dead addresses (above about 2 % bounces).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from newsletter.models import BounceEvent, BounceKind, Delivery, DeliveryStatus, Digest

COMPLAINT_LINE = 0.003  # Gmail's and Yahoo's line for bulk senders
BOUNCE_LINE = 0.02
WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Figures:
    """Mails handed over and what came back about them."""

    sent: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    unsubscribes: int = 0
    bounced: int = 0  # distinct mails that came back

    @property
    def delivered(self) -> int:
        return max(self.sent - self.bounced, 0)

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0

    @property
    def complaints_too_many(self) -> bool:
        return self.complaint_rate >= COMPLAINT_LINE and self.complaints > 0

    @property
    def bounces_too_many(self) -> bool:
        return self.bounce_rate > BOUNCE_LINE


def _kinds(session: Session, *where: object) -> tuple[dict[str, int], int]:
    counts = {
        str(kind): count
        for kind, count in session.execute(
            select(BounceEvent.kind, func.count()).where(*where).group_by(BounceEvent.kind)
        )
    }
    bounced = session.scalar(
        select(func.count(distinct(BounceEvent.delivery_id))).where(
            *where, BounceEvent.kind != BounceKind.COMPLAINT, BounceEvent.delivery_id.is_not(None)
        )
    )
    return counts, bounced or 0


def of_digest(session: Session, digest: Digest, sent: int, unsubscribes: int) -> Figures:
    """A digest's figures: `sent` and `unsubscribes` as its progress counts them."""
    counts, bounced = _kinds(session, BounceEvent.digest_id == digest.id)
    return Figures(
        sent=sent,
        hard=counts.get(BounceKind.HARD, 0),
        soft=counts.get(BounceKind.SOFT, 0),
        complaints=counts.get(BounceKind.COMPLAINT, 0),
        unsubscribes=unsubscribes,
        bounced=bounced,
    )


def last_days(session: Session, now: datetime, window: timedelta = WINDOW) -> dict[int, Figures]:
    """Per newsletter, the digests' mails sent in the window and what came back in it."""
    since = now - window
    sent = dict(
        session.execute(
            select(Digest.newsletter_id, func.count())
            .join(Delivery, Delivery.digest_id == Digest.id)
            .where(Delivery.status == DeliveryStatus.SENT, Delivery.sent_at >= since)
            .group_by(Digest.newsletter_id)
        ).all()
    )
    events: dict[int, dict[str, int]] = {}
    for newsletter_id, kind, count in session.execute(
        select(BounceEvent.newsletter_id, BounceEvent.kind, func.count())
        .where(BounceEvent.created_at >= since, BounceEvent.newsletter_id.is_not(None))
        .group_by(BounceEvent.newsletter_id, BounceEvent.kind)
    ):
        events.setdefault(newsletter_id, {})[str(kind)] = count
    # The rate is of digest mails: each that came back once, however many reports it got.
    bounced = dict(
        session.execute(
            select(BounceEvent.newsletter_id, func.count(distinct(BounceEvent.delivery_id)))
            .where(
                BounceEvent.created_at >= since,
                BounceEvent.kind != BounceKind.COMPLAINT,
                BounceEvent.delivery_id.is_not(None),
            )
            .group_by(BounceEvent.newsletter_id)
        ).all()
    )
    figures = {}
    for newsletter_id in set(sent) | set(events):
        counts = events.get(newsletter_id, {})
        hard, soft = counts.get(BounceKind.HARD, 0), counts.get(BounceKind.SOFT, 0)
        figures[newsletter_id] = Figures(
            sent=sent.get(newsletter_id, 0),
            hard=hard,
            soft=soft,
            complaints=counts.get(BounceKind.COMPLAINT, 0),
            bounced=bounced.get(newsletter_id, 0),
        )
    return figures

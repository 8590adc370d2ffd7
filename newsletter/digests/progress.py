"""Where a digest stands: counts from the ledger while it goes, its kept figures once done."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.digests import ledger
from newsletter.models import DeliveryStatus, Digest, DigestStatus, Subscription

DONE = (DigestStatus.SENT, DigestStatus.CANCELLED)


@dataclass(frozen=True)
class Progress:
    """Where a digest stands, for the progress bar and the command line."""

    status: DigestStatus
    recipients: int
    queued: int  # waiting, held by a worker, or waiting for a retry
    sent: int
    failed: int
    skipped: int
    retrying: int  # of `queued`: put back after a temporary failure
    started_at: datetime | None
    finished_at: datetime | None
    unsubscribed_since: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def finished(self) -> bool:
        return self.status in DONE

    def rate(self, now: datetime) -> float | None:
        """Messages a second since the digest started (until it finished)."""
        if self.started_at is None or not self.sent:
            return None
        seconds = ((self.finished_at or now) - self.started_at).total_seconds()
        return self.sent / seconds if seconds > 0 else None

    def as_json(self, now: datetime) -> dict[str, object]:
        rate = self.rate(now)
        left = self.queued / rate if rate and self.status == DigestStatus.SENDING else None
        return {
            "status": str(self.status),
            "recipients": self.recipients,
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "retrying": self.retrying,
            "rate": round(rate, 1) if rate else None,
            "seconds_left": round(left) if left is not None else None,
            "unsubscribed_since": self.unsubscribed_since,
            "finished": self.finished,
        }


def progress(session: Session, digest: Digest) -> Progress:
    """Counts from the ledger while it is worked on, the kept figures once it is done."""
    session.refresh(digest)
    if digest.finished_at is not None:
        sent, failed, skipped = digest.sent_count, digest.failed_count, digest.skipped_count
        queued = retrying = 0
    else:
        counts = ledger.counts(session, digest.id)
        sent, failed = counts[DeliveryStatus.SENT], counts[DeliveryStatus.FAILED]
        skipped = counts[DeliveryStatus.SKIPPED]
        queued = counts[DeliveryStatus.QUEUED] + counts[DeliveryStatus.SENDING]
        retrying = session.scalar(ledger.retrying(digest.id)) or 0
    unsubscribed = 0
    if digest.started_at is not None:
        unsubscribed = (
            session.scalar(
                select(func.count())
                .select_from(Subscription)
                .where(
                    Subscription.newsletter_id.in_([n.id for n in digest.lists])
                    if digest.newsletter_id is None
                    else Subscription.newsletter_id == digest.newsletter_id,
                    Subscription.unsubscribed_at >= digest.started_at,
                )
            )
            or 0
        )
    return Progress(
        status=DigestStatus(digest.status),
        recipients=digest.recipients,
        queued=queued,
        sent=sent,
        failed=failed,
        skipped=skipped,
        retrying=retrying,
        started_at=digest.started_at,
        finished_at=digest.finished_at,
        unsubscribed_since=unsubscribed,
    )


def waiting_reason(session: Session, digest_id: int) -> str | None:
    """Why rows of a digest wait: the last refusal of one put back for a retry, if any."""
    return session.scalar(ledger.last_refusal(digest_id))


def seconds_span(seconds: float) -> str:
    """A number of seconds as a person reads it: 45 s, 12 min, 3 h 5 min."""
    total = round(seconds)
    if total < 90:
        return _("%(s)d s", s=total)
    minutes = round(total / 60)
    if minutes < 90:
        return _("%(min)d min", min=minutes)
    return _("%(h)d h %(min)d min", h=minutes // 60, min=minutes % 60)


def percent(done: int, total: int, finished: bool) -> int:
    """How far along, 0 to 100; a digest with nobody to mail is done once it is finished."""
    if total <= 0:
        return 100 if finished else 0
    return min(100, done * 100 // total)

"""Every metric the service exports, and how a scrape gathers them across processes.

Counters live in each process; under gunicorn (and the workers `make run-prod` starts) they are
written to files in PROMETHEUS_MULTIPROC_DIR, set before this module is imported, and a scrape
adds up the files of every process. Figures the database knows (subscriptions, the outbox) are
read from it at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.models import (
    Newsletter,
    OutboxMessage,
    OutboxStatus,
    Subscription,
    SubscriptionStatus,
    WorkerHeartbeat,
    utcnow,
)

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

SIGNUPS = Counter(
    "newsletter_signups",
    "Signups accepted, per list chosen (pending until confirmed)",
    ["newsletter"],
)
CONFIRMATIONS = Counter(
    "newsletter_confirmations", "Subscriptions confirmed by their reader", ["newsletter"]
)
UNSUBSCRIBES = Counter(
    "newsletter_unsubscribes", "Subscriptions ended by their reader", ["newsletter"]
)
MAILS_QUEUED = Counter("newsletter_mails_queued", "Transactional mails queued", ["kind"])
MAILS_SENT = Counter(
    "newsletter_mails_sent",
    "Mails settled by a worker: sent, failed or skipped, per kind (digest for digests)",
    ["kind", "result"],
)
DIGEST_MESSAGES = Counter(
    "newsletter_digest_messages_sent", "Digest messages the mail server accepted"
)
DIGEST_RENDERS = Counter(
    "newsletter_digest_renders",
    "Digest mails rendered: once per digest, language and (combined editions) set of lists",
)
BOUNCES = Counter("newsletter_bounces", "Returned mails recorded", ["kind"])
COMPLAINTS = Counter("newsletter_complaints", "Spam complaints recorded")
RATELIMIT_FALLBACK = Counter(
    "newsletter_ratelimit_fallback",
    "Requests whose rate limits were counted in process memory because Redis was unreachable",
)
REQUEST_SECONDS = Histogram(
    "newsletter_request_duration_seconds",
    "Time to answer a request, per endpoint",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def signed_up(slugs: Iterable[str]) -> None:
    """Count one signup per list the reader chose."""
    for slug in slugs:
        SIGNUPS.labels(slug).inc()


def confirmed(subscriptions: Iterable[Any]) -> None:
    """Count the subscriptions a confirmation turned on."""
    for subscription in subscriptions:
        CONFIRMATIONS.labels(subscription.newsletter.slug).inc()


def unsubscribing(subscription: Any) -> None:
    """Count a reader leaving a list, called just before; leaving twice counts once."""
    if subscription.status in (SubscriptionStatus.PENDING, SubscriptionStatus.CONFIRMED):
        UNSUBSCRIBES.labels(subscription.newsletter.slug).inc()


def preferences_saved(joined: Iterable[Any], left: Iterable[Any]) -> None:
    """Count what a reader changed on the preferences page."""
    confirmed(joined)
    for subscription in left:
        UNSUBSCRIBES.labels(subscription.newsletter.slug).inc()


def mail_settled(row: Any, result: str) -> None:
    """Count an outbox mail sent, failed or skipped, reading nothing from the database."""
    # What the row has loaded: a row whose session another worker loop closed cannot load.
    kind = inspect(row).dict.get("kind") or "unknown"
    MAILS_SENT.labels(str(kind), result).inc()


def digest_rendered() -> None:
    """Count one rendering of a digest's mail (a worker's, for its readers of one language and
    one set of lists; however many readers it then goes to)."""
    DIGEST_RENDERS.inc()


def digest_sent() -> None:
    """Count one digest message accepted by the mail server."""
    MAILS_SENT.labels("digest", "sent").inc()
    DIGEST_MESSAGES.inc()


class DatabaseCollector(Collector):
    """Figures read from the database at scrape time: lists, the outbox, the workers."""

    def __init__(self, engine: Callable[[], Engine], worker_within: timedelta) -> None:
        self.engine = engine
        self.worker_within = worker_within

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("newsletter_database_up", "1 when the scrape read the database")
        try:
            families = list(self._read())
        except SQLAlchemyError as exc:
            log.warning("metrics: the database cannot be read: %s", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        with self.engine().connect() as conn:
            by_state = conn.execute(
                select(Newsletter.slug, Subscription.status, func.count())
                .join(Subscription, Subscription.newsletter_id == Newsletter.id)
                .group_by(Newsletter.slug, Subscription.status)
            ).all()
            depth, oldest = conn.execute(
                select(func.count(), func.min(OutboxMessage.created_at)).where(
                    OutboxMessage.status == OutboxStatus.QUEUED
                )
            ).one()
            workers = conn.scalar(
                select(func.count()).where(WorkerHeartbeat.seen_at >= now - self.worker_within)
            )
        subscriptions = GaugeMetricFamily(
            "newsletter_subscriptions",
            "Subscriptions per newsletter and status",
            labels=["newsletter", "status"],
        )
        for slug, status, count in by_state:
            subscriptions.add_metric([slug, str(status)], count)
        yield subscriptions
        yield GaugeMetricFamily(
            "newsletter_outbox_queued", "Transactional mails waiting to be sent", value=depth
        )
        age = 0.0
        if oldest is not None:
            # SQLite hands back naive values (UTC); the column type makes them aware in the ORM.
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo)
            age = max(0.0, (now - oldest).total_seconds())
        yield GaugeMetricFamily(
            "newsletter_outbox_oldest_age_seconds",
            "Age of the oldest mail waiting in the outbox (0 when empty)",
            value=age,
        )
        yield GaugeMetricFamily(
            "newsletter_workers_seen",
            "Worker processes that reported within the readiness window",
            value=workers or 0,
        )


class _ThisProcess(Collector):
    """The metrics of the process answering, when it is the only one."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    """Where the processes of this machine write their counters, if they share them."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def registry(database: Collector | None = None) -> CollectorRegistry:
    """A registry for one scrape: every process's counters, and the database's figures."""
    scrape = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(scrape)
    else:
        scrape.register(_ThisProcess())
    if database is not None:
        scrape.register(database)
    return scrape


def exposition(database: Collector | None = None) -> bytes:
    """The Prometheus text of one scrape."""
    return generate_latest(registry(database))


def authorised(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the metrics bearer token."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


_served: dict[int, Any] = {}
_serve_lock = threading.Lock()


def serve(
    config: Mapping[str, Any], database: Collector | None = None, *, every_process: bool = False
) -> int | None:
    """Serve the metrics on NEWSLETTER_METRICS_PORT from a thread, once per process.

    A worker serves its own counters; gunicorn's master (`every_process`) those of all the
    processes sharing PROMETHEUS_MULTIPROC_DIR, with the database's figures.
    """
    port = config.get("METRICS_PORT")
    if not port:
        return None
    with _serve_lock:
        if int(port) not in _served:
            target = CollectorRegistry()
            if every_process and multiprocess_dir():
                multiprocess.MultiProcessCollector(target)
            else:
                target.register(_ThisProcess())
            if database is not None:
                target.register(database)
            address = str(config.get("METRICS_ADDRESS") or "127.0.0.1")
            server, _thread = start_http_server(int(port), address, target)
            _served[int(port)] = server
            log.info("metrics served on %s:%s", address, port)
    return int(port)


def clear_multiprocess_dir(path: str) -> None:
    """Remove the counter files of processes that are gone (an earlier run's)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in os.listdir(path):
        stem, _, pid = name.removesuffix(".db").rpartition("_")
        if not name.endswith(".db") or not stem or not pid.isdigit():
            continue
        if not _running(int(pid)):
            os.unlink(os.path.join(path, name))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_exited(pid: int) -> None:
    """Tell the shared files that a process is gone (its live gauges stop counting)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)

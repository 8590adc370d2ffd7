"""The worker process: `newsletter worker` runs the runners until it is stopped.

Each kind of work is a runner with one `step(session, stop) -> int` that does one batch of
it and says how much it found: the signup queue, the outbox (transactional mail), the
automatic digests' cadence, breaking alerts, the digests' ledger, the import jobs. The
worker steps them in that order, over and over; a signup's confirmation mail is queued and
sent in the same round, and a digest goes one batch at a time, so a confirmation never waits
behind a million-reader digest. When a round finds nothing, the worker idles for a moment,
or with `drain` returns. SIGTERM and SIGINT stop it after the batch in hand, whose unsent
rows go back to their queue.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from newsletter import heartbeats, signups, transactional
from newsletter.bounces import ingest
from newsletter.digests import combined, ledger
from newsletter.digests.alerts import AlertRunner
from newsletter.digests.cadence import CadenceRunner
from newsletter.digests.sender import DigestSender
from newsletter.imports.jobs import ImportRunner
from newsletter.leases import Policy
from newsletter.links import Links
from newsletter.mail import dkim, outbox, transport
from newsletter.mail.outbox import OutboxRunner
from newsletter.subscriptions import ConfirmationLimit

log = logging.getLogger(__name__)
HEARTBEAT_EVERY = 10.0  # seconds between two writes of this worker's sign of life


class Runner(Protocol):
    def step(self, session: Session, stop: threading.Event) -> int:
        """Do one batch of this kind of work; return how much it found (0: nothing to do)."""
        ...


@dataclass(frozen=True)
class Settings:
    """How a worker paces itself."""

    # Seconds between rounds when one found nothing: a signup waits at most this long.
    poll_interval: float = 0.5
    signups: Policy = signups.POLICY
    outbox: Policy = outbox.POLICY
    ledger: Policy = ledger.POLICY
    cadence_every: float = 15.0  # seconds between looks for due automatic digests
    alerts_every: float = 5.0  # seconds between looks for new breaking alerts
    alert_feeds_every: float = 120.0  # seconds between pulls of feeds that map alerts


@dataclass
class Worker:
    """The runners of one process, stepped in turn until stopped."""

    session_factory: Callable[[], Session]
    runners: Sequence[tuple[str, Runner]]
    transport: transport.Transport
    settings: Settings = field(default_factory=Settings)
    stop: threading.Event = field(default_factory=threading.Event)

    def runner(self, name: str) -> Any:
        """The runner of that name."""
        return dict(self.runners)[name]

    def run(self, *, drain: bool = False) -> dict[str, int]:
        """Step the runners until stopped (with `drain`: until a round finds nothing).

        Returns how much each runner handled.
        """
        handled = {name: 0 for name, _ in self.runners}
        try:
            while not self.stop.is_set():
                found = 0
                for name, runner in self.runners:
                    if self.stop.is_set():
                        break
                    count = self._step(name, runner)
                    handled[name] += count
                    found += count
                if found or self.stop.is_set():
                    continue
                if drain:
                    break
                # Idle: close the connection ourselves rather than have the server time it out.
                self.transport.close()
                self.stop.wait(self.settings.poll_interval)
        finally:
            self.transport.close()
        return handled

    def _step(self, name: str, runner: Runner) -> int:
        session = self.session_factory()
        try:
            # A sign of life for /readyz and the metrics, written every few seconds at most.
            heartbeats.beat(session, every=HEARTBEAT_EVERY)
            return runner.step(session, self.stop)
        except Exception:
            # A database hiccup (a lock held too long, a restarted server) or one broken
            # feed must not end the worker: a batch's rows come back with their lease.
            log.exception("%s failed; trying again", name)
            session.rollback()
            return 0
        finally:
            session.close()


def build(
    config: Mapping[str, Any],
    session_factory: Callable[[], Session],
    settings: Settings | None = None,
    *,
    mail: transport.Transport | None = None,
    kinds: Sequence[str] | None = None,
) -> Worker:
    """A worker wired from the configuration: its transport, DKIM signer, links and runners.

    `newsletter worker`, `newsletter worker --drain` and `newsletter digest send --wait`
    alike; `mail` replaces the configured transport, `kinds` names the runners to keep
    (all of them by default: signups, outbox, automatic digests, combined editions, alerts,
    digest sending, imports, and returned mail when NEWSLETTER_BOUNCE_IMAP_URL is set).
    """
    settings = settings or Settings()
    signer = dkim.Signer.from_config(config)
    if mail is None:
        mail = transport.from_config(config["SMTP_URL"], config["OUTBOX_DIR"], signer=signer)
    links = Links.from_config(config)
    rules = ingest.Rules.from_config(config)
    build_mail = functools.partial(transactional.build, links=links)
    refused = functools.partial(ingest.refused_at_send, rules=rules)
    sender = DigestSender(
        mail,
        links,
        policy=settings.ledger,
        rate=config.get("SEND_RATE"),
        signer=signer,
        rules=rules,
    )
    limit = ConfirmationLimit(
        count=int(config.get("CONFIRMATIONS_PER_ADDRESS") or 3),
        window=timedelta(seconds=int(config.get("CONFIRMATION_WINDOW") or 24 * 3600)),
    )
    runners: list[tuple[str, Runner]] = [
        ("signups", signups.SignupRunner(limit, settings.signups)),
        ("outbox", OutboxRunner(mail, build_mail, links, settings.outbox, refused=refused)),
        ("automatic digests", CadenceRunner(settings.cadence_every)),
        ("alerts", AlertRunner(settings.alerts_every, settings.alert_feeds_every)),
        ("combined editions", CadenceRunner(settings.cadence_every, look=combined.run_due)),
        ("digest sending", sender),
        ("imports", ImportRunner(Path(config["INSTANCE_PATH"]))),
    ]
    if config.get("BOUNCE_IMAP_URL"):
        every = float(config.get("BOUNCE_POLL_SECONDS") or 60)
        imap = ingest.ImapRunner(str(config["BOUNCE_IMAP_URL"]), links, rules, every)
        runners.append(("returned mail", imap))
    if kinds is not None:
        runners = [(name, runner) for name, runner in runners if name in kinds]
    return Worker(session_factory, runners, mail, settings)


def stop_on_signals(stop: threading.Event) -> None:
    """Finish the message in hand, then exit, on SIGTERM or SIGINT."""

    def _handler(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the current message", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)

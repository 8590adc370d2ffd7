"""What `newsletter worker` does between two looks at the outbox.

Transactional mail comes first: after every outbox batch the worker sends one batch of a
digest, so a confirmation never waits behind a million-reader digest. Then it runs a
queued import, and now and then composes the digests whose cadence is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter import heartbeats, imports, schedule
from newsletter.sending import DigestSender, run_digests

log = logging.getLogger(__name__)
HEARTBEAT_EVERY = 10.0  # seconds between two writes of this worker's sign of life


class OtherWork:
    """The worker's work besides the outbox, as `outbox.run` calls it between batches."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        sender: DigestSender,
        instance_path: str | Path,
        stop: threading.Event,
        *,
        cadence_every: float = 15.0,
    ) -> None:
        self.session_factory = session_factory
        self.sender = sender
        self.instance_path = instance_path
        self.stop = stop
        self.cadence_every = cadence_every
        self._cadence_at = 0.0

    def __call__(self) -> bool:
        """One round; True when it found work, so the worker does not idle."""
        heartbeats.beat(self.session_factory(), every=HEARTBEAT_EVERY)
        found = False
        if time.monotonic() >= self._cadence_at:
            self._cadence_at = time.monotonic() + self.cadence_every
            session = self.session_factory()
            try:
                found = bool(schedule.run_due(session))
            except Exception:
                # A broken cadence or feed must not stop the mail.
                log.exception("automatic digests failed")
                session.rollback()
            finally:
                session.close()
        try:
            found = run_digests(self.session_factory, self.sender, self.stop) or found
        except Exception:
            # A database hiccup (a lock held too long, a restarted server) must not end the
            # worker and its confirmation mails: the batch's rows come back with their lease.
            log.exception("digest sending failed; trying again")
        if self.stop.is_set():
            return found
        return imports.run_next_job(self.session_factory, self.instance_path, self.stop) or found

"""Workers' signs of life: one row per worker process, kept fresh; /readyz and metrics read them."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.models import WorkerHeartbeat, utcnow

# Rows of processes silent this long are removed when a new worker starts.
FORGET_AFTER = timedelta(days=1)
_last_beat: dict[str, float] = {}


def worker_name() -> str:
    """This process's name among the workers: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(session: Session, name: str | None = None, *, every: float = 0.0) -> bool:
    """Record that a worker is alive now (update or insert its row); commits.

    With `every`, a beat within that many seconds of this process's last one writes nothing,
    so a busy loop costs the database one write every few seconds. True when it wrote.
    """
    name = name or worker_name()
    now_mono = time.monotonic()
    if every and now_mono - _last_beat.get(name, float("-inf")) < every:
        return False
    now = utcnow()
    touched = session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.name == name)
        .values(seen_at=now)
        .execution_options(synchronize_session=False)
    )
    if touched.rowcount == 0:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))
        session.add(WorkerHeartbeat(name=name, started_at=now, seen_at=now))
        try:
            session.commit()
        except IntegrityError:
            # Two sessions of one process raced to insert: the other one's row is fresh.
            session.rollback()
    else:
        session.commit()
    _last_beat[name] = now_mono
    return True


def recent(session: Session, within: timedelta) -> list[WorkerHeartbeat]:
    """The workers seen within `within`, freshest first."""
    return list(
        session.scalars(
            select(WorkerHeartbeat)
            .where(WorkerHeartbeat.seen_at >= utcnow() - within)
            .order_by(WorkerHeartbeat.seen_at.desc())
        )
    )

"""The importer: a CSV's rows checked, then written to a newsletter a batch at a time.

Each batch is one transaction (its rows, their consent events and confirmation mails, and
the job's counters), so a crash leaves the job telling what is written, and running the
same file again adds only what is missing.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import NamedTuple, TextIO

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from newsletter.exports import neutralise
from newsletter.imports.csvfile import (
    PARALLEL_AFTER,
    Cells,
    Checked,
    Checker,
    Columns,
    ImportProblem,
    NotUTF8,
    Rows,
    chunks,
    read_header,
)
from newsletter.imports.statements import CUSTOM_PLANS, Statements, driver_moment
from newsletter.leases import Leases, Policy
from newsletter.models import ImportJob, ImportMode, JobStatus, SubscriptionStatus, utcnow

log = logging.getLogger(__name__)

# Rows per transaction: large enough that each commit's cost is shared by many rows, small
# enough that a signup waits for SQLite's write lock a few tens of milliseconds at most.
BATCH_SIZE = 2000
# A running job whose lease ran out lost its worker: another worker takes it over. A batch
# takes well under a second, and each renews the lease, so a live worker is never this late.
POLICY = Policy(batch_size=1, lease=timedelta(minutes=5))
# A job a worker stopped moving is given up by `jobs`, which can tell the admin why.
LEASES = Leases(
    ImportJob.__table__, waiting=JobStatus.QUEUED, held=JobStatus.RUNNING, error_column="error"
)
REPORT_COLUMNS = ("row", "email", "outcome", "reason")
ALREADY = {
    SubscriptionStatus.PENDING: "already waiting for confirmation",
    SubscriptionStatus.CONFIRMED: "already subscribed",
    SubscriptionStatus.UNSUBSCRIBED: "unsubscribed earlier",
    SubscriptionStatus.BOUNCED: "bounced earlier",
    SubscriptionStatus.COMPLAINED: "complained earlier",
}


class Outcome(enum.StrEnum):
    UNCHANGED = "unchanged"  # on the list already, or left it: an import changes neither
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    SUPPRESSED = "suppressed"


class _Row(NamedTuple):
    number: int  # as a spreadsheet shows it: the header is row 1
    address: str
    key: str
    locale: str | None
    subscribed_at: datetime | None
    hash: str  # addresses.address_hash(key), to look for a suppression
    name: str | None


class _Batch:
    """The rows of one transaction and the report lines they produce."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.report: list[tuple[int, str, Outcome, str]] = []
        self.read = 0

    def reject(self, number: int, email: str, outcome: Outcome, reason: str) -> None:
        self.report.append((number, email, outcome, reason))


class _TakenOver(Exception):
    """The job no longer carries this run's claim: another worker has the job."""


class Importer:
    """Applies batches of checked rows to one job's newsletter.

    Every write to the job (its start, each batch's counters, its end) renews its lease, on
    the condition that it still carries this run's claim. A run that stalled past its lease
    and whose job another worker took over thus finds out at its next write, and leaves the
    job to the other.
    """

    def __init__(
        self, session: Session, job: ImportJob, report: TextIO, policy: Policy = POLICY
    ) -> None:
        self.session = session
        self.job = job
        self.job_id = job.id
        self.token = str(job.claim)
        self.policy = policy
        self.writer = csv.writer(report, lineterminator="\r\n")
        dialect = session.get_bind().dialect
        self.statements = Statements.build(dialect, ImportMode(job.mode))
        self.moment = driver_moment(dialect)
        self.params = {"newsletter_id": job.newsletter_id, "note": job.consent_note}
        self.rows_read = self.added = self.unchanged = self.rejected = 0
        self.status = JobStatus.RUNNING
        self.lost = False

    def _save(self, **values: object) -> None:
        """Write the job's state and renew its lease, if this run still holds it; commits."""
        now = utcnow()
        held = LEASES.renew(
            self.session,
            [self.job_id],
            self.token,
            self.policy,
            now=now,
            heartbeat_at=now,
            **values,
        )
        if not held:
            self.lost = True
            raise _TakenOver()

    def start(self) -> None:
        """Mark the job running from the top of its file: counters at zero; commits."""
        self._save(
            status=JobStatus.RUNNING,
            rows_read=0,
            added=0,
            unchanged=0,
            rejected=0,
            error=None,
            finished_at=None,
        )

    def finish(self, status: JobStatus, error: str | None) -> None:
        """Record how the run ended, unless another worker has the job now; commits.

        Done or failed settle the job; queued (a stopping worker) gives it back to the queue.
        """
        self.status = status
        now = utcnow()
        try:
            if status == JobStatus.QUEUED:
                kept = LEASES.release(self.session, [self.job_id], self.token)
            else:
                kept = LEASES.settle(
                    self.session,
                    [self.job_id],
                    self.token,
                    status,
                    error,
                    heartbeat_at=now,
                    finished_at=now,
                )
            if not kept:
                self.lost = True
                log.warning("import job %s: taken over by another worker", self.job_id)
        finally:
            # The caller reads the job's final state: load it again from the database.
            self.session.expire(self.job)

    def apply(self, batch: _Batch) -> None:
        """Write one batch in one transaction, retried once if a signup raced it; commits."""
        for attempt in (1, 2):
            try:
                added, left = self._apply(batch)
            except IntegrityError:
                # A signup added one of these addresses meanwhile: look again, it is known now.
                self.session.rollback()
                if attempt == 2:
                    raise
            else:
                break
        report = batch.report + left
        unchanged = sum(1 for line in left if line[2] == Outcome.UNCHANGED)
        self.rows_read += batch.read
        self.added += added
        self.unchanged += unchanged
        self.rejected += len(report) - unchanged
        # The counters commit with the batch's rows: after a crash they tell what is written.
        self._save(
            rows_read=self.rows_read,
            added=self.added,
            unchanged=self.unchanged,
            rejected=self.rejected,
        )
        for number, email, outcome, reason in sorted(report):
            self.writer.writerow([number, neutralise(email), outcome, neutralise(reason)])

    def _apply(self, batch: _Batch) -> tuple[int, list[tuple[int, str, Outcome, str]]]:
        """Write the rows to add; return how many, and the report lines of the others."""
        if not batch.rows:
            return 0, []
        conn = self.session.connection()
        if conn.dialect.name == "postgresql":
            # psycopg prepares statements run often, and PostgreSQL may then keep a generic
            # plan made while the tables were small: seq scans that grow with every batch.
            conn.execute(CUSTOM_PLANS)
        moment = self.moment
        rows = [
            (
                row.number,
                row.address,
                row.key,
                row.locale,
                None if row.subscribed_at is None else moment(row.subscribed_at),
                row.hash,
                row.name,
            )
            for row in batch.rows
        ]
        params = {**self.params, "rows": json.dumps(rows), "now": utcnow()}
        left = []
        for number, address, suppressed, status in conn.execute(self.statements.not_to_add, params):
            if suppressed is not None:
                left.append((number, address, Outcome.SUPPRESSED, f"suppressed: {suppressed}"))
            else:
                left.append((number, address, Outcome.UNCHANGED, ALREADY[status]))
        if left:
            skip = {line[0] for line in left}
            rows = [row for row in rows if row[0] not in skip]
            params["rows"] = json.dumps(rows)
        params["keys"] = json.dumps([row[2] for row in rows])
        if rows:
            for statement in self.statements.writes:
                conn.execute(statement, params)
        return len(rows), left


def _batches(reader: Rows, columns: Columns, size: int, checker: Checker) -> Iterator[_Batch]:
    """Check each row of the file and group them into batches; rows that fail are reported.

    The rows of the next chunk are being checked while the caller writes a batch.
    """
    # Every address seen so far, by the hash of its key, with its row: about 90 bytes an
    # address, against 130 with the key itself. Two addresses of one file share a 64-bit hash
    # with odds of about one in 10^7 for a million rows; the hash is seeded per process, so a
    # file cannot be made to collide on purpose.
    seen: dict[int, int] = {}
    now = utcnow()
    parts = chunks(reader, columns, size)
    current = next(parts, None)
    if current is None:
        return
    answer = checker.submit(current[1], now)
    for following in parts:
        checked = answer()
        answer = checker.submit(following[1], now)
        yield _batch(*current, checked, seen)
        current = following
    yield _batch(*current, answer(), seen)


def _batch(
    numbers: list[int], cells: list[Cells], checked: list[Checked], seen: dict[int, int]
) -> _Batch:
    batch = _Batch()
    batch.read = len(numbers)
    for number, row, result in zip(numbers, cells, checked, strict=True):
        if isinstance(result, str):
            batch.reject(number, row[0], Outcome.INVALID, result)
            continue
        key = hash(result[1])
        first = seen.get(key)
        if first is not None:
            batch.reject(number, result[0], Outcome.DUPLICATE, f"duplicates row {first}")
        else:
            seen[key] = number
            batch.rows.append(_Row(number, *result))
    return batch


def run(
    session: Session,
    job: ImportJob,
    source: TextIO,
    report: TextIO,
    progress: Callable[[int], None] | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    parallel_after: int | None = PARALLEL_AFTER,
    stop: threading.Event | None = None,
) -> ImportJob:
    """Import a CSV into the job's newsletter, committing a batch at a time; returns the job.

    The job goes running → done, or failed with a message when the file cannot be read
    (no email column, not UTF-8, not CSV). Every batch commits, so another process sees the
    counters move; `progress` is called after each with the rows read so far. Running the
    same file again changes nothing, so a failed or interrupted import is finished by running
    it again. When `stop` is set, the job goes back to the queue after the batch in hand.
    Any other error fails the job and is raised again.
    """
    run_importer(
        Importer(session, job, report),
        source,
        progress,
        batch_size=batch_size,
        parallel_after=parallel_after,
        stop=stop,
    )
    return job


def run_importer(
    importer: Importer,
    source: TextIO,
    progress: Callable[[int], None] | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    parallel_after: int | None = PARALLEL_AFTER,
    stop: threading.Event | None = None,
) -> None:
    """`run` on an importer, which tells afterwards whether the job stayed this run's."""
    session = importer.session
    status, error = JobStatus.DONE, None
    raised: BaseException | None = None
    checker = Checker(parallel_after)
    try:
        importer.start()
        importer.writer.writerow(REPORT_COLUMNS)
        columns, reader = read_header(source)
        for batch in _batches(reader, columns, batch_size, checker):
            importer.apply(batch)
            if progress is not None:
                progress(importer.rows_read)
            if stop is not None and stop.is_set():
                status = JobStatus.QUEUED
                break
    except _TakenOver:
        log.warning("import job %s: taken over by another worker", importer.job_id)
        return
    except ImportProblem as exc:
        status, error = JobStatus.FAILED, exc.message
    except UnicodeDecodeError:
        where = f" (after row {importer.rows_read + 1})" if importer.rows_read else ""
        status, error = JobStatus.FAILED, NotUTF8.message + where
    except KeyboardInterrupt as exc:
        status, error = JobStatus.FAILED, "Interrupted; run the import again to finish it."
        raised = exc
    except SQLAlchemyError as exc:
        # The error's text holds the statement's parameters, readers' addresses among them:
        # the job keeps only its kind, the worker's log the rest.
        kind = type(getattr(exc, "orig", None) or exc).__name__
        status, error = JobStatus.FAILED, f"The import stopped on a database error ({kind})."
        raised = exc
    except BaseException as exc:
        status, error = JobStatus.FAILED, f"The import stopped: {exc!r}"
        raised = exc
    finally:
        checker.close()
    try:
        session.rollback()
        importer.finish(status, error)
    except Exception:
        if raised is None:
            raise
        log.exception("import job %s: its end could not be recorded", importer.job_id)
    if raised is not None:
        raise raised

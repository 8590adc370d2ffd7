"""Subscriber import: jobs, and a CSV's checked rows written in batches, one per transaction."""

from __future__ import annotations

import csv
import enum
import io
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from sqlalchemy import (
    JSON,
    FromClause,
    Insert,
    Integer,
    Select,
    String,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from newsletter.exports import neutralise
from newsletter.import_file import (
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
from newsletter.models import (
    AuditEvent,
    ConsentAction,
    ConsentEvent,
    ImportJob,
    ImportMode,
    JobStatus,
    MailKind,
    Newsletter,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    UTCDateTime,
    utcnow,
)

log = logging.getLogger(__name__)

S = SubscriptionStatus
# Rows per transaction: large enough that each commit's cost is shared by many rows, small
# enough that a signup waits for SQLite's write lock a few tens of milliseconds at most.
BATCH_SIZE = 2000
# A running job whose heartbeat is older than this lost its worker: another worker takes it
# over. A batch takes well under a second, so a live worker is never this late.
STALE_AFTER = timedelta(minutes=5)
ABANDONED = (
    "The import stopped before it finished: the process running it ended. "
    "Run the import again to finish it; what it added stays."
)
SOURCE = "import"
REPORT_COLUMNS = ("row", "email", "outcome", "reason")
ALREADY = {
    S.PENDING: "already waiting for confirmation",
    S.CONFIRMED: "already subscribed",
    S.UNSUBSCRIBED: "unsubscribed earlier",
    S.BOUNCED: "bounced earlier",
    S.COMPLAINED: "complained earlier",
}


class UnknownNewsletter(ImportProblem):
    message = "There is no newsletter by that name."


class ConsentNoteRequired(ImportProblem):
    message = "Importing people as confirmed needs a consent note: say how and when they agreed."


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
    hash: str  # subscriptions.address_hash(key), to look for a suppression
    name: str | None


# --- files -----------------------------------------------------------------------------------


def imports_dir(instance_path: str | Path) -> Path:
    """Where uploads and reports live: instance/imports/."""
    path = Path(instance_path) / "imports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload_path(instance_path: str | Path, job_id: int) -> Path:
    """The uploaded CSV of a job queued from the admin area."""
    return imports_dir(instance_path) / f"{job_id}.csv"


def report_path(instance_path: str | Path, job_id: int) -> Path:
    """The report of a job: one line per row not added, with the reason."""
    return imports_dir(instance_path) / f"{job_id}-report.csv"


def open_source(path: str | Path) -> io.TextIOWrapper:
    """Open a CSV for `run`: UTF-8 with or without a BOM, newlines left to the csv module."""
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - the caller closes it


def open_report(path: str | Path) -> io.TextIOWrapper:
    """Open a report for writing; with a BOM, so spreadsheets read it as UTF-8."""
    return open(path, "w", encoding="utf-8-sig", newline="")  # noqa: SIM115


# --- jobs ------------------------------------------------------------------------------------


def create_job(
    session: Session,
    slug: str,
    filename: str,
    mode: ImportMode,
    consent_note: str | None = None,
    admin_user_id: int | None = None,
    *,
    commit: bool = True,
    queued: bool = False,
) -> ImportJob:
    """Record an import into a newsletter, and who asked for it; commits.

    A queued job waits for the worker. Any other is the caller's to run at once: it starts
    out running, so that no worker takes it from the queue before the caller does.
    """
    newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
    if newsletter is None:
        raise UnknownNewsletter(f"There is no newsletter with the slug {slug!r}.")
    note = (consent_note or "").strip() or None
    if mode == ImportMode.CONSENTED and note is None:
        raise ConsentNoteRequired()
    job = ImportJob(
        newsletter_id=newsletter.id,
        admin_user_id=admin_user_id,
        # Only for display: the last part of whatever path a browser or shell sent.
        filename=re.split(r"[/\\]", filename)[-1][:255] or "upload.csv",
        mode=mode,
        consent_note=note,
        status=JobStatus.QUEUED if queued else JobStatus.RUNNING,
        heartbeat_at=None if queued else utcnow(),
    )
    session.add(job)
    session.flush()
    session.add(
        AuditEvent(
            admin_user_id=admin_user_id,
            action="import",
            detail={
                "job": job.id,
                "newsletter": newsletter.slug,
                "mode": str(mode),
                "file": job.filename,
            },
        )
    )
    if commit:
        session.commit()
    return job


def queue_upload(
    session: Session,
    save: Callable[[Path], object],
    instance_path: str | Path,
    slug: str,
    filename: str,
    mode: ImportMode,
    consent_note: str | None,
    admin_user_id: int | None,
) -> ImportJob:
    """Store an uploaded CSV with `save(path)` and queue its job for the worker; commits.

    The file is in place under the job's name before the job becomes visible, so a worker
    never claims a job without its file.
    """
    partial = imports_dir(instance_path) / f"upload-{secrets.token_hex(8)}.part"
    placed: Path | None = None
    try:
        save(partial)
        job = create_job(
            session, slug, filename, mode, consent_note, admin_user_id, commit=False, queued=True
        )
        placed = upload_path(instance_path, job.id)
        partial.replace(placed)
        session.commit()
    except BaseException:
        # Readers' data with no job to import it would stay on disk for good.
        partial.unlink(missing_ok=True)
        if placed is not None:
            placed.unlink(missing_ok=True)
        session.rollback()
        raise
    return job


def _stale(before: datetime) -> ColumnElement[bool]:
    """Running jobs whose worker has not moved them since `before`: it died, or hangs."""
    return and_(
        ImportJob.status == JobStatus.RUNNING,
        or_(ImportJob.heartbeat_at.is_(None), ImportJob.heartbeat_at < before),
    )


def claimable(before: datetime) -> Select[Any]:
    """The oldest job a worker may take: queued, or running but stale since `before`."""
    return (
        select(ImportJob.id, ImportJob.status)
        .where(or_(ImportJob.status == JobStatus.QUEUED, _stale(before)))
        .order_by(ImportJob.id)
        .limit(1)
    )


def take(job_id: int, status: JobStatus, before: datetime, now: datetime) -> Update:
    """Make a job running with a fresh heartbeat, if it is still as `claimable` found it.

    The condition is checked again in the UPDATE itself, so of two workers that read the
    same job only one changes the row; the other's rowcount is 0.
    """
    still = ImportJob.status == JobStatus.QUEUED if status == JobStatus.QUEUED else _stale(before)
    return (
        update(ImportJob)
        .where(ImportJob.id == job_id, still)
        .values(status=JobStatus.RUNNING, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )


def abandon(job_id: int, before: datetime, now: datetime) -> Update:
    """Fail a stale job that no worker can run again (its file is not here), if still stale."""
    return (
        update(ImportJob)
        .where(ImportJob.id == job_id, _stale(before))
        .values(status=JobStatus.FAILED, error=ABANDONED, finished_at=now)
        .execution_options(synchronize_session=False)
    )


def claim_next(
    session: Session, instance_path: str | Path, stale_after: timedelta = STALE_AFTER
) -> ImportJob | None:
    """Take the oldest queued job, or a running one whose worker died; one taker only.

    A stale job runs again from the top of its file, which the import allows: it is
    idempotent. A stale job without an uploaded file (the command line's: the file is
    the user's) cannot, and fails with a message asking to run the import again.
    """
    while True:
        now = utcnow()
        before = now - stale_after
        found = session.execute(claimable(before)).first()
        if found is None:
            session.commit()
            return None
        job_id, status = found
        runnable = status == JobStatus.QUEUED or upload_path(instance_path, job_id).exists()
        if runnable:
            taken = session.execute(take(job_id, status, before, now))
        else:
            taken = session.execute(abandon(job_id, before, now))
        session.commit()
        if taken.rowcount != 1:
            continue  # another worker was first
        if status == JobStatus.RUNNING:
            what = "taken over" if runnable else "failed: its file is not here to run it again"
            log.warning("import job %s: its worker stopped moving it; %s", job_id, what)
        if runnable:
            return session.get(ImportJob, job_id, populate_existing=True)


def requeue(session: Session, job: ImportJob, instance_path: str | Path) -> bool:
    """Queue a failed upload's job again (its rows so far stay); False if it cannot; commits."""
    if job.status != JobStatus.FAILED or not upload_path(instance_path, job.id).exists():
        return False
    job.status = JobStatus.QUEUED
    job.error = None
    job.finished_at = None
    session.commit()
    return True


def recent_jobs(session: Session, limit: int = 20) -> list[ImportJob]:
    """The latest imports, newest first."""
    return list(session.scalars(select(ImportJob).order_by(ImportJob.id.desc()).limit(limit)))


def record_report_download(session: Session, job: ImportJob, admin_user_id: int | None) -> None:
    """Note that someone took a job's report (it holds addresses) away; commits."""
    session.add(
        AuditEvent(admin_user_id=admin_user_id, action="import-report", detail={"job": job.id})
    )
    session.commit()


def run_next_job(
    session_factory: Callable[[], Session],
    instance_path: str | Path,
    stop: threading.Event | None = None,
    *,
    stale_after: timedelta = STALE_AFTER,
) -> bool:
    """Run the oldest queued import job, or one whose worker died, to the end.

    Returns False when none was waiting. The worker calls it between mail batches. A job
    whose file cannot be read fails; a job that raises is logged and failed, and the worker
    goes on.
    """
    session = session_factory()
    try:
        job = claim_next(session, instance_path, stale_after)
        if job is None:
            return False
        _run_claimed(session, job, instance_path, stop)
        return True
    finally:
        session.close()


def _run_claimed(
    session: Session, job: ImportJob, instance_path: str | Path, stop: threading.Event | None
) -> None:
    """Run a job this worker just claimed from its uploaded file; publish its report."""
    job_id, claimed_at = job.id, job.heartbeat_at
    source_file = upload_path(instance_path, job_id)
    try:
        source = open_source(source_file)
    except OSError as exc:
        _finish(session, job, JobStatus.FAILED, f"The uploaded file cannot be read: {exc}")
        return
    # The report is written aside and put in place at the end: a worker that took this job
    # over from a stalled one must not share a file with it, and nobody downloads half a report.
    folder = imports_dir(instance_path)
    for leftover in folder.glob(f"{job_id}-report-*.part"):
        leftover.unlink(missing_ok=True)  # from a worker that died on this job
    partial = folder / f"{job_id}-report-{secrets.token_hex(8)}.part"
    importer: _Importer | None = None
    try:
        with source, open_report(partial) as report:
            importer = _Importer(session, job, report)
            _run(importer, source, stop=stop)
    except Exception as exc:
        log.exception("import job %s failed", job_id)
        if importer is None:
            # It never started: fail it now rather than leave it running until it goes stale.
            session.rollback()
            session.execute(
                update(ImportJob)
                .where(
                    ImportJob.id == job_id,
                    ImportJob.status == JobStatus.RUNNING,
                    ImportJob.heartbeat_at == claimed_at,
                )
                .values(
                    status=JobStatus.FAILED,
                    error=f"The import could not start: {exc}"[:2000],
                    finished_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            session.commit()
    finally:
        try:
            if importer is None or importer.lost:
                partial.unlink(missing_ok=True)
            else:
                partial.replace(report_path(instance_path, job_id))
        except OSError:
            log.exception("import job %s: its report could not be put in place", job_id)
    if importer is not None and not importer.lost and importer.status == JobStatus.DONE:
        # The upload holds readers' data: keep it only while it may be needed again.
        source_file.unlink(missing_ok=True)


def _finish(session: Session, job: ImportJob, status: JobStatus, error: str | None) -> ImportJob:
    job.status = status
    job.error = error[:2000] if error else None
    job.finished_at = utcnow() if status in (JobStatus.DONE, JobStatus.FAILED) else None
    session.commit()
    return job


# --- the statements --------------------------------------------------------------------------
# A batch goes to the database as JSON parameters expanded to rows there (json_each on SQLite,
# json_array_elements on PostgreSQL), and every write is one INSERT … SELECT over them: per
# row, Python only checks the address; the database does the rest without a round trip or a
# type conversion per value. `rows` holds arrays of FIELDS, for the statements that need
# more than the address; `keys` holds the lookup keys alone, which cost least to expand.

FIELDS = ("number", "address", "key", "locale", "subscribed_at", "hash", "name")


def batch_rows(dialect: Dialect) -> FromClause:
    """The `rows` parameter (a JSON array of [number, address, key, …]) as a table."""
    if dialect.name == "postgresql":
        value = (
            func.json_array_elements(cast(bindparam("rows"), JSON))
            .table_valued(column("value", postgresql.JSON))
            .alias("j")
            .c.value
        )
        texts = [value[i].astext for i in range(len(FIELDS))]
        texts[0] = cast(texts[0], Integer)
        texts[4] = cast(texts[4], UTCDateTime)
        return select(
            *(cell.label(name) for cell, name in zip(texts, FIELDS, strict=True))
        ).subquery("b")
    value = func.json_each(bindparam("rows")).table_valued("value").alias("j").c.value
    return select(
        *(func.json_extract(value, f"$[{i}]").label(name) for i, name in enumerate(FIELDS))
    ).subquery("b")


def batch_keys(dialect: Dialect) -> FromClause:
    """The `keys` parameter (a JSON array of lookup keys) as a table with one column, key."""
    if dialect.name == "postgresql":
        elements = func.json_array_elements_text(cast(bindparam("keys"), JSON))
    else:
        elements = func.json_each(bindparam("keys"))
    value = elements.table_valued("value").alias("k").c.value
    return select(value.label("key")).subquery("b")


def random_key(dialect: Dialect) -> ColumnElement[str]:
    """A random hex string made by the database, one per row (tokens, nonces, Message-IDs)."""
    if dialect.name == "postgresql":
        return func.replace(cast(func.gen_random_uuid(), Text), "-", "")
    return func.lower(func.hex(func.randomblob(12)))


def confirmation_payload(dialect: Dialect) -> ColumnElement[Any]:
    """A confirmation's outbox payload as a signup queues it, {"subscriptions": [[id, nonce]]}."""
    pair = (Subscription.id, Subscription.nonce)
    if dialect.name == "postgresql":
        return func.json_build_object(
            "subscriptions", func.json_build_array(func.json_build_array(*pair))
        )
    return func.json_object("subscriptions", func.json_array(func.json_array(*pair)))


NOW = bindparam("now", type_=UTCDateTime)
CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")
NEWSLETTER = bindparam("newsletter_id", type_=Integer)


def not_to_add(b: FromClause) -> Select[Any]:
    """The rows of a batch an import leaves alone: suppressed, or on the list in any state."""
    return (
        select(b.c.number, b.c.address, Suppression.reason, Subscription.status)
        .select_from(b)
        .outerjoin(Suppression, Suppression.email_hash == b.c.hash)
        .outerjoin(Subscriber, Subscriber.email_key == b.c.key)
        .outerjoin(
            Subscription,
            and_(
                Subscription.subscriber_id == Subscriber.id,
                Subscription.newsletter_id == NEWSLETTER,
            ),
        )
        .where(or_(Suppression.id.is_not(None), Subscription.id.is_not(None)))
    )


def insert_subscribers(b: FromClause, dialect: Dialect) -> Insert:
    """A subscriber for every address of the batch that has none yet, with its name.

    A subscriber who exists keeps the name they have: an import only adds people.
    """
    return insert(Subscriber).from_select(
        ["email", "email_key", "name", "locale", "token_key", "created_at"],
        select(b.c.address, b.c.key, b.c.name, b.c.locale, random_key(dialect), NOW).where(
            ~exists().where(Subscriber.email_key == b.c.key)
        ),
        include_defaults=False,
    )


def insert_subscriptions(b: FromClause, dialect: Dialect, mode: ImportMode) -> Insert:
    """A subscription to the list for every row of the batch: pending, or confirmed."""
    since = func.coalesce(b.c.subscribed_at, NOW)
    confirmed = mode == ImportMode.CONSENTED
    return insert(Subscription).from_select(
        ["subscriber_id", "newsletter_id", "status", "nonce", "source", "subscribed_at"]
        + (["confirmed_at"] if confirmed else []),
        select(
            Subscriber.id,
            NEWSLETTER,
            literal(S.CONFIRMED if confirmed else S.PENDING, String),
            random_key(dialect),
            literal(SOURCE, String),
            since,
            *([since] if confirmed else []),
        ).join_from(b, Subscriber, Subscriber.email_key == b.c.key),
        include_defaults=False,
    )


def _new_subscriptions(b: FromClause) -> Select[Any]:
    """The batch's rows with their subscriber and their subscription to the list."""
    return (
        select(Subscriber.id, Subscriber.email, Subscription.id, Subscription.nonce)
        .join_from(b, Subscriber, Subscriber.email_key == b.c.key)
        .join(
            Subscription,
            and_(
                Subscription.subscriber_id == Subscriber.id,
                # "+ 0" keeps the planner off the (newsletter, status) index: through it,
                # a fresh SQLite database without statistics reads the whole list per batch.
                Subscription.newsletter_id + 0 == NEWSLETTER,
            ),
        )
    )


def insert_events(b: FromClause, action: ConsentAction) -> Insert:
    """One consent event per row of the batch, with the import's consent note."""
    return insert(ConsentEvent).from_select(
        ["subscription_id", "action", "created_at", "source", "text_shown"],
        _new_subscriptions(b).with_only_columns(
            Subscription.id,
            literal(action, String),
            NOW,
            literal(SOURCE, String),
            bindparam("note", type_=Text),
        ),
        include_defaults=False,
    )


def insert_confirmations(b: FromClause, dialect: Dialect) -> Insert:
    """One confirmation mail in the outbox per row of the batch, for the worker to send."""
    return insert(OutboxMessage).from_select(
        [
            "kind",
            "subscriber_id",
            "to_address",
            "payload",
            "message_key",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
        ],
        _new_subscriptions(b).with_only_columns(
            literal(MailKind.CONFIRMATION, String),
            Subscriber.id,
            Subscriber.email,
            confirmation_payload(dialect),
            random_key(dialect),
            literal(OutboxStatus.QUEUED, String),
            literal(0, Integer),
            NOW,
            NOW,
        ),
        include_defaults=False,
    )


@dataclass(frozen=True)
class _Statements:
    """The statements of one import, built once for its database and mode."""

    not_to_add: Select[Any]
    writes: tuple[Insert, ...]

    @classmethod
    def build(cls, dialect: Dialect, mode: ImportMode) -> _Statements:
        b, k = batch_rows(dialect), batch_keys(dialect)
        writes = [insert_subscribers(b, dialect), insert_subscriptions(b, dialect, mode)]
        writes.append(insert_events(k, ConsentAction.SIGNUP))
        if mode == ImportMode.CONSENTED:
            writes.append(insert_events(k, ConsentAction.CONFIRMED))
        else:
            writes.append(insert_events(k, ConsentAction.CONFIRMATION_SENT))
            writes.append(insert_confirmations(k, dialect))
        return cls(not_to_add(b), tuple(writes))


def _driver_moment(dialect: Dialect) -> Callable[[datetime], object]:
    """A UTC moment as this database compares it inside a JSON batch."""
    convert = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    if convert is None or dialect.name == "postgresql":
        return lambda moment: moment.isoformat()
    return convert


# --- the import ------------------------------------------------------------------------------


class _Batch:
    """The rows of one transaction and the report lines they produce."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.report: list[tuple[int, str, Outcome, str]] = []
        self.read = 0

    def reject(self, number: int, email: str, outcome: Outcome, reason: str) -> None:
        self.report.append((number, email, outcome, reason))


class _TakenOver(Exception):
    """The job's heartbeat is not the one this run last wrote: another worker has the job."""


class _Importer:
    """Applies batches of checked rows to one job's newsletter.

    Every write to the job (its start, each batch's counters, its end) moves the heartbeat
    on, on the condition that it is still the one this run wrote last. A run that stalled
    for longer than the stale limit and whose job another worker took over thus finds out
    at its next write, and leaves the job to the other.
    """

    def __init__(self, session: Session, job: ImportJob, report: TextIO) -> None:
        self.session = session
        self.job = job
        self.job_id = job.id
        self.beat = job.heartbeat_at
        self.writer = csv.writer(report, lineterminator="\r\n")
        dialect = session.get_bind().dialect
        self.statements = _Statements.build(dialect, ImportMode(job.mode))
        self.moment = _driver_moment(dialect)
        self.params = {"newsletter_id": job.newsletter_id, "note": job.consent_note}
        self.rows_read = self.added = self.unchanged = self.rejected = 0
        self.status = JobStatus.RUNNING
        self.lost = False

    def _save(self, **values: object) -> None:
        """Write the job's state with a new heartbeat, if this run still holds it; commits."""
        now = utcnow()
        saved = self.session.execute(
            update(ImportJob)
            .where(ImportJob.id == self.job_id, ImportJob.heartbeat_at == self.beat)
            .values(heartbeat_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if saved.rowcount != 1:
            self.session.rollback()
            self.lost = True
            raise _TakenOver()
        self.session.commit()
        self.beat = now

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
        """Record how the run ended, unless another worker has the job now; commits."""
        self.status = status
        done = status in (JobStatus.DONE, JobStatus.FAILED)
        try:
            self._save(
                status=status,
                error=error[:2000] if error else None,
                finished_at=utcnow() if done else None,
            )
        except _TakenOver:
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
    _run(
        _Importer(session, job, report),
        source,
        progress,
        batch_size=batch_size,
        parallel_after=parallel_after,
        stop=stop,
    )
    return job


def _run(
    importer: _Importer,
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

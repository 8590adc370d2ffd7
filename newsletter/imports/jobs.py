"""Import jobs: a CSV of subscribers to add to a newsletter, queued and run by a worker.

A job from the admin area is queued with its uploaded file and claimed by a worker with a
lease (`leases.py`), which the import renews after each batch; a job whose worker died is
taken over from the top of its file once the lease runs out, which the import allows: it is
idempotent. A job from the command line runs in that command, held by it from the start.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from flask_babel import lazy_gettext
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.imports.csvfile import ImportProblem
from newsletter.imports.importer import LEASES, POLICY, Importer, run_importer
from newsletter.leases import Policy, new_claim
from newsletter.models import AuditEvent, ImportJob, ImportMode, JobStatus, utcnow
from newsletter.newsletters import by_slug

log = logging.getLogger(__name__)

# A running job whose lease ran out (not renewed for this long) lost its worker.
STALE_AFTER = POLICY.lease
ABANDONED = (
    "The import stopped before it finished: the process running it ended. "
    "Run the import again to finish it; what it added stays."
)


class ConsentNoteRequired(ImportProblem):
    message = lazy_gettext(
        "Importing people as confirmed needs a consent note: say how and when they agreed."
    )


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
    out running, held by the caller's claim, so that no worker takes it from the queue.
    """
    newsletter = by_slug(session, slug)
    note = (consent_note or "").strip() or None
    if mode == ImportMode.CONSENTED and note is None:
        raise ConsentNoteRequired()
    now = utcnow()
    job = ImportJob(
        newsletter_id=newsletter.id,
        admin_user_id=admin_user_id,
        # Only for display: the last part of whatever path a browser or shell sent.
        filename=re.split(r"[/\\]", filename)[-1][:255] or "upload.csv",
        mode=mode,
        consent_note=note,
        status=JobStatus.QUEUED if queued else JobStatus.RUNNING,
        claim=None if queued else new_claim(),
        attempts=0 if queued else 1,
        next_attempt_at=now if queued else now + POLICY.lease,
        heartbeat_at=None if queued else now,
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


def claim_next(
    session: Session, instance_path: str | Path, policy: Policy = POLICY
) -> ImportJob | None:
    """Take the oldest queued job, or a running one whose lease ran out; one taker only.

    A job taken over runs again from the top of its file, which the import allows: it is
    idempotent. A job taken over without an uploaded file (the command line's: the file is
    the user's) cannot, and fails with a message asking to run the import again.
    """
    while True:
        token = new_claim()
        claimed = LEASES.claim(session, token, policy, limit=1)
        if not claimed:
            return None
        job = session.get(ImportJob, claimed[0], populate_existing=True)
        assert job is not None
        # Claimed before (its attempts count each claim): its worker stopped renewing it.
        taken_over = job.attempts > 1
        runnable = not taken_over or upload_path(instance_path, job.id).exists()
        if taken_over:
            what = "taken over" if runnable else "failed: its file is not here to run it again"
            log.warning("import job %s: its worker stopped moving it; %s", job.id, what)
        if runnable:
            return job
        LEASES.settle(session, [job.id], token, JobStatus.FAILED, ABANDONED, finished_at=utcnow())


def requeue(session: Session, job: ImportJob, instance_path: str | Path) -> bool:
    """Queue a failed upload's job again (its rows so far stay); False if it cannot; commits."""
    if job.status != JobStatus.FAILED or not upload_path(instance_path, job.id).exists():
        return False
    job.status = JobStatus.QUEUED
    job.error = None
    job.finished_at = None
    job.attempts = 0
    job.next_attempt_at = utcnow()
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


class ImportRunner:
    """The worker's runner for imports: runs the next job, if one waits, to its end."""

    def __init__(self, instance_path: str | Path, policy: Policy = POLICY) -> None:
        self.instance_path = instance_path
        self.policy = policy

    def step(self, session: Session, stop: threading.Event | None = None) -> int:
        """Run the oldest queued job, or one whose worker died; 0 when none was waiting.

        A job whose file cannot be read fails; a job that raises is logged and failed, and
        the worker goes on.
        """
        job = claim_next(session, self.instance_path, self.policy)
        if job is None:
            return 0
        _run_claimed(session, job, self.instance_path, stop)
        return 1


def _run_claimed(
    session: Session, job: ImportJob, instance_path: str | Path, stop: threading.Event | None
) -> None:
    """Run a job this worker just claimed from its uploaded file; publish its report."""
    job_id, token = job.id, str(job.claim)
    source_file = upload_path(instance_path, job_id)
    try:
        source = open_source(source_file)
    except OSError as exc:
        error = f"The uploaded file cannot be read: {exc}"
        LEASES.settle(session, [job_id], token, JobStatus.FAILED, error, finished_at=utcnow())
        return
    # The report is written aside and put in place at the end: a worker that took this job
    # over from a stalled one must not share a file with it, and nobody downloads half a report.
    folder = imports_dir(instance_path)
    for leftover in folder.glob(f"{job_id}-report-*.part"):
        leftover.unlink(missing_ok=True)  # from a worker that died on this job
    partial = folder / f"{job_id}-report-{secrets.token_hex(8)}.part"
    importer: Importer | None = None
    try:
        with source, open_report(partial) as report:
            importer = Importer(session, job, report)
            run_importer(importer, source, stop=stop)
    except Exception as exc:
        log.exception("import job %s failed", job_id)
        if importer is None:
            # It never started: fail it now rather than leave it running until it goes stale.
            session.rollback()
            error = f"The import could not start: {exc}"
            LEASES.settle(session, [job_id], token, JobStatus.FAILED, error, finished_at=utcnow())
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

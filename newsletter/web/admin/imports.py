"""Subscriber imports: upload a CSV, watch the worker import it, download its report."""

from __future__ import annotations

from datetime import timedelta

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user
from werkzeug.wrappers import Response

from newsletter import newsletters as lists
from newsletter.errors import UserError
from newsletter.extensions import csrf, db
from newsletter.imports import csvfile
from newsletter.imports import jobs as import_jobs
from newsletter.models import ImportJob, ImportMode, JobStatus, utcnow
from newsletter.web.admin.core import admin_only, bp
from newsletter.web.admin.forms import ImportForm


@bp.route("/imports", methods=["GET", "POST"])
@csrf.exempt  # checked below, once the upload's size limit is raised
@admin_only
def imports() -> str | Response | tuple[str, int]:
    """Upload a CSV of subscribers for the worker to import; the latest imports."""
    if request.method == "POST":
        # The app-wide limit suits signups; it must be raised before anything reads the body.
        request.max_content_length = current_app.config["MAX_IMPORT_BYTES"]
        csrf.protect()
    form = ImportForm()
    form.newsletter.choices = [(n.slug, n.name) for n in lists.all_newsletters(db.session)]
    if form.validate_on_submit():
        upload = form.file.data
        try:
            job = import_jobs.queue_upload(
                db.session,
                upload.save,
                current_app.instance_path,
                form.newsletter.data,
                upload.filename or "upload.csv",
                ImportMode(form.mode.data),
                form.consent_note.data,
                current_user.id,
            )
        except UserError as exc:
            form.newsletter.errors.append(exc.message)
        else:
            flash(_("%(file)s is queued; the worker imports it.", file=job.filename))
            return redirect(url_for("admin.import_job", job_id=job.id))
    page = render_template(
        "admin/imports.html", form=form, jobs=import_jobs.recent_jobs(db.session)
    )
    return page, 422 if form.errors else 200


@bp.get("/imports/<int:job_id>")
@admin_only
def import_job(job_id: int) -> str:
    """One import: its state and counters, refreshed while it runs; its report when done."""
    job = db.get_or_404(ImportJob, job_id)
    instance = current_app.instance_path
    working = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    upload = import_jobs.upload_path(instance, job.id)
    total = csvfile.estimated_rows(upload) if working else None
    since = None
    if job.status == JobStatus.RUNNING and job.heartbeat_at is not None:
        since = max(utcnow() - job.heartbeat_at, timedelta(0))
    return render_template(
        "admin/import.html",
        job=job,
        working=working,
        total=max(total, job.rows_read) if total else None,
        moved_ago=_duration(since) if since is not None else None,
        stalled=since is not None and since > import_jobs.STALE_AFTER,
        stale_after=_duration(import_jobs.STALE_AFTER),
        report=not working and import_jobs.report_path(instance, job.id).exists(),
        can_retry=job.status == JobStatus.FAILED and upload.exists(),
    )


def _duration(span: timedelta) -> str:
    """A span of time as a person reads it: 4 s, 12 min, 3 h."""
    seconds = int(span.total_seconds())
    if seconds < 120:
        return _("%(s)d s", s=seconds)
    if seconds < 2 * 3600:
        return _("%(min)d min", min=seconds // 60)
    return _("%(h)d h", h=seconds // 3600)


@bp.get("/imports/<int:job_id>/report")
@admin_only
def import_report(job_id: int) -> Response:
    """The report of a finished import as a CSV download: the rows not added, and why."""
    job = db.get_or_404(ImportJob, job_id)
    path = import_jobs.report_path(current_app.instance_path, job.id)
    if job.status not in (JobStatus.DONE, JobStatus.FAILED) or not path.exists():
        abort(404)
    import_jobs.record_report_download(db.session, job, current_user.id)
    return send_file(
        path,
        mimetype="text/csv",
        as_attachment=True,
        download_name=f"import-{job.id}-report.csv",
    )


@bp.post("/imports/<int:job_id>/retry")
@admin_only
def import_retry(job_id: int) -> Response:
    """Queue a failed import again; what it added before stays, so it finishes the rest."""
    job = db.get_or_404(ImportJob, job_id)
    if import_jobs.requeue(db.session, job, current_app.instance_path):
        flash(_("Import %(id)s is queued again.", id=job.id))
    else:
        flash(_("Only a failed import whose uploaded file is still here can run again."))
    return redirect(url_for("admin.import_job", job_id=job.id))

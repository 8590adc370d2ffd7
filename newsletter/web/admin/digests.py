"""Digests: compose, edit, preview, test, send or schedule, and watch them go."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, tzinfo

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import format_datetime, format_decimal, ngettext
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from newsletter import newsletters as lists
from newsletter.bounces import figures as returned
from newsletter.digests import cadence, progress, states
from newsletter.digests import compose as digest_mail
from newsletter.digests import items as news_items
from newsletter.extensions import db
from newsletter.links import PREFERENCES, UNSUBSCRIBE, Links
from newsletter.models import Digest, Item, Newsletter, utcnow
from newsletter.web.admin.core import bp
from newsletter.web.admin.forms import DigestForm, ScheduleForm

# How many of the newsletter's latest items the edit page offers to add.
ADDABLE = 50


@bp.get("/digests")
def digests_list() -> str:
    """The latest digests, of one newsletter when chosen; a "New digest" button per newsletter."""
    every = lists.all_newsletters(db.session)
    slug = request.args.get("newsletter", "")
    chosen = next((n for n in every if n.slug == slug), None)
    return render_template(
        "admin/digests.html",
        digests=states.recent(db.session, chosen),
        newsletters=every,
        chosen=chosen,
    )


@bp.post("/digests/new")
def digest_new() -> Response:
    """Compose a draft of the newsletter's new items, newest first, and open it."""
    newsletter = db.get_or_404(Newsletter, request.form.get("newsletter", type=int) or 0)
    try:
        digest = states.compose(db.session, newsletter, created_by=current_user.id)
    except states.DigestError as exc:
        flash(exc.message)
        return redirect(url_for("admin.digests_list", newsletter=newsletter.slug))
    return redirect(url_for("admin.digest", digest_id=digest.id))


@bp.route("/digests/<int:digest_id>", methods=["GET", "POST"])
def digest(digest_id: int) -> str | Response | tuple[str, int]:
    """A draft or scheduled digest to edit and send; any other, its progress and figures."""
    digest = db.get_or_404(Digest, digest_id)
    if not states.editable(digest):
        if request.method == "POST":
            flash(_("This digest is on its way and can no longer be changed."))
            return redirect(url_for("admin.digest", digest_id=digest.id))
        return _progress_page(digest)
    form = DigestForm(obj=digest)
    chosen = list(digest.items)
    if request.method == "POST":
        chosen = _chosen_items(request.form, chosen, _addable(digest, chosen))
    if form.validate_on_submit():
        try:
            states.edit(
                db.session,
                digest,
                subject=form.subject.data,
                intro=form.intro.data or "",
                item_ids=[item.id for item in chosen],
            )
        except states.DigestError as exc:
            db.session.rollback()
            form.subject.errors = [*form.subject.errors, exc.message]
        else:
            flash(_("Saved."))
            return redirect(url_for("admin.digest", digest_id=digest.id))
    return _edit_page(digest, form, ScheduleForm(formdata=None), chosen)


def _edit_page(
    digest: Digest, form: DigestForm, schedule_form: ScheduleForm, chosen: Sequence[Item]
) -> tuple[str, int]:
    zone = _zone(digest.newsletter)
    page = render_template(
        "admin/digest_edit.html",
        digest=digest,
        actions=states.actions(digest),
        form=form,
        schedule_form=schedule_form,
        entries=chosen,
        addable=_addable(digest, chosen),
        readers=states.audience_size(db.session, digest.newsletter),
        scheduled_local=digest.scheduled_at.astimezone(zone) if digest.scheduled_at else None,
    )
    return page, 422 if form.errors or schedule_form.errors else 200


def _addable(digest: Digest, chosen: Sequence[Item]) -> list[Item]:
    """The newsletter's latest items that are not in the digest, newest first."""
    taken = {item.id for item in chosen}
    latest = news_items.items_since(db.session, digest.newsletter, None, limit=ADDABLE)
    return [item for item in latest if item.id not in taken]


def _chosen_items(
    form: MultiDict[str, str], current: Sequence[Item], addable: Sequence[Item]
) -> list[Item]:
    """The items in the order the editor numbered them, less those removed, plus those added.

    Each item has a position input and a remove checkbox; the page works without JavaScript.
    An item given the number another holds goes before it when it moved up and after it
    when it moved down, which is where the editor meant it to land.
    """
    ranked = []
    for index, item in enumerate(current):
        if form.get(f"remove-{item.id}"):
            continue
        try:
            position = int(form.get(f"position-{item.id}", ""))
        except ValueError:
            position = index + 1
        moved = (position > index + 1) - (position < index + 1)
        ranked.append(((position, moved, index), item))
    ranked.sort(key=lambda pair: pair[0])
    wanted = set(form.getlist("add", type=int))
    return [item for _, item in ranked] + [item for item in addable if item.id in wanted]


def _zone(newsletter: Newsletter) -> tzinfo:
    """The newsletter's time zone; UTC if its name is not one this machine knows."""
    try:
        return cadence.zone(newsletter.timezone or "UTC")
    except cadence.CadenceError:
        return UTC


def _rendered(digest: Digest) -> tuple[str, str]:
    """The digest's text and HTML parts as a reader gets them, with placeholder links."""
    links = Links.from_config(current_app.config)
    content = digest_mail.Content(digest.newsletter, digest.subject, digest.intro, digest.items)
    return digest_mail.render(
        content, links.prefix(UNSUBSCRIBE) + "preview", links.prefix(PREFERENCES) + "preview"
    )


@bp.get("/digests/<int:digest_id>/preview")
def digest_preview(digest_id: int) -> str:
    """The digest as a reader gets it: the HTML part in a sandboxed frame, and the text part."""
    digest = db.get_or_404(Digest, digest_id)
    text, _html = _rendered(digest)
    return render_template("admin/digest_preview.html", digest=digest, text=text)


@bp.get("/digests/<int:digest_id>/preview.html")
def digest_preview_html(digest_id: int) -> Response:
    """The mail's HTML as a reader's client renders it; framed by the admin only."""
    _text, html = _rendered(db.get_or_404(Digest, digest_id))
    return Response(html, content_type="text/html; charset=utf-8")


@bp.post("/digests/<int:digest_id>/test")
def digest_test(digest_id: int) -> Response:
    """Queue a test copy of the digest to the signed-in account's address."""
    digest = db.get_or_404(Digest, digest_id)
    try:
        states.send_test(db.session, digest, current_user.email)
    except states.DigestError as exc:
        flash(exc.message)
    else:
        flash(
            _(
                "A test copy is queued for %(email)s; the worker sends it shortly.",
                email=current_user.email,
            )
        )
    return redirect(url_for("admin.digest_preview", digest_id=digest.id))


@bp.post("/digests/<int:digest_id>/start")
def digest_start(digest_id: int) -> Response:
    """Snapshot the confirmed readers and start sending."""
    digest = db.get_or_404(Digest, digest_id)
    try:
        readers = states.start(db.session, digest)
    except states.DigestError as exc:
        flash(exc.message)
    else:
        flash(
            ngettext(
                "Sending to %(readers)s reader.",
                "Sending to %(readers)s readers.",
                readers,
                readers=format_decimal(readers),
            )
        )
    return redirect(url_for("admin.digest", digest_id=digest.id))


@bp.post("/digests/<int:digest_id>/schedule")
def digest_schedule(digest_id: int) -> Response | tuple[str, int]:
    """Schedule the digest at a time in the newsletter's time zone."""
    digest = db.get_or_404(Digest, digest_id)
    if not states.editable(digest):
        flash(_("Only a draft can be scheduled."))
        return redirect(url_for("admin.digest", digest_id=digest.id))
    form = ScheduleForm()
    if form.validate_on_submit():
        zone = _zone(digest.newsletter)
        when = form.when.data.replace(tzinfo=zone).astimezone(UTC)
        try:
            states.schedule(db.session, digest, when)
        except states.DigestError as exc:
            form.when.errors.append(exc.message)
        else:
            local = when.astimezone(zone)
            when = format_datetime(local, "d MMMM y, HH:mm", rebase=False)
            zone = digest.newsletter.timezone
            flash(_("Scheduled for %(when)s (%(zone)s).", when=when, zone=zone))
            return redirect(url_for("admin.digest", digest_id=digest.id))
    # The other form shows the saved digest, not this request's fields.
    return _edit_page(digest, DigestForm(formdata=None, obj=digest), form, digest.items)


@bp.post("/digests/<int:digest_id>/unschedule")
def digest_unschedule(digest_id: int) -> Response:
    """Back to a draft."""
    return _action(digest_id, states.unschedule, _("Back to draft: it will not go by itself."))


@bp.post("/digests/<int:digest_id>/pause")
def digest_pause(digest_id: int) -> Response:
    """Stop handing out mail until resumed."""
    return _action(digest_id, states.pause, _("Paused. Mail already sent stays sent."))


@bp.post("/digests/<int:digest_id>/resume")
def digest_resume(digest_id: int) -> Response:
    """Go on from where it paused."""
    return _action(digest_id, states.resume, _("Sending again."))


@bp.post("/digests/<int:digest_id>/cancel")
def digest_cancel(digest_id: int) -> Response:
    """Send nothing more of this digest."""
    return _action(digest_id, states.cancel, _("Cancelled. Nothing more of it is sent."))


def _action(digest_id: int, change: Callable[[Session, Digest], object], done: str) -> Response:
    digest = db.get_or_404(Digest, digest_id)
    try:
        change(db.session, digest)
    except states.DigestError as exc:
        flash(exc.message)
    else:
        flash(done)
    return redirect(url_for("admin.digest", digest_id=digest.id))


@bp.get("/digests/<int:digest_id>/progress")
def digest_progress(digest_id: int) -> Response:
    """Where the digest stands, as JSON for the progress bar."""
    digest = db.get_or_404(Digest, digest_id)
    response = jsonify(progress.progress(db.session, digest).as_json(utcnow()))
    response.headers["Cache-Control"] = "no-store"
    return response


def _progress_page(digest: Digest) -> str:
    now = utcnow()
    state = progress.progress(db.session, digest)
    figures = state.as_json(now)
    left = figures["seconds_left"]
    duration = None
    if state.started_at is not None and state.finished_at is not None:
        duration = progress.seconds_span((state.finished_at - state.started_at).total_seconds())
    return render_template(
        "admin/digest.html",
        digest=digest,
        label=str(states.LABELS[digest.status]),
        actions=states.actions(digest),
        figures=figures,
        done=state.done,
        percent=progress.percent(state.done, state.recipients, state.finished),
        left=progress.seconds_span(left) if isinstance(left, int) else None,
        duration=duration,
        average=state.rate(now),
        delivery=returned.of_digest(db.session, digest, state.sent, state.unsubscribed_since),
        complaint_line=returned.COMPLAINT_LINE,
        bounce_line=returned.BOUNCE_LINE,
    )

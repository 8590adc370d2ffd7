"""Digests: compose, edit, preview, test, send or schedule, and watch them go."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import format_datetime, format_decimal, ngettext
from flask_babel import gettext as _
from flask_login import current_user
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from newsletter import archive, frequencies
from newsletter import newsletters as lists
from newsletter.bounces import figures as returned
from newsletter.digests import cadence, progress, states
from newsletter.digests import compose as digest_mail
from newsletter.digests import items as news_items
from newsletter.extensions import db
from newsletter.links import TEST_READER, Links
from newsletter.models import Digest, Item, Newsletter, utcnow
from newsletter.web.admin.core import bp
from newsletter.web.admin.forms import DigestForm, ScheduleForm

# How many of the newsletter's latest items the edit page offers to add.
ADDABLE = 50
# How long a confirmation page's button stays good, in seconds.
CONFIRMATION_MAX_AGE = 3600
# What the edit form's buttons do once the changes are saved.
NEXT_STEPS = ("save", "preview", "test", "send", "schedule")


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
    frequency = request.form.get("frequency") or None
    if frequency is not None and frequency not in frequencies.editions(newsletter):
        flash(_("%(name)s has no such edition.", name=newsletter.name))
        return redirect(url_for("admin.digests_list", newsletter=newsletter.slug))
    try:
        digest = states.compose(
            db.session, newsletter, created_by=current_user.id, frequency=frequency
        )
    except states.DigestError as exc:
        flash(exc.message)
        return redirect(url_for("admin.digests_list", newsletter=newsletter.slug))
    return redirect(url_for("admin.digest", digest_id=digest.id))


@bp.route("/digests/<int:digest_id>", methods=["GET", "POST"])
def digest(digest_id: int) -> str | Response | tuple[str, int]:
    """A draft or scheduled digest to edit and send; any other, its progress and figures.

    Every button of the edit form saves it first, then goes on: preview, test copy, or the
    confirmation of a send or a schedule. Nothing ever uses a version older than the form.
    """
    digest = db.get_or_404(Digest, digest_id)
    if not states.editable(digest) or digest.newsletter is None:
        # A combined edition is composed and sent on the site's schedule, never edited.
        if request.method == "POST":
            flash(_("This digest is on its way and can no longer be changed."))
            return redirect(url_for("admin.digest", digest_id=digest.id))
        return _progress_page(digest)
    return _edit(digest, digest.newsletter)


def _edit(digest: Digest, newsletter: Newsletter) -> str | Response | tuple[str, int]:
    form = DigestForm(obj=digest)
    then = request.form.get("then", "save")
    then = then if then in NEXT_STEPS else "save"
    schedule_form = ScheduleForm(
        formdata=request.form if then == "schedule" else None, meta={"csrf": False}
    )
    chosen = list(digest.items)
    if request.method == "POST":
        chosen = _chosen_items(request.form, chosen, _addable(newsletter, chosen))
    if form.validate_on_submit() and (then != "schedule" or schedule_form.validate()):
        local = schedule_form.when.data if then == "schedule" else None
        try:
            if local is not None:
                states.check_time(_in_utc(local, newsletter))
        except states.DigestError as exc:
            schedule_form.when.errors = [*schedule_form.when.errors, exc.message]
            return _edit_page(digest, newsletter, form, schedule_form, chosen)
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
            return _go_on(digest, then, local)
    return _edit_page(digest, newsletter, form, schedule_form, chosen)


def _go_on(digest: Digest, then: str, local: datetime | None) -> Response:
    """After saving: the next step the editor's button asked for."""
    if then == "preview":
        flash(_("Saved. The preview shows the digest as saved."))
        return redirect(url_for("admin.digest_preview", digest_id=digest.id))
    if then == "test":
        try:
            states.send_test(db.session, digest, current_user.email)
        except states.DigestError as exc:
            flash(_("Saved, but no test copy was sent: %(why)s", why=exc.message))
        else:
            flash(
                _(
                    "Saved, and a test copy of the saved digest is queued for %(email)s; "
                    "the worker sends it shortly.",
                    email=current_user.email,
                )
            )
        return redirect(url_for("admin.digest", digest_id=digest.id))
    if then == "send":
        flash(_("Saved. Check the details and confirm to send."))
        return redirect(url_for("admin.digest_confirm_send", digest_id=digest.id))
    if then == "schedule" and local is not None:
        flash(_("Saved. Check the details and confirm to schedule."))
        return redirect(
            url_for(
                "admin.digest_confirm_schedule",
                digest_id=digest.id,
                when=local.strftime("%Y-%m-%dT%H:%M"),
            )
        )
    flash(_("Saved."))
    return redirect(url_for("admin.digest", digest_id=digest.id))


def _edit_page(
    digest: Digest,
    newsletter: Newsletter,
    form: DigestForm,
    schedule_form: ScheduleForm,
    chosen: Sequence[Item],
) -> tuple[str, int]:
    zone = _zone(newsletter)
    page = render_template(
        "admin/digest_edit.html",
        digest=digest,
        actions=states.actions(digest),
        form=form,
        schedule_form=schedule_form,
        entries=chosen,
        addable=_addable(newsletter, chosen),
        readers=states.audience_size(db.session, newsletter, digest.frequency),
        scheduled_local=digest.scheduled_at.astimezone(zone) if digest.scheduled_at else None,
    )
    return page, 422 if form.errors or schedule_form.errors else 200


def _addable(newsletter: Newsletter, chosen: Sequence[Item]) -> list[Item]:
    """The newsletter's latest items that are not in the digest, newest first."""
    taken = {item.id for item in chosen}
    latest = news_items.items_since(db.session, newsletter, None, limit=ADDABLE)
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


def _in_utc(local: datetime, newsletter: Newsletter) -> datetime:
    """A wall-clock time in the newsletter's time zone, as a moment in UTC."""
    return local.replace(tzinfo=_zone(newsletter)).astimezone(UTC)


def _zone(newsletter: Newsletter | None) -> tzinfo:
    """The newsletter's time zone; UTC if its name is not one this machine knows, or for a
    combined edition (its lists may each have their own)."""
    if newsletter is None:
        return UTC
    try:
        return cadence.zone(newsletter.timezone or "UTC")
    except cadence.CadenceError:
        return UTC


def _rendered(digest: Digest) -> tuple[str, str]:
    """The digest's text and HTML parts as a reader gets them, with placeholder links."""
    links = Links.from_config(current_app.config)
    # A test's links: they open a page that says so rather than touch anyone's subscription.
    preferences = links.preferences_url(TEST_READER)
    if digest.newsletter is None:
        # A combined edition as a reader of every list it carries gets it.
        combined = digest_mail.CombinedContent(
            digest.frequency or "",
            digest.subject,
            digest.intro,
            digest_mail.sections(digest.lists, digest.items),
        )
        ids = [n.id for n in digest.lists]
        list_urls = {i: links.unsubscribe_url(TEST_READER, i) for i in ids}
        everything = links.unsubscribe_url(TEST_READER, ids)
        return digest_mail.render(combined, everything, preferences, list_urls)
    content = digest_mail.Content(digest.newsletter, digest.subject, digest.intro, digest.items)
    web_path = archive.mail_path(digest)
    view_url = None
    if web_path is not None and digest.newsletter.archive_public:
        view_url = links.base_url + web_path
    elif web_path is not None:
        view_url = links.archive_url(web_path, TEST_READER, digest.newsletter.id)
    return digest_mail.render(
        content,
        links.unsubscribe_url(TEST_READER, digest.newsletter.id),
        preferences,
        view_url=view_url,
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


class _BadConfirmation(Exception):
    """A confirmation token that is missing, forged, for something else, or too old."""


def _confirmations() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        current_app.config["SECRET_KEY"], salt="newsletter.digest-confirmation"
    )


def _confirmation(digest: Digest, action: str, when: datetime | None) -> str:
    """The token of one confirmation page's button: this digest as shown, this editor, this act."""
    return str(
        _confirmations().dumps(
            {
                "d": digest.id,
                "a": action,
                "f": states.fingerprint(digest),
                "w": when.isoformat() if when else None,
                "u": current_user.id,
            }
        )
    )


def _confirmed(digest: Digest, action: str) -> tuple[str, datetime | None]:
    """The fingerprint and time the editor confirmed, read from the posted token."""
    token = request.form.get("confirmation") or ""
    if not token:
        raise _BadConfirmation(_("Confirm on this page first: nothing has been done yet."))
    try:
        payload = _confirmations().loads(token, max_age=CONFIRMATION_MAX_AGE)
    except SignatureExpired as exc:
        raise _BadConfirmation(
            _("That confirmation was more than an hour old: check the details and confirm again.")
        ) from exc
    except BadSignature as exc:
        raise _BadConfirmation(_("That confirmation was not valid: confirm again.")) from exc
    if (
        not isinstance(payload, dict)
        or payload.get("d") != digest.id
        or payload.get("a") != action
        or payload.get("u") != current_user.id
        or not isinstance(payload.get("f"), str)
    ):
        raise _BadConfirmation(_("That confirmation was not valid: confirm again."))
    when = payload.get("w")
    return payload["f"], datetime.fromisoformat(when) if isinstance(when, str) else None


def _confirm_page(
    digest: Digest, newsletter: Newsletter, action: str, when: datetime | None
) -> str:
    """What the editor is about to do, with the one button that does it."""
    zone = _zone(newsletter)
    moment = (when or utcnow()).astimezone(zone)
    return render_template(
        "admin/digest_confirm.html",
        digest=digest,
        action=action,
        readers=states.audience_size(db.session, newsletter, digest.frequency),
        local=moment,
        utc=when,
        zone_name=newsletter.timezone or "UTC",
        confirmation=_confirmation(digest, action, when),
        when_value=moment.strftime("%Y-%m-%dT%H:%M") if when else None,
    )


def _refused(digest: Digest, message: str) -> Response:
    flash(message)
    return redirect(url_for("admin.digest", digest_id=digest.id))


def _by_hand(digest_id: int) -> tuple[Digest, Newsletter | None]:
    """The digest and its list; no list for a combined edition, which only its schedule sends."""
    digest = db.get_or_404(Digest, digest_id)
    if digest.newsletter is None:
        flash(_("A combined edition goes on the site's schedule: it is not sent by hand."))
    return digest, digest.newsletter


@bp.get("/digests/<int:digest_id>/send")
def digest_confirm_send(digest_id: int) -> str | Response:
    """Ask before sending: the newsletter, the readers it reaches, the subject, the time."""
    digest, newsletter = _by_hand(digest_id)
    if newsletter is None:
        return redirect(url_for("admin.digest", digest_id=digest.id))
    try:
        states.ready(digest)
    except states.DigestError as exc:
        return _refused(digest, exc.message)
    return _confirm_page(digest, newsletter, "send", None)


@bp.post("/digests/<int:digest_id>/start")
def digest_start(digest_id: int) -> Response:
    """Snapshot the confirmed readers and start sending: only with the confirmation's token."""
    digest, newsletter = _by_hand(digest_id)
    if newsletter is None:
        return redirect(url_for("admin.digest", digest_id=digest.id))
    try:
        seen, _when = _confirmed(digest, "send")
    except _BadConfirmation as exc:
        flash(str(exc))
        return redirect(url_for("admin.digest_confirm_send", digest_id=digest.id))
    try:
        readers = states.start(db.session, digest, seen=seen)
    except states.DigestError as exc:
        return _refused(digest, exc.message)
    flash(
        ngettext(
            "Sending to %(readers)s reader.",
            "Sending to %(readers)s readers.",
            readers,
            readers=format_decimal(readers),
        )
    )
    return redirect(url_for("admin.digest", digest_id=digest.id))


@bp.get("/digests/<int:digest_id>/schedule")
def digest_confirm_schedule(digest_id: int) -> str | Response:
    """Ask before scheduling: the newsletter, the readers, the subject, the time in its zone."""
    digest, newsletter = _by_hand(digest_id)
    if newsletter is None:
        return redirect(url_for("admin.digest", digest_id=digest.id))
    form = ScheduleForm(formdata=request.args, meta={"csrf": False})
    if not form.validate():
        return _refused(digest, _("Choose a day and a time."))
    when = _in_utc(form.when.data, newsletter)
    try:
        states.ready(digest)
        states.check_time(when)
    except states.DigestError as exc:
        return _refused(digest, exc.message)
    return _confirm_page(digest, newsletter, "schedule", when)


@bp.post("/digests/<int:digest_id>/schedule")
def digest_schedule(digest_id: int) -> Response:
    """Schedule the digest at the confirmed time: only with the confirmation's token."""
    digest, newsletter = _by_hand(digest_id)
    if newsletter is None:
        return redirect(url_for("admin.digest", digest_id=digest.id))
    try:
        seen, when = _confirmed(digest, "schedule")
    except _BadConfirmation as exc:
        flash(str(exc))
        return redirect(
            url_for(
                "admin.digest_confirm_schedule",
                digest_id=digest.id,
                when=request.form.get("when") or None,
            )
        )
    if when is None:
        return _refused(digest, _("Choose a day and a time."))
    try:
        states.schedule(db.session, digest, when, seen=seen)
    except states.DigestError as exc:
        return _refused(digest, exc.message)
    local = when.astimezone(_zone(newsletter))
    shown = format_datetime(local, "d MMMM y, HH:mm", rebase=False)
    flash(_("Scheduled for %(when)s (%(zone)s).", when=shown, zone=newsletter.timezone))
    return redirect(url_for("admin.digest", digest_id=digest.id))


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


@bp.route("/digests/<int:digest_id>/cancel", methods=["GET", "POST"])
def digest_cancel(digest_id: int) -> str | Response:
    """Ask first, then send nothing more of this digest."""
    digest = db.get_or_404(Digest, digest_id)
    if "cancel" not in states.actions(digest):
        return _refused(digest, _("This digest has already been sent or cancelled."))
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template(
            "admin/digest_cancel.html",
            digest=digest,
            label=str(states.LABELS[digest.status]),
            readers=digest.recipients,
        )
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

"""Subscribers: search, one person's record and the actions on it, CSV export. Admins only."""

from __future__ import annotations

import json

import ua_parser
from flask import (
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import format_decimal
from flask_babel import gettext as _
from flask_login import current_user

from newsletter import exports
from newsletter import subscribers as people
from newsletter import subscriptions as subs
from newsletter.extensions import db
from newsletter.models import Subscriber, Subscription, SubscriptionStatus
from newsletter.newsletters import open_newsletters
from newsletter.web import signup
from newsletter.web.admin.core import admin_only, bp


@bp.app_template_filter("browser")
def browser(user_agent: str | None) -> str:
    """A browser as a person names it ("Firefox 133, Windows") from its user agent string."""
    if not user_agent:
        return "—"
    found = ua_parser.parse(user_agent[:1000])
    agent, system = found.user_agent, found.os
    if agent is None:
        return user_agent[:40] + ("…" if len(user_agent) > 40 else "")
    name = f"{agent.family} {agent.major}" if agent.major else agent.family
    return f"{name}, {system.family}" if system is not None else name


def _filter() -> people.Filter:
    statuses = {s.value for s in SubscriptionStatus}
    status = request.args.get("status", "")
    return people.Filter(
        search=signup.printable(request.args.get("q"), 254).strip(),
        newsletter=signup.printable(request.args.get("newsletter"), 64),
        status=status if status in statuses else "",
    )


@bp.get("/subscribers")
@admin_only
def subscribers() -> str:
    """People, newest first, each with their lists; searched and filtered, a page at a time."""
    where = _filter()
    before = request.args.get("before", type=int)
    found, total, next_before = people.people_page(db.session, where, before)
    return render_template(
        "admin/subscribers.html",
        people=found,
        total=total,
        total_text=format_decimal(total),
        where=where,
        next_before=next_before,
        newsletters=open_newsletters(db.session),
        statuses=[s.value for s in SubscriptionStatus],
    )


@bp.get("/subscribers/export.csv")
@admin_only
def subscribers_export() -> Response:
    """The filtered list as CSV, streamed; the export itself is recorded."""
    rows = exports.audited_rows(db.session, _filter(), current_user.id)
    return Response(
        stream_with_context(exports.csv_chunks(rows)),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


@bp.get("/subscribers/<int:subscriber_id>")
@admin_only
def subscriber(subscriber_id: int) -> str:
    """One person: every subscription, the whole consent trail, the mails sent to them."""
    person = db.get_or_404(Subscriber, subscriber_id)
    return render_template(
        "admin/subscriber.html",
        person=person,
        can_unsubscribe=subs.can_unsubscribe,
        can_resend=subs.can_resend_confirmation(person),
        trail=db.session.execute(people.consent_trail(person.id)).all(),
        mails=people.mail_history(db.session, person.id),
    )


def _origin() -> subs.Origin:
    return signup.consent_origin(f"admin:{current_user.email}")


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe/<int:subscription_id>")
@admin_only
def subscriber_unsubscribe(subscriber_id: int, subscription_id: int) -> Response:
    """Take a person off one list, as if they had pressed unsubscribe."""
    subscription = db.get_or_404(Subscription, subscription_id)
    if subscription.subscriber_id != subscriber_id:
        abort(404)
    subs.unsubscribe(db.session, subscription, _origin())
    flash(_("Unsubscribed from %(name)s.", name=subscription.newsletter.name))
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))


@bp.post("/subscribers/<int:subscriber_id>/resend")
@admin_only
def subscriber_resend(subscriber_id: int) -> Response:
    """Send the confirmation mail again, within the per-address limit."""
    person = db.get_or_404(Subscriber, subscriber_id)
    try:
        pending = subs.send_confirmation(
            db.session, person, person.subscriptions, _origin(), signup.confirmation_limit()
        )
    except subs.SubscriptionError as exc:
        flash(exc.message)
    else:
        names = ", ".join(s.newsletter.name for s in pending)
        flash(_("Confirmation mail queued for %(names)s.", names=names))
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))


@bp.get("/subscribers/<int:subscriber_id>/data.json")
@admin_only
def subscriber_data(subscriber_id: int) -> Response:
    """Everything kept about this person, as JSON, for a data request."""
    person = db.get_or_404(Subscriber, subscriber_id)
    data = people.person_data(db.session, person)
    people.record(db.session, current_user.id, "export_person", subscriber_id=person.id)
    db.session.commit()
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="subscriber-{person.id}.json"'},
    )


@bp.post("/subscribers/<int:subscriber_id>/erase")
@admin_only
def subscriber_erase(subscriber_id: int) -> Response:
    """Delete this person for good; only a hash stays, so an import cannot bring them back."""
    person = db.get_or_404(Subscriber, subscriber_id)
    if request.form.get("confirm") != "erase":
        flash(_("Tick the box to confirm the erasure."))
        return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))
    people.erase(db.session, person, current_user.id)
    flash(_("The subscriber was erased."))
    return redirect(url_for("admin.subscribers"))

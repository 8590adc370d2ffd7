"""Suppressed addresses: the list (masked), a search by exact address, lifting one. Admins."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from werkzeug.wrappers import Response

from newsletter import subscribers as people
from newsletter import suppression
from newsletter.errors import UserError
from newsletter.extensions import db
from newsletter.web import signup
from newsletter.web.admin.core import admin_only, bp


@bp.get("/suppressions")
@admin_only
def suppressions() -> str:
    """The latest suppressions, or the one of an exact address searched for."""
    query = signup.printable(request.args.get("q"), 254).strip()
    found = people.suppressions(db.session, query) if query else None
    return render_template(
        "admin/suppressions.html",
        rows=people.suppressions(db.session) if found is None else found,
        query=query,
        lifts=suppression.STOPS_MAIL,
    )


@bp.post("/suppressions/lift")
@admin_only
def suppression_lift() -> Response:
    """Let an address be mailed again, saying why."""
    email = signup.printable(request.form.get("email"), 254)
    try:
        reason = people.lift_suppression(
            db.session, email, current_user.id, request.form.get("why") or ""
        )
    except UserError as exc:
        flash(exc.message)
    else:
        flash(_("Mail may go to that address again (it was suppressed: %(why)s).", why=reason))
    return redirect(url_for("admin.suppressions", q=email))

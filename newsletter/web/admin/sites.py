"""Host sites: the sites whose pages may embed the boxes with inline replies. Admins only."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from newsletter import origins
from newsletter.extensions import db
from newsletter.models import AllowedOrigin
from newsletter.web import cors
from newsletter.web.admin.core import admin_only, bp


class SiteForm(FlaskForm):
    origin = StringField(
        lazy_gettext("Site"),
        description=lazy_gettext(
            "The site's origin: https:// and the host, such as https://news.example.org "
            "(and :port when it is not the usual one)."
        ),
        validators=[
            DataRequired(message=lazy_gettext("Enter the site's origin.")),
            Length(max=300),
        ],
    )
    note = StringField(
        lazy_gettext("Note"),
        description=lazy_gettext("Whose site it is, or why it is listed."),
        validators=[Length(max=origins.MAX_NOTE)],
    )


def _configured() -> list[str]:
    return sorted(origins.configured(current_app.config["ALLOWED_ORIGINS"]))


@bp.route("/sites", methods=["GET", "POST"])
@admin_only
def sites() -> Response | str | tuple[str, int]:
    """The allowed host sites; list one more."""
    form = SiteForm(origin=request.args.get("origin", "")[:300] or None)
    if form.validate_on_submit():
        try:
            row = origins.add(
                db.session, form.origin.data, form.note.data, current_user.id, _configured()
            )
        except origins.OriginError as exc:
            form.origin.errors = [*form.origin.errors, exc.message]
        else:
            cors.forget()
            flash(
                _(
                    "%(site)s is listed: its pages get inline replies and readers back.",
                    site=row.origin,
                )
            )
            return redirect(url_for("admin.sites"))
    page = render_template(
        "admin/sites.html",
        form=form,
        configured=_configured(),
        listed=origins.listed(db.session),
    )
    return page, 422 if form.errors else 200


@bp.post("/sites/<int:site_id>/remove")
@admin_only
def site_remove(site_id: int) -> Response:
    """Take a site off the list."""
    row = db.get_or_404(AllowedOrigin, site_id)
    origin = row.origin
    origins.remove(db.session, row, current_user.id)
    cors.forget()
    flash(_("%(site)s is no longer listed.", site=origin))
    return redirect(url_for("admin.sites"))


@dataclass(frozen=True)
class SiteCheck:
    """What the embed snippet will do on a site, as the newsletter page says it."""

    given: str
    origin: str | None = None
    error: str | None = None
    listed: bool = False
    # Where an admin lists the site; None for editors, who cannot.
    add_url: str | None = None


@bp.app_template_global()
def snippet_site(text: str) -> SiteCheck:
    """Check the site a snippet is meant for: an origin, and listed or not."""
    given = (text or "").strip()[:300]
    if not given:
        return SiteCheck(given)
    try:
        origin = origins.normalise(given)
    except origins.OriginError as exc:
        return SiteCheck(given, error=exc.message)
    listed = origin in cors.allowed_origins()
    add_url = None
    if not listed and current_user.is_admin:
        add_url = url_for("admin.sites", origin=origin)
    return SiteCheck(given, origin, listed=listed, add_url=add_url)

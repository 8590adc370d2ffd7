"""The site's brand: name, logo, accent colour, home page, postal address, sender. Admins only."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import StringField, TextAreaField

from newsletter import frequencies, site
from newsletter.digests import cadence, combined
from newsletter.extensions import db
from newsletter.web.admin.core import admin_only, bp
from newsletter.web.admin.forms import WEEKDAYS


class SiteSettingsForm(FlaskForm):
    # Lengths and formats are checked by site.check, the one place that knows them.
    name = StringField(
        lazy_gettext("Site name"),
        description=lazy_gettext(
            "As readers know the site: the pages' header, \u201cBack to \u2026\u201d, and every "
            "mail's masthead and footer."
        ),
    )
    logo_url = StringField(
        lazy_gettext("Logo address"),
        description=lazy_gettext(
            "An https:// address of an image about 40 pixels high; empty: the name in letters."
        ),
    )
    accent_colour = StringField(
        lazy_gettext("Accent colour"),
        description=lazy_gettext(
            "A hex colour such as #0b57d0, for buttons and links; white text must be readable "
            "on it."
        ),
    )
    home_url = StringField(
        lazy_gettext("Home page"),
        description=lazy_gettext("Where \u201cBack to the site\u201d leads readers."),
    )
    postal_address = TextAreaField(
        lazy_gettext("Postal address of the publisher"),
        description=lazy_gettext(
            "At the foot of every mail, as anti-spam laws and the large mailbox providers ask."
        ),
    )
    from_name = StringField(
        lazy_gettext("Default sender name"),
        description=lazy_gettext("For mails about several lists, and lists without their own."),
    )
    from_address = StringField(
        lazy_gettext("Default sender address"),
        description=lazy_gettext(
            "Best at the site's own domain, which its DKIM and SPF records vouch for."
        ),
    )


@bp.route("/settings", methods=["GET", "POST"])
@admin_only
def site_settings() -> Response | tuple[str, int]:
    """The brand every public page and every mail carries; change it."""
    current = site.current()
    form = SiteSettingsForm(data=current.stored)
    if form.validate_on_submit():
        values = {name: getattr(form, name).data for name in site.FIELDS}
        try:
            changes = site.save(
                db.session,
                values,
                current_user.id,
                dkim_domain=current_app.config.get("DKIM_DOMAIN")
                if current_app.config.get("DKIM_PRIVATE_KEY")
                else None,
            )
        except site.InvalidSettings as exc:
            for name, message in exc.errors.items():
                getattr(form, name).errors = [message]
        else:
            site.forget()
            flash(_("The site settings are saved.") if changes else _("Nothing changed."))
            return redirect(url_for("admin.site_settings"))
    return _page(form, current, {})


def _page(form: SiteSettingsForm, current: site.Site, errors: dict[str, str]) -> tuple[str, int]:
    page = render_template(
        "admin/site_settings.html",
        form=form,
        current=current,
        editions=combined.editions(db.session),
        weekdays=WEEKDAYS,
        edition_errors=errors,
    )
    return page, 422 if form.errors or errors else 200


@bp.post("/settings/combined")
@admin_only
def combined_editions() -> Response | tuple[str, int]:
    """When the combined daily and weekly editions go, and whether they go by themselves."""
    errors: dict[str, str] = {}
    changed = []
    for frequency in frequencies.EDITIONS:
        values = {
            "automatic": request.form.get(f"{frequency}-automatic") == "on",
            "send_time": request.form.get(f"{frequency}-send_time", ""),
            "timezone": request.form.get(f"{frequency}-timezone", ""),
            "send_weekday": request.form.get(f"{frequency}-send_weekday", "0"),
        }
        try:
            if combined.update_settings(db.session, frequency, values, current_user.id):
                changed.append(frequency)
        except cadence.CadenceError as exc:
            db.session.rollback()
            errors[frequency] = exc.message
    if errors:
        current = site.current()
        return _page(SiteSettingsForm(data=current.stored), current, errors)
    flash(_("The combined editions are saved.") if changed else _("Nothing changed."))
    return redirect(url_for("admin.site_settings"))

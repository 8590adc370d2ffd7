"""Newsletters: list, create, edit, archive, and the embed snippet of each."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from werkzeug.wrappers import Response

from newsletter import frequencies, texts
from newsletter import newsletters as lists
from newsletter.addresses import InvalidSender
from newsletter.digests import feeds
from newsletter.extensions import db
from newsletter.models import Newsletter
from newsletter.web import challenge, signup
from newsletter.web.admin import embed
from newsletter.web.admin.core import admin_only, bp
from newsletter.web.admin.forms import (
    EDITION_FIELDS,
    OTHER_LANGUAGES,
    WEEKDAYS,
    NewsletterForm,
)


@bp.get("/newsletters")
def newsletters() -> str:
    """Every newsletter, open ones first."""
    return render_template("admin/newsletters.html", newsletters=lists.all_newsletters(db.session))


@bp.route("/newsletters/new", methods=["GET", "POST"])
@admin_only
def newsletter_new() -> str | Response | tuple[str, int]:
    """Create a newsletter."""
    return _edit(None, NewsletterForm())


@bp.route("/newsletters/<int:newsletter_id>/edit", methods=["GET", "POST"])
@admin_only
def newsletter_edit(newsletter_id: int) -> str | Response | tuple[str, int]:
    """Change a newsletter's settings and texts."""
    newsletter = db.get_or_404(Newsletter, newsletter_id)
    return _edit(newsletter, NewsletterForm(obj=newsletter))


def _edit(newsletter: Newsletter | None, form: NewsletterForm) -> str | Response | tuple[str, int]:
    if newsletter is not None and not form.is_submitted():
        for lang in OTHER_LANGUAGES:
            form.show_version(lang, texts.version(db.session, newsletter, lang))
        form.show_editions(newsletter.editions)
    if form.validate_on_submit():
        values = {field: getattr(form, field).data for field in lists.FIELDS}
        values["slug"] = values["slug"].strip()
        values["feed_url"] = (values["feed_url"] or "").strip() or None
        values["frequencies"] = frequencies.join(form.frequencies.data or [])
        values["default_frequency"] = form.default_frequency.data or None
        values["weekly_max_items"] = form.weekly_max_items.data or 10
        editions = {f: form.edition_values(f) for f in EDITION_FIELDS}
        values["alert_categories"] = feeds.join_categories(values["alert_categories"])
        try:
            saved = lists.save(db.session, newsletter, values, editions)
        except lists.SlugTaken as exc:
            form.slug.errors.append(exc.message)
        except InvalidSender as exc:
            # The form checks each address already; this is the rule's own refusal.
            db.session.rollback()
            form.from_address.errors.append(exc.message)
        else:
            for lang in OTHER_LANGUAGES:
                texts.save(db.session, saved, lang, form.version_values(lang))
            challenge.forget()
            signup.forget_lists()
            flash(_("Saved %(name)s.", name=saved.name))
            return redirect(url_for("admin.newsletter", newsletter_id=saved.id))
    status = 422 if form.errors else 200
    page = render_template(
        "admin/newsletter_form.html",
        form=form,
        newsletter=newsletter,
    )
    return page, status


@bp.get("/newsletters/<int:newsletter_id>")
def newsletter(newsletter_id: int) -> str:
    """One newsletter: its settings and the snippet a site developer pastes."""
    newsletter = db.get_or_404(Newsletter, newsletter_id)
    return embed.render_section(
        "admin/newsletter.html",
        newsletter=newsletter,
        snippet=embed.newsletter_snippet(newsletter),
        weekdays=WEEKDAYS,
    )


@bp.post("/newsletters/<int:newsletter_id>/archive")
@admin_only
def newsletter_archive(newsletter_id: int) -> Response:
    """Close a newsletter to new signups, or open it again."""
    newsletter = db.get_or_404(Newsletter, newsletter_id)
    lists.set_archived(db.session, newsletter, not newsletter.archived)
    challenge.forget()
    signup.forget_lists()
    if newsletter.archived:
        flash(_("%(name)s is archived.", name=newsletter.name))
    else:
        flash(_("%(name)s is open again.", name=newsletter.name))
    return redirect(url_for("admin.newsletter", newsletter_id=newsletter.id))


@bp.post("/newsletters/<int:newsletter_id>/pull-feed")
def newsletter_pull_feed(newsletter_id: int) -> Response:
    """Fetch the newsletter's feed now and add its new items."""
    newsletter = db.get_or_404(Newsletter, newsletter_id)
    added = feeds.pull(db.session, newsletter)
    if newsletter.feed_error:
        flash(_("The feed could not be read: %(error)s", error=newsletter.feed_error))
    else:
        flash(
            ngettext("%(num)d new item from the feed.", "%(num)d new items from the feed.", added)
        )
    return redirect(url_for("admin.newsletter", newsletter_id=newsletter.id))

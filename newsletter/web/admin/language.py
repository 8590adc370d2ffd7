"""The admin's language switch, and the names of states and settings in the editor's language."""

from __future__ import annotations

from flask import redirect, request, session, url_for
from flask_babel import lazy_gettext
from werkzeug.wrappers import Response

from newsletter import frequencies, languages
from newsletter.web.admin.core import bp
from newsletter.web.language import ADMIN_KEY

# The states of subscriptions, digests and imports as the admin pages name them.
STATE_NAMES = {
    "pending": lazy_gettext("pending"),
    "confirmed": lazy_gettext("confirmed"),
    "unsubscribed": lazy_gettext("unsubscribed"),
    "bounced": lazy_gettext("bounced"),
    "complained": lazy_gettext("complained"),
    "draft": lazy_gettext("draft"),
    "scheduled": lazy_gettext("scheduled"),
    "sending": lazy_gettext("sending"),
    "paused": lazy_gettext("paused"),
    "sent": lazy_gettext("sent"),
    "cancelled": lazy_gettext("cancelled"),
    "queued": lazy_gettext("queued"),
    "running": lazy_gettext("running"),
    "done": lazy_gettext("done"),
    "failed": lazy_gettext("failed"),
}
CADENCE_NAMES = {
    "daily": lazy_gettext("daily"),
    "weekly": lazy_gettext("weekly"),
    "monthly": lazy_gettext("monthly"),
}
# What kind of mailing a digest is, when it is not a plain one.
DIGEST_KINDS = {"alert": lazy_gettext("breaking alert")}
ROLE_NAMES = {"admin": lazy_gettext("admin"), "editor": lazy_gettext("editor")}
# The languages named in the editor's language (the switch names each in itself).
LANGUAGE_NAMES = {"en": lazy_gettext("English"), "uk": lazy_gettext("Ukrainian")}


@bp.app_context_processor
def _names() -> dict[str, object]:
    return {
        "state_names": STATE_NAMES,
        "cadence_names": CADENCE_NAMES,
        "frequency_labels": frequencies.EDITION_LABELS,
        "edition_name": frequencies.edition_name,
        "editions_of": frequencies.editions,
        "digest_kinds": DIGEST_KINDS,
        "role_names": ROLE_NAMES,
        "language_names": LANGUAGE_NAMES,
    }


@bp.post("/language")
def language() -> Response:
    """Keep the editor's choice of language in the session, and go back to the page."""
    chosen = languages.known(request.form.get("lang"))
    if chosen:
        session[ADMIN_KEY] = chosen
    back = request.form.get("next") or ""
    if not back.startswith("/admin/") or "\\" in back:
        back = url_for("admin.dashboard")  # never an address on another site
    return redirect(back, 303)

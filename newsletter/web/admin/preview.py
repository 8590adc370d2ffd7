"""The digest's HTML part alone, for the preview page's frame, under a policy of its own."""

from __future__ import annotations

from flask import Response, current_app

from newsletter.extensions import db
from newsletter.mail import digest_mail
from newsletter.models import Digest
from newsletter.web.admin.core import bp


@bp.get("/digests/<int:digest_id>/preview.html")
def digest_preview_html(digest_id: int) -> Response:
    """The mail's HTML as a reader's client renders it; framed by the admin only."""
    digest = db.get_or_404(Digest, digest_id)
    base = current_app.config["BASE_URL"].rstrip("/")
    content = digest_mail.Content(digest.newsletter, digest.subject, digest.intro, digest.items)
    _text, html = digest_mail.render(
        content, f"{base}/unsubscribe/preview", f"{base}/preferences/preview"
    )
    return Response(html, content_type="text/html; charset=utf-8")

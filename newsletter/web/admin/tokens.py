"""API tokens: make one (shown once), list them, revoke one. Admins only."""

from __future__ import annotations

from flask import flash, make_response, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import current_user
from werkzeug.wrappers import Response

from newsletter import api_tokens
from newsletter.extensions import db
from newsletter.models import ApiToken
from newsletter.web.admin.core import admin_only, bp
from newsletter.web.admin.forms import TokenForm


@bp.route("/tokens", methods=["GET", "POST"])
@admin_only
def tokens() -> Response:
    """Every token; a new one is shown on this page once and never again."""
    form = TokenForm()
    created, secret = None, None
    if form.validate_on_submit():
        try:
            created, secret = api_tokens.create_token(db.session, form.name.data, current_user.id)
        except api_tokens.ApiTokenError as exc:
            form.name.errors.append(exc.message)
        else:
            form = TokenForm(formdata=None)
    page = render_template(
        "admin/tokens.html",
        form=form,
        tokens=api_tokens.all_tokens(db.session),
        created=created,
        secret=secret,
    )
    response = make_response(page, 422 if form.errors else 200)
    # The page may carry a token: no copy in any cache or the browser's history store.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/tokens/<int:token_id>/revoke")
@admin_only
def token_revoke(token_id: int) -> Response:
    """Stop a token from working, for good."""
    token = db.get_or_404(ApiToken, token_id)
    api_tokens.revoke(db.session, token)
    flash(_("The token %(name)s (%(prefix)s…) is revoked.", name=token.name, prefix=token.prefix))
    return redirect(url_for("admin.tokens"))

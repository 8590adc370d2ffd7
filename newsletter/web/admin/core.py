"""The admin blueprint and its access rules."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, abort, redirect, request, url_for
from flask_login import current_user

from newsletter.extensions import db, login
from newsletter.models import AdminUser

bp = Blueprint("admin", __name__, url_prefix="/admin")
OPEN_ENDPOINTS = {"admin.login", "admin.set_password"}


@login.user_loader
def _load_user(user_id: str) -> AdminUser | None:
    # "id:token": a cookie issued before the account's last sign-out, password change or
    # deactivation carries an old token and opens nothing.
    ident, _, token = user_id.partition(":")
    if not ident.isdigit() or not token:
        return None
    user = db.session.get(AdminUser, int(ident))
    if user is None or not user.active:
        return None
    return user if hmac.compare_digest(user.session_token, token) else None


def register(app: Flask) -> None:
    """The admin's pages, with what Flask-Login adds to every page on theirs only: the
    signed-in account for the templates (see `login.init_app`) and the step after each
    answer that sets or clears a remember cookie. Nobody signs in or out anywhere else, and
    on every answer both read the session, which marked even a signup's `Vary: Cookie`."""
    app.register_blueprint(bp)
    everywhere = app.after_request_funcs.get(None, [])
    step = login._update_remember_cookie
    if step in everywhere:
        everywhere.remove(step)
        app.after_request_funcs.setdefault(bp.name, []).append(step)


@bp.context_processor
def _signed_in_account() -> dict[str, Any]:
    return {"current_user": current_user}


@bp.before_request
def _signed_in_only() -> Any:
    """Every admin page needs a signed-in account; the sign-in page is the one exception."""
    if request.endpoint in OPEN_ENDPOINTS or current_user.is_authenticated:
        return None
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


def admin_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse editors: accounts, imports and erasure are for admins."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapped

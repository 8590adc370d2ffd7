"""Signing in and out, and changing one's password."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_limiter.util import get_remote_address
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response
from wtforms import PasswordField
from wtforms.validators import DataRequired, EqualTo, Length

from newsletter import accounts
from newsletter.extensions import db, limiter
from newsletter.languages import N_
from newsletter.web.admin.core import bp
from newsletter.web.admin.forms import LoginForm

# Marked for the catalogue (N_) and translated where they are shown.
WRONG = N_("Wrong email or password.")
TOO_MANY_HERE = N_(
    "Too many failed sign-ins to this account from your network. "
    "Please wait a few minutes and try again."
)
TOO_MANY_EVERYWHERE = N_(
    "This account has had too many failed sign-ins from many places and is locked for a while. "
    "Please try again in an hour, or ask another admin to help."
)


def _address_limit() -> str:
    return str(current_app.config["LOGIN_ADDRESS_RATE_LIMIT"])


def _pair_limit() -> str:
    return str(current_app.config["LOGIN_RATE_LIMIT"])


def _account_limit() -> str:
    return str(current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"])


def _account() -> str:
    return (request.form.get("email") or "").strip().lower()[:254]


def _pair_key() -> str:
    # Guesses from one place count against that place only: the owner elsewhere gets in.
    return f"account:{_account()}|from:{get_remote_address()}"


def _account_key() -> str:
    # Guesses from many places still meet a slower limit on the account itself.
    return "account:" + _account()


def _failed(response: Response) -> bool:
    return response.status_code == 401


def _safe_next(target: str | None) -> str:
    """Only go back to a page of the admin area: never to another site."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_address_limit, methods=["POST"])
@limiter.limit(
    _pair_limit,
    methods=["POST"],
    key_func=_pair_key,
    deduct_when=_failed,
    error_message=lambda: _(TOO_MANY_HERE),
)
@limiter.limit(
    _account_limit,
    methods=["POST"],
    key_func=_account_key,
    deduct_when=_failed,
    error_message=lambda: _(TOO_MANY_EVERYWHERE),
)
def login() -> str | Response | tuple[str, int]:
    """The sign-in form; a wrong address and a wrong password get the same answer."""
    if current_user.is_authenticated:
        return redirect(url_for("admin.dashboard"))
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(db.session, form.email.data or "", form.password.data or "")
        if user is not None:
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        form.password.errors.append(_(WRONG))
        return render_template("admin/login.html", form=form), 401
    return render_template("admin/login.html", form=form), 400 if form.errors else 200


@bp.post("/logout")
def logout() -> Response:
    """Sign out everywhere (a POST with the CSRF token, so no other site can sign you out)."""
    # A copy of the cookie, from this browser or another, must open nothing afterwards.
    accounts.end_sessions(db.session, current_user._get_current_object())
    logout_user()
    flash(_("You are signed out."))
    return redirect(url_for("admin.login"))


class PasswordForm(FlaskForm):
    current = PasswordField(
        lazy_gettext("Current password"), validators=[DataRequired(), Length(max=500)]
    )
    new = PasswordField(
        lazy_gettext("New password"),
        validators=[DataRequired(), Length(min=accounts.MIN_PASSWORD_LENGTH, max=500)],
        description=lazy_gettext("At least %(n)d characters.", n=accounts.MIN_PASSWORD_LENGTH),
    )
    again = PasswordField(
        lazy_gettext("New password again"),
        validators=[
            DataRequired(),
            EqualTo("new", message=lazy_gettext("The two new passwords differ.")),
        ],
    )


@bp.route("/password", methods=["GET", "POST"])
@limiter.limit(
    _pair_limit, methods=["POST"], deduct_when=_failed, error_message=lambda: _(TOO_MANY_HERE)
)
def password() -> str | Response | tuple[str, int]:
    """Change one's own password; every other session of the account ends."""
    form = PasswordForm()
    user = current_user._get_current_object()
    if form.validate_on_submit():
        if not check_password_hash(user.password_hash, form.current.data or ""):
            form.current.errors.append(_("That is not your current password."))
            return render_template("admin/password.html", form=form), 401
        accounts.set_password(db.session, user, form.new.data or "")
        # This browser stays signed in under the account's new token; every other one is out.
        login_user(user)
        flash(_("Password changed. Every other session of this account is signed out."))
        return redirect(url_for("admin.dashboard"))
    return render_template("admin/password.html", form=form), 400 if form.errors else 200

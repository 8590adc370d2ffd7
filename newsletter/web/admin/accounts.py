"""Admin accounts in the admin: list, add, reset a password, deactivate, reactivate. Admins only.

Each change is recorded in the audit trail. An account can be added, or its password reset,
with a set-password link to hand to its owner instead of a password typed here.
"""

from __future__ import annotations

from flask import current_app, flash, make_response, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField, SelectField
from wtforms.fields import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Optional

from newsletter import accounts
from newsletter.extensions import db
from newsletter.models import AdminUser, Role
from newsletter.web.admin.core import admin_only, bp


def _initial_password() -> PasswordField:
    return PasswordField(
        lazy_gettext("Password"),
        description=lazy_gettext(
            "Leave it empty to get a set-password link to hand over instead (best: nobody but "
            "the owner then knows the password). At least %(n)d characters otherwise.",
            n=accounts.MIN_PASSWORD_LENGTH,
        ),
        validators=[
            Optional(),
            Length(
                min=accounts.MIN_PASSWORD_LENGTH,
                max=500,
                message=lazy_gettext(
                    "The password needs at least %(n)d characters.",
                    n=accounts.MIN_PASSWORD_LENGTH,
                ),
            ),
        ],
        render_kw={"autocomplete": "new-password"},
    )


# How the audit trail's account changes read on the accounts page.
ACTION_NAMES = {
    "account-added": lazy_gettext("added"),
    "account-reset": lazy_gettext("password reset"),
    "account-deactivated": lazy_gettext("deactivated"),
    "account-reactivated": lazy_gettext("reactivated"),
    "account-password-set": lazy_gettext("password chosen through the link"),
}


class AccountForm(FlaskForm):
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=254)])
    role = SelectField(
        lazy_gettext("Role"),
        choices=[
            SelectChoice(Role.EDITOR.value, lazy_gettext("editor: newsletters' items and digests")),
            SelectChoice(Role.ADMIN.value, lazy_gettext("admin: everything")),
        ],
        default=Role.EDITOR.value,
    )
    password = _initial_password()


class ResetForm(FlaskForm):
    password = _initial_password()


class SetPasswordForm(FlaskForm):
    new = PasswordField(
        lazy_gettext("New password"),
        validators=[DataRequired(), Length(min=accounts.MIN_PASSWORD_LENGTH, max=500)],
        description=lazy_gettext("At least %(n)d characters.", n=accounts.MIN_PASSWORD_LENGTH),
        render_kw={"autocomplete": "new-password"},
    )
    again = PasswordField(
        lazy_gettext("New password again"),
        validators=[
            DataRequired(),
            EqualTo("new", message=lazy_gettext("The two new passwords differ.")),
        ],
        render_kw={"autocomplete": "new-password"},
    )


def _link(user: AdminUser) -> str:
    token = accounts.password_token(user, current_app.config["SECRET_KEY"])
    return url_for("admin.set_password", token=token, _external=True)


def _page(template: str, status: int = 200, **context: object) -> Response:
    response = make_response(render_template(template, **context), status)
    # The page may carry a set-password link: no copy in any cache or history store.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/accounts", methods=["GET", "POST"])
@admin_only
def accounts_list() -> Response:
    """Every account, the latest changes to them, and the form that adds one."""
    form = AccountForm()
    added, link = None, None
    if form.validate_on_submit():
        try:
            added = accounts.create_admin(
                db.session,
                form.email.data or "",
                form.password.data or None,
                Role(form.role.data),
                by=current_user.id,
            )
        except accounts.AccountError as exc:
            form.email.errors = [*form.email.errors, exc.message]
        else:
            link = None if form.password.data else _link(added)
            form = AccountForm(formdata=None)
    every = accounts.all_accounts(db.session)
    return _page(
        "admin/accounts.html",
        422 if form.errors else 200,
        form=form,
        accounts=every,
        account_emails={a.id: a.email for a in every},
        account_actions=ACTION_NAMES,
        events=accounts.account_events(db.session),
        added=added,
        link=link,
    )


@bp.route("/accounts/<int:account_id>", methods=["GET", "POST"])
@admin_only
def account(account_id: int) -> Response:
    """One account: reset its password (typed here, or a link), deactivate or reactivate it."""
    user = db.get_or_404(AdminUser, account_id)
    form = ResetForm()
    link = None
    if form.validate_on_submit():
        accounts.reset_password(db.session, user, form.password.data or None, by=current_user.id)
        if form.password.data:
            flash(
                _("New password set for %(email)s; its sessions are signed out.", email=user.email)
            )
            return redirect(url_for("admin.account", account_id=user.id))
        link = _link(user)
        form = ResetForm(formdata=None)
    return _page("admin/account.html", 422 if form.errors else 200, user=user, form=form, link=link)


@bp.post("/accounts/<int:account_id>/deactivate")
@admin_only
def account_deactivate(account_id: int) -> Response:
    """Close the account and end its sessions at once."""
    user = db.get_or_404(AdminUser, account_id)
    try:
        accounts.deactivate(db.session, user, by=current_user.id)
    except accounts.AccountError as exc:
        flash(exc.message)
    else:
        flash(_("%(email)s is deactivated and signed out everywhere.", email=user.email))
    return redirect(url_for("admin.account", account_id=user.id))


@bp.post("/accounts/<int:account_id>/reactivate")
@admin_only
def account_reactivate(account_id: int) -> Response:
    """Open a closed account again."""
    user = db.get_or_404(AdminUser, account_id)
    accounts.reactivate(db.session, user, by=current_user.id)
    flash(_("%(email)s can sign in again.", email=user.email))
    return redirect(url_for("admin.account", account_id=user.id))


@bp.route("/set-password/<token>", methods=["GET", "POST"])
def set_password(token: str) -> Response | str | tuple[str, int]:
    """The page of a set-password link: its owner chooses a password, then signs in."""
    try:
        user = accounts.account_of_token(db.session, token, current_app.config["SECRET_KEY"])
    except accounts.AccountError as exc:
        title = _("This link cannot be used")
        return render_template("admin/message.html", title=title, text=exc.message), 410
    form = SetPasswordForm()
    if form.validate_on_submit():
        accounts.set_password_by_link(db.session, user, form.new.data or "")
        flash(_("Your password is set: sign in with it."))
        return redirect(url_for("admin.login"))
    page = render_template("admin/set_password.html", form=form, user=user)
    return page, 400 if form.errors else 200

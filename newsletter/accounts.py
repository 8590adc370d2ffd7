"""Admin accounts: creating them, checking a sign-in, passwords, and ending their sessions.

What an admin does to another account (add, reset a password, deactivate, reactivate) is
recorded in the audit trail with who did it.
"""

from __future__ import annotations

import hmac
import secrets

from flask_babel import gettext as _
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from newsletter.addresses import InvalidEmail, normalize_email
from newsletter.errors import UserError
from newsletter.models import AdminUser, AuditEvent, Role, new_nonce, utcnow

MIN_PASSWORD_LENGTH = 10
# How long a set-password link works, unless the account signs out or changes it first.
PASSWORD_LINK_MAX_AGE = 7 * 24 * 3600
# The audit trail's names for what is done to accounts.
ACCOUNT_ACTIONS = (
    "account-added",
    "account-reset",
    "account-deactivated",
    "account-reactivated",
    "account-password-set",
)
# Checked when no account matches, so a wrong address takes as long as a wrong password.
# Written out rather than made at import: hashing costs a quarter of a second on purpose, and
# every process (web, worker, each CLI command) would pay it at start. The hash of a random
# password nobody kept, with werkzeug's default method (as generate_password_hash makes them).
_NO_ACCOUNT = (
    "scrypt:32768:8:1$o0bVmr2JOaB2J3LI$c4b85e69b631ef6e7492a3ef59ff6f3b6d58164c7cb328"
    "a3f50eb6666f2acb5be6bea85258d6f1d7b0657743bab7707013164108785d2b2059a623be810b91"
    "79"
)


class AccountError(UserError):
    """An account cannot be made as asked; the message says why."""


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            _("The password needs at least %(n)d characters.", n=MIN_PASSWORD_LENGTH)
        )


def _unusable_hash() -> str:
    """A password hash nobody knows the password of: the account waits for its link."""
    return generate_password_hash(secrets.token_urlsafe(32))


def create_admin(
    session: Session,
    email: str,
    password: str | None,
    role: Role,
    *,
    by: int | None = None,
) -> AdminUser:
    """Add an account; commits. No password: it gets one through a set-password link.

    `by`: the admin account that adds it, for the audit trail (None: the command line).
    """
    try:
        address, key = normalize_email(email)
    except InvalidEmail as exc:
        raise AccountError(_("%(email)s is not a valid email address.", email=email)) from exc
    if password is not None:
        _check_password(password)
    hashed = generate_password_hash(password) if password is not None else _unusable_hash()
    user = AdminUser(email=key, password_hash=hashed, role=role)
    try:
        # A savepoint: two admins adding one address at once leave one account.
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:
        session.rollback()
        raise AccountError(_("There is already an account for %(email)s.", email=address)) from exc
    _audit(
        session,
        by,
        "account-added",
        user,
        role=str(role),
        password="given" if password is not None else "link",
    )
    session.commit()
    return user


def _audit(session: Session, by: int | None, action: str, user: AdminUser, **extra: str) -> None:
    session.add(
        AuditEvent(
            admin_user_id=by,
            action=action,
            detail={"account": user.email, "account_id": user.id, **extra},
        )
    )


def all_accounts(session: Session) -> list[AdminUser]:
    """Every account: active ones first, then by address."""
    return list(
        session.scalars(select(AdminUser).order_by(AdminUser.active.desc(), AdminUser.email))
    )


def account_events(session: Session, limit: int = 20) -> list[AuditEvent]:
    """The latest changes to accounts, newest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(ACCOUNT_ACTIONS))
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        )
    )


def authenticate(session: Session, email: str, password: str) -> AdminUser | None:
    """The account these credentials open, or None; records the sign-in; commits."""
    key = (email or "").strip().lower()
    # No account's address has a control character (PostgreSQL cannot even compare a NUL).
    lookup = key and key.isprintable()
    user = session.scalar(select(AdminUser).where(AdminUser.email == key)) if lookup else None
    if user is None:
        check_password_hash(_NO_ACCOUNT, password or "")
        return None
    if not check_password_hash(user.password_hash, password or "") or not user.active:
        return None
    user.last_login_at = utcnow()
    session.commit()
    return user


def end_sessions(session: Session, user: AdminUser) -> None:
    """Sign the account out everywhere: every session cookie issued so far opens nothing."""
    user.session_token = new_nonce()
    session.commit()


def set_password(session: Session, user: AdminUser, password: str) -> None:
    """Give the account a new password and end its sessions; commits."""
    _check_password(password)
    user.password_hash = generate_password_hash(password)
    end_sessions(session, user)


def reset_password(session: Session, user: AdminUser, password: str | None, *, by: int) -> None:
    """An admin gives the account a new password, or none until its link is used; commits.

    Either way its sessions end, and so does every set-password link made before.
    """
    if password is not None:
        _check_password(password)
    user.password_hash = generate_password_hash(password) if password else _unusable_hash()
    _audit(session, by, "account-reset", user, password="given" if password else "link")
    end_sessions(session, user)


def _active_admins(session: Session) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(AdminUser)
            .where(AdminUser.role == Role.ADMIN, AdminUser.active.is_(True))
        )
        or 0
    )


def deactivate(session: Session, user: AdminUser, *, by: int | None = None) -> None:
    """Close the account: it cannot sign in, and its open sessions end; commits.

    Nobody closes their own account, nor the last admin's: someone must be left to reopen.
    """
    if by is not None and user.id == by:
        raise AccountError(_("You cannot deactivate your own account."))
    if user.active and user.role == Role.ADMIN and _active_admins(session) <= 1:
        raise AccountError(_("This is the last active admin account: it stays open."))
    user.active = False
    _audit(session, by, "account-deactivated", user)
    end_sessions(session, user)


def reactivate(session: Session, user: AdminUser, *, by: int | None = None) -> None:
    """Open a closed account again; it signs in with its password as before; commits."""
    user.active = True
    _audit(session, by, "account-reactivated", user)
    session.commit()


def _password_links(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="newsletter.set-password")


def password_token(user: AdminUser, secret_key: str) -> str:
    """The token of the account's set-password link: good until the account's sessions end."""
    return str(_password_links(secret_key).dumps({"u": user.id, "t": user.session_token}))


def account_of_token(session: Session, token: str, secret_key: str) -> AdminUser:
    """The account a set-password link is for, while it still works; AccountError if not."""
    try:
        payload = _password_links(secret_key).loads(token, max_age=PASSWORD_LINK_MAX_AGE)
    except SignatureExpired as exc:
        raise AccountError(_("This link has expired: ask an admin for a new one.")) from exc
    except BadSignature as exc:
        raise AccountError(_("This link is broken: copy the whole link.")) from exc
    ident = payload.get("u") if isinstance(payload, dict) else None
    user = session.get(AdminUser, ident) if isinstance(ident, int) else None
    if (
        user is None
        or not user.active
        or not hmac.compare_digest(user.session_token, str(payload.get("t")))
    ):
        raise AccountError(
            _("This link has been used or replaced already: ask an admin for a new one.")
        )
    return user


def set_password_by_link(session: Session, user: AdminUser, password: str) -> None:
    """The account's owner chooses a password through their link, which then stops working."""
    _check_password(password)
    _audit(session, user.id, "account-password-set", user)
    set_password(session, user, password)

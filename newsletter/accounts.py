"""Admin accounts: creating them, checking a sign-in, passwords, and ending their sessions."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from newsletter.addresses import InvalidEmail, normalize_email
from newsletter.errors import UserError
from newsletter.models import AdminUser, Role, new_nonce, utcnow

MIN_PASSWORD_LENGTH = 10
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


def create_admin(session: Session, email: str, password: str, role: Role) -> AdminUser:
    """Add an account; commits."""
    try:
        address, key = normalize_email(email)
    except InvalidEmail as exc:
        raise AccountError(f"{email!r} is not a valid email address") from exc
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    user = AdminUser(email=key, password_hash=generate_password_hash(password), role=role)
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise AccountError(f"there is already an account for {address}") from exc
    return user


def authenticate(session: Session, email: str, password: str) -> AdminUser | None:
    """The account these credentials open, or None; records the sign-in; commits."""
    key = (email or "").strip().lower()
    user = session.scalar(select(AdminUser).where(AdminUser.email == key)) if key else None
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
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = generate_password_hash(password)
    end_sessions(session, user)


def deactivate(session: Session, user: AdminUser) -> None:
    """Close the account: it cannot sign in, and its open sessions end; commits."""
    user.active = False
    end_sessions(session, user)

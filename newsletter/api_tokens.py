"""Bearer tokens for the API: made and revoked by admins, kept only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from newsletter.errors import UserError
from newsletter.models import ApiToken, utcnow

# Recognisable in logs and secret scanners; the random part carries 256 bits.
TOKEN_PREFIX = "nlt_"
PREFIX_LENGTH = 12
# Every API call would otherwise write a row: note the use at most once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenError(UserError):
    """A token request the rules refuse; the message is fit to show an admin."""

    message = lazy_gettext("Something is wrong with this token.")


def hash_token(token: str) -> str:
    """The SHA-256 hex digest kept in place of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, admin_user_id: int | None) -> tuple[ApiToken, str]:
    """Make a token; commits. Returns the row and the token itself, which is not kept."""
    name = " ".join((name or "").split())
    if not name:
        raise ApiTokenError(_("Give the token a name, such as the site or script that uses it."))
    if len(name) > 100:
        raise ApiTokenError(_("The name is longer than 100 characters."))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        token_hash=hash_token(token),
        prefix=token[:PREFIX_LENGTH],
        admin_user_id=admin_user_id,
    )
    session.add(row)
    session.commit()
    return row, token


def all_tokens(session: Session) -> list[ApiToken]:
    """Every token, live ones first, newest first."""
    return list(
        session.scalars(
            select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())
        )
    )


def revoke(session: Session, token: ApiToken) -> None:
    """Stop a token from working, for good; commits. Revoking twice changes nothing."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()


def authenticate(session: Session, token: str | None) -> ApiToken | None:
    """The live token row this bearer token belongs to, or None; notes its use."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so concurrent calls write the row once.
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == row.id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at <= now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return row

"""Email addresses: validate and normalise one, and the hash kept of a suppressed one.

Imports nothing from Flask, the database or mail: the import's row-checking helper process
loads this module alone.
"""

from __future__ import annotations

import hashlib

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import UserError

MAX_LENGTH = 254


class InvalidEmail(UserError):
    message = "Please, enter correct email address"


def normalize_email(raw: str, *, check_deliverability: bool = False) -> tuple[str, str]:
    """Validate an address; return it normalised and its case-folded lookup key."""
    raw = (raw or "").strip()
    if not raw or len(raw) > MAX_LENGTH or any(c in raw for c in "\r\n\0"):
        raise InvalidEmail()
    try:
        # SMTPUTF8 addresses (non-ASCII before the @) cannot be delivered by most servers.
        result = validate_email(
            raw, check_deliverability=check_deliverability, allow_smtputf8=False
        )
    except EmailNotValidError as exc:
        raise InvalidEmail() from exc
    return result.normalized, result.normalized.lower()


def address_hash(email_key: str) -> str:
    """How a suppressed address is kept: SHA-256 of its lowercased form."""
    return hashlib.sha256(email_key.lower().encode("utf-8")).hexdigest()

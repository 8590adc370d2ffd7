"""Email addresses: validate and normalise one, and the hash kept of a suppressed one.

Imports nothing from Flask, the database or mail: the import's row-checking helper process
loads this module alone.
"""

from __future__ import annotations

import functools
import hashlib
import importlib

import idna
from email_validator import EmailNotValidError, validate_email

from newsletter.errors import UserError
from newsletter.languages import gettext as _
from newsletter.languages import lazy_gettext

MAX_LENGTH = 254
# Never in an address we send from: they would end or split a header, or quote themselves.
_NOT_IN_SENDER = set(' \t\r\n\0<>,;:"()[]\\')


# email-validator checks the part after the @ character by character against the IDNA
# tables, more than half of its time; the same few domains (gmail.com) come again and
# again, so each domain's result (or its error, which is not kept) is remembered.
_validator = importlib.import_module("email_validator.validate_email")
_validator.validate_email_domain_name = functools.lru_cache(maxsize=4096)(
    _validator.validate_email_domain_name
)


class InvalidEmail(UserError):
    message = lazy_gettext("Please, enter correct email address")


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


# Providers that deliver name.surname@ and namesurname@ to one mailbox; googlemail.com is
# gmail.com under another name.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email_key: str) -> str:
    """The mailbox an address reaches, for limits: its `+tag` dropped and, at the providers
    that ignore them, the dots of its local part; googlemail.com as gmail.com.

    Only for counting: the address itself is kept and mailed as the reader typed it.
    """
    local, _at, domain = email_key.lower().rpartition("@")
    base = local.split("+", 1)[0] or local
    if domain in DOTLESS_DOMAINS:
        domain = DOTLESS_DOMAINS[domain]
        base = base.replace(".", "") or base
    return f"{base}@{domain}"


def mask(address: str) -> str:
    """An address as a list shows it without giving it away: j***@example.org."""
    local, _at, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def address_hash(email_key: str) -> str:
    """How a suppressed address is kept: SHA-256 of its lowercased form."""
    return hashlib.sha256(email_key.lower().encode("utf-8")).hexdigest()


class InvalidSender(UserError):
    message = lazy_gettext("This is not an address mail can be sent from.")


def sender_address(raw: str) -> str:
    """An address to send mail from, in the form every mail server takes: its domain in ASCII
    (IDNA, xn--), lowercased. A non-ASCII part before the @ is refused: it needs SMTPUTF8,
    which no server along the way can be assumed to offer."""
    text = (raw or "").strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or len(text) > MAX_LENGTH or _NOT_IN_SENDER & set(text):
        raise InvalidSender(_("%(text)r is not an email address.", text=text[:100]))
    if not local.isascii():
        raise InvalidSender(
            _(
                "%(text)r: use an address whose part before the @ is plain ASCII; mail "
                "servers cannot be assumed to take one with other letters (SMTPUTF8).",
                text=text[:100],
            )
        )
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidSender(
            _("%(text)r: the domain is not a valid name (%(why)s).", text=text[:100], why=exc)
        ) from exc
    return f"{local}@{ascii_domain.lower()}"

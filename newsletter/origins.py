"""Host sites allowed to embed the signup boxes: their origins, checked, listed and matched."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

import idna
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.errors import UserError
from newsletter.models import AllowedOrigin, AuditEvent

MAX_ORIGIN = 300
MAX_NOTE = 200
MAX_RETURN_URL = 2000
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Anything a browser would strip, fold or read as a separator; such a URL is refused whole.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Characters left as they are when a return address is made ASCII for the Location header.
_URL_SAFE = "/:@!$&'()*+,;=-._~%"


class OriginError(UserError):
    """Text that is not a site's origin, or a site that cannot be listed."""

    message = lazy_gettext(
        "Enter the site's origin, such as https://news.example.org: the scheme, the host "
        "and the port when it is not the usual one."
    )


class OriginTaken(OriginError):
    message = lazy_gettext("This site is listed already.")


def _host(hostname: str) -> str:
    """The host as a browser writes it in `Origin`: lowercase, punycode, IPv6 in brackets."""
    if ":" in hostname:
        try:
            return f"[{ipaddress.IPv6Address(hostname).compressed}]"
        except ValueError as exc:
            raise OriginError() from exc
    try:
        ascii_host = idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise OriginError(_("%(name)r is not a host name.", name=hostname[:100])) from exc
    if not all(_LABEL.fullmatch(label) for label in ascii_host.split(".")):
        raise OriginError(_("%(name)r is not a host name.", name=hostname[:100]))
    return ascii_host


def normalise(text: str) -> str:
    """An origin as scheme://host[:port], from what an admin or a setting gives; or OriginError."""
    raw = (text or "").strip()
    if not raw:
        raise OriginError()
    if len(raw) > MAX_ORIGIN or _UNSAFE.search(raw):
        raise OriginError()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise OriginError() from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc or not parts.hostname:
        raise OriginError()
    if "@" in parts.netloc:
        raise OriginError(_("An origin has no user name or password before the host."))
    host = _host(parts.hostname)
    origin = (
        f"{scheme}://{host}"
        if port in (None, _DEFAULT_PORTS[scheme])
        else (f"{scheme}://{host}:{port}")
    )
    if parts.path not in ("", "/") or parts.query or parts.fragment or raw.endswith(("?", "#")):
        raise OriginError(
            _(
                "That is the address of a page; the site's origin is %(origin)s. "
                "Enter only the scheme, the host and the port.",
                origin=origin,
            )
        )
    return origin


def configured(values: Iterable[str]) -> frozenset[str]:
    """The origins of NEWSLETTER_ALLOWED_ORIGINS; ones that are not origins match nothing."""
    found = set()
    for value in values:
        try:
            found.add(normalise(value))
        except OriginError:
            continue
    return frozenset(found)


def check_configured(values: Iterable[str]) -> None:
    """Refuse a setting that names something other than an origin (OriginError)."""
    for value in values:
        try:
            normalise(value)
        except OriginError as exc:
            raise OriginError(f"{value[:100]!r}: {exc.message}") from exc


def listed(session: Session) -> list[AllowedOrigin]:
    """The sites admins listed, in alphabetical order."""
    return list(session.scalars(select(AllowedOrigin).order_by(AllowedOrigin.origin)))


def stored(session: Session) -> frozenset[str]:
    """The origins admins listed."""
    return frozenset(session.scalars(select(AllowedOrigin.origin)))


def add(
    session: Session,
    text: str,
    note: str,
    admin_user_id: int | None,
    already: Iterable[str] = (),
) -> AllowedOrigin:
    """List a site (and note it in the audit trail); commits. `already`: origins allowed anyway."""
    origin = normalise(text)
    if origin in set(already):
        raise OriginError(
            _("%(origin)s is allowed already by NEWSLETTER_ALLOWED_ORIGINS.", origin=origin)
        )
    note = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", note or "").split())
    if len(note) > MAX_NOTE:
        raise OriginError(_("The note is longer than %(n)d characters.", n=MAX_NOTE))
    row = AllowedOrigin(origin=origin, note=note, added_by_id=admin_user_id)
    try:
        # A savepoint: two admins listing one site at once leave one row and one message.
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise OriginTaken(_("%(origin)s is listed already.", origin=origin)) from exc
    session.add(
        AuditEvent(
            admin_user_id=admin_user_id,
            action="site-allowed",
            detail={"origin": origin, "note": note},
        )
    )
    session.commit()
    return row


def remove(session: Session, row: AllowedOrigin, admin_user_id: int | None) -> None:
    """Take a site off the list (and note it in the audit trail); commits."""
    session.add(
        AuditEvent(
            admin_user_id=admin_user_id,
            action="site-removed",
            detail={"origin": row.origin, "note": row.note},
        )
    )
    session.delete(row)
    session.commit()


def return_url(text: object, allowed: Iterable[str]) -> str | None:
    """The address to send a reader back to, if it is on an allowed site; None otherwise.

    Only an absolute http(s) URL with no user name, no backslash and no control character or
    space qualifies, so no browser can read it as another host than the one checked here.
    """
    if not isinstance(text, str) or not text or len(text) > MAX_RETURN_URL:
        return None
    if _UNSAFE.search(text):
        return None
    try:
        parts = urlsplit(text)
        origin = normalise(f"{parts.scheme}://{parts.netloc}")
    except (ValueError, OriginError):
        return None
    if not text.lower().startswith(("http://", "https://")) or origin not in set(allowed):
        return None
    url = origin + quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        url += "?" + quote(parts.query, safe=_URL_SAFE + "?")
    if parts.fragment:
        url += "#" + quote(parts.fragment, safe=_URL_SAFE + "?#")
    return url

"""The site's brand: its name, logo, accent colour, home page, postal address and default sender.

One row in the database, edited by admins at /admin/settings; what it leaves empty comes from
the configuration (the base URL's host, NEWSLETTER_DEFAULT_FROM_*). Every public page and every
mail reads it through `current()`, which keeps a copy per process for SITE_CACHE_SECONDS: the
process where an admin saved a change sees it at once, every other process (web workers, mail
workers) within those seconds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Flask, current_app
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from newsletter import origins
from newsletter.addresses import InvalidSender, sender_address
from newsletter.config import site_host
from newsletter.errors import UserError
from newsletter.extensions import db
from newsletter.mail.dkim import aligned as dkim_aligned
from newsletter.models import AuditEvent, SiteSettings, utcnow

log = logging.getLogger(__name__)

DEFAULT_ACCENT = "#0b57d0"
# White text sits on the accent (buttons): WCAG AA asks 4.5:1 for text of any size.
MIN_CONTRAST = 4.5
_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
# Anything a browser would strip, fold or read as another part of the page.
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f\\\"'<>`]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
LIMITS = {
    "name": 100,
    "logo_url": 1000,
    "home_url": 1000,
    "postal_address": 500,
    "from_name": 100,
    "from_address": 254,
    "accent_colour": 7,
}
# The editable fields, in the order the settings page shows them.
FIELDS = tuple(LIMITS)


class InvalidSettings(UserError):
    """Values the site settings refuse; `errors` says what is wrong with each field."""

    message = lazy_gettext("Some settings need correcting.")

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__()
        self.errors = dict(errors)


@dataclass(frozen=True)
class Site:
    """The brand as pages and mails use it: every value filled in."""

    # The name readers know the site by: the one set, else the home page's or the base URL's
    # host; empty when there is none (a trial on 127.0.0.1): then no mail names a site.
    name: str = ""
    logo_url: str = ""
    accent: str = DEFAULT_ACCENT
    # Where "Back to <site>" leads: the one set, else this service's own front page.
    home: str = "/"
    postal_address: str = ""
    from_name: str = "Newsletter"
    from_address: str = "newsletter@localhost"
    # What the admin set, for the settings page: empty where nothing was set.
    stored: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def title(self) -> str:
        """The name for a page header: the site's, or a plain word when it has none."""
        return self.name or _("Newsletters")

    @property
    def address_lines(self) -> list[str]:
        return [line for line in self.postal_address.splitlines() if line.strip()]

    @property
    def image_origin(self) -> str | None:
        """The logo's origin, for the pages' Content-Security-Policy."""
        if not self.logo_url:
            return None
        parts = urlsplit(self.logo_url)
        try:
            # Its canonical form: nothing of the value can reach the header but a host.
            return origins.normalise(f"{parts.scheme}://{parts.netloc}")
        except origins.OriginError:
            return None


def _defaults(config: Mapping[str, object]) -> dict[str, str]:
    base = str(config["BASE_URL"])
    return {
        "name": site_host(base) or "",
        "home": base + "/",
        "from_name": str(config["DEFAULT_FROM_NAME"]),
        "from_address": str(config["DEFAULT_FROM_ADDRESS"]),
    }


def effective(settings: SiteSettings | None, config: Mapping[str, object]) -> Site:
    """The brand of a settings row (or of none), with the configuration's values for the gaps."""
    stored = {name: str(getattr(settings, name) or "") for name in FIELDS} if settings else {}
    default = _defaults(config)
    home = stored.get("home_url", "")
    accent = stored.get("accent_colour", "")
    return Site(
        name=stored.get("name") or (site_host(home) if home else None) or default["name"],
        logo_url=stored.get("logo_url", ""),
        # Checked again: a value written to the table by hand must not reach a style.
        accent=accent.lower() if _COLOUR.fullmatch(accent) else DEFAULT_ACCENT,
        home=home or default["home"],
        postal_address=stored.get("postal_address", ""),
        from_name=stored.get("from_name") or default["from_name"],
        from_address=stored.get("from_address") or default["from_address"],
        stored=stored,
    )


def row(session: Session) -> SiteSettings | None:
    """The settings row, if an admin ever saved one."""
    return session.scalar(select(SiteSettings).order_by(SiteSettings.id).limit(1))


def _web_address(value: str) -> str | None:
    """What is wrong with a logo or home page address, or None."""
    parts = urlsplit(value)
    wrong = _("Use an http:// or https:// address.")
    if _NOT_IN_URL.search(value) or parts.scheme.lower() not in ("http", "https"):
        return wrong
    try:
        origins.normalise(f"{parts.scheme}://{parts.netloc}")
    except (origins.OriginError, ValueError):
        return wrong
    return None


def _luminance(colour: str) -> float:
    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_with_white(colour: str) -> float:
    """The WCAG contrast ratio of white text on this #rrggbb colour."""
    return 1.05 / (_luminance(colour) + 0.05)


def _colour(value: str) -> str:
    """A colour as #rrggbb, lowercase."""
    if len(value) == 4:
        value = "#" + "".join(c * 2 for c in value[1:])
    return value.lower()


def check(values: Mapping[str, str | None], dkim_domain: str | None = None) -> dict[str, str]:
    """The settings cleaned (stripped, colours as #rrggbb, sender ASCII); InvalidSettings.

    With `dkim_domain`, the sender address must align with it (DMARC), or large mailbox
    providers file the mail as spam.
    """
    cleaned: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in FIELDS:
        value = (values.get(name) or "").strip()
        if name == "postal_address":
            value = "\n".join(line.strip() for line in value.replace("\r\n", "\n").split("\n"))
            value = re.sub(r"\n{3,}", "\n\n", value)
        if len(value) > LIMITS[name] and name != "accent_colour":
            errors[name] = _("At most %(n)d characters.", n=LIMITS[name])
        elif _CONTROL.search(value) or ("\n" in value and name != "postal_address"):
            # The sender's name goes into the From header of every mail: one line, always.
            errors[name] = _("Use a single line.")
        elif not value:
            pass
        elif name in ("logo_url", "home_url"):
            problem = _web_address(value)
            if problem:
                errors[name] = problem
        elif name == "accent_colour":
            if not _COLOUR.fullmatch(value):
                errors[name] = _("Use a hex colour such as #0b57d0.")
            else:
                value = _colour(value)
                ratio = contrast_with_white(value)
                if ratio < MIN_CONTRAST:
                    errors[name] = _(
                        "White text on this colour is hard to read (contrast %(ratio).1f:1; "
                        "at least 4.5:1 is needed): choose a darker one.",
                        ratio=ratio,
                    )
        elif name == "from_address":
            try:
                value = sender_address(value)
            except InvalidSender as exc:
                errors[name] = str(exc.message)
            else:
                if dkim_domain and not dkim_aligned(value, dkim_domain):
                    errors[name] = _(
                        "Mail is DKIM-signed as %(domain)s: use an address at %(domain)s "
                        "(or a subdomain of it).",
                        domain=dkim_domain,
                    )
        cleaned[name] = value
    if errors:
        raise InvalidSettings(errors)
    return cleaned


def save(
    session: Session,
    values: Mapping[str, str | None],
    admin_user_id: int | None,
    *,
    dkim_domain: str | None = None,
) -> dict[str, list[str]]:
    """Check and keep the settings, noting what changed in the audit trail; commits.

    Returns the changes, {field: [before, after]}; InvalidSettings when a value is refused.
    """
    cleaned = check(values, dkim_domain)
    found = row(session)
    if found is None:
        found = SiteSettings(**{name: "" for name in FIELDS})
        session.add(found)
    changes = {
        name: [str(getattr(found, name) or ""), value]
        for name, value in cleaned.items()
        if str(getattr(found, name) or "") != value
    }
    if not changes:
        session.rollback()
        return {}
    for name, value in cleaned.items():
        setattr(found, name, value)
    found.updated_at = utcnow()
    found.updated_by_id = admin_user_id
    session.add(
        AuditEvent(admin_user_id=admin_user_id, action="site-settings", detail={"changes": changes})
    )
    session.commit()
    return changes


def set_defaults(session: Session, values: Mapping[str, str]) -> bool:
    """Keep these settings unless an admin has saved some already (the demo's); commits."""
    if row(session) is not None:
        return False
    session.add(SiteSettings(**check(values)))
    session.commit()
    return True


class _Cached:
    """A process's copy of the brand, and when it is to be read again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.site: Site | None = None
        self.expires = 0.0


def _cache() -> _Cached:
    return current_app.extensions["newsletter.site"]  # type: ignore[no-any-return]


def current() -> Site:
    """The brand as it stands, read at most every SITE_CACHE_SECONDS in this process."""
    cache = _cache()
    now = time.monotonic()
    site = cache.site
    if site is not None and now < cache.expires:
        return site
    try:
        # A session of its own: the caller's (a request's, the worker's) is left as it was,
        # and no transaction stays open behind a long-lived worker.
        with Session(db.engine) as session:
            site = effective(row(session), current_app.config)
    except SQLAlchemyError:
        # A page saying the database is away still gets a header; it is read again next time.
        log.warning("site settings unreadable; showing the configured ones", exc_info=True)
        return effective(None, current_app.config)
    with cache.lock:
        cache.site = site
        cache.expires = now + float(current_app.config["SITE_CACHE_SECONDS"])
    return site


def forget() -> None:
    """Read the settings again at the next use in this process."""
    _cache().expires = 0.0


def init_app(app: Flask) -> None:
    """Give every template, page or mail, the brand as `site`."""
    app.extensions["newsletter.site"] = _Cached()
    app.context_processor(lambda: {"site": current()})

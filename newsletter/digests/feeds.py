"""RSS and Atom feeds of the site's news: read them, import their items, pull a list's feed."""

from __future__ import annotations

import calendar
import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
from flask import current_app, has_app_context
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy.orm import Session

from newsletter import safefetch
from newsletter.digests import items
from newsletter.errors import UserError
from newsletter.models import Newsletter, utcnow

log = logging.getLogger(__name__)

MAX_BYTES = 5 * 1024 * 1024
TIMEOUT = 20  # seconds for the whole fetch, redirects included
USER_AGENT = "newsletter-feed-reader/1.0"
# An entry this old is no breaking news, whatever its category says.
FRESH = timedelta(days=1)
_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)


class FeedError(UserError):
    """A feed that cannot be read; the message says why, fit to show an editor."""

    message = lazy_gettext("The feed could not be read.")


def fetch(url: str) -> tuple[bytes, dict[str, str]]:
    """A feed's bytes and the headers feedparser uses (its type and final address).

    Public addresses only, unless NEWSLETTER_FEED_INTERNAL_HOSTS names the host; the whole
    fetch, redirects included, has TIMEOUT seconds.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise FeedError(_("Only http and https feeds can be fetched."))
    allowed = current_app.config["FEED_INTERNAL_HOSTS"] if has_app_context() else []
    try:
        fetched = safefetch.get(
            url,
            headers={"User-Agent": USER_AGENT, "Accept": _ACCEPT},
            max_bytes=MAX_BYTES,
            deadline=TIMEOUT,
            internal=safefetch.Internal.parse(allowed),
        )
    except safefetch.TooLarge as exc:
        raise FeedError(_too_large()) from exc
    except safefetch.FetchError as exc:
        message = exc.message.replace("The server answered", "The feed's server answered")
        raise FeedError(message.replace("The address could not", "The feed could not")) from exc
    return fetched.body, {"content-type": fetched.content_type, "content-location": fetched.url}


def _too_large() -> str:
    return _("The feed is larger than %(n)d MB.", n=MAX_BYTES // (1024 * 1024))


def _read(source: str | bytes | Path) -> tuple[bytes, dict[str, str]]:
    if isinstance(source, bytes):
        return source, {}
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            return fetch(source)
        if "://" in source:
            raise FeedError(_("Only http and https feeds can be fetched."))
        if source.lstrip().startswith("<"):
            return source.encode(), {"content-type": "application/xml; charset=utf-8"}
    path = Path(source)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise FeedError(_too_large())
        return path.read_bytes(), {}
    except OSError as exc:
        raise FeedError(f"Cannot read the file {str(source)[:200]}: {exc.strerror}.") from exc


def _moment(entry: Any) -> datetime:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if parsed:
        try:
            # feedparser hands back UTC as a struct_time.
            return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
        except (OverflowError, ValueError, OSError):
            pass
    return utcnow()


def _title(entry: Any) -> str:
    title = entry.get("title") or ""
    if "html" in (entry.get("title_detail") or {}).get("type", ""):
        title = items.plain_text(title)
    return " ".join(title.split())[: items.MAX_TITLE]


def _summary(entry: Any) -> str:
    html = entry.get("summary") or ""
    if not html and entry.get("content"):
        html = entry["content"][0].get("value") or ""
    return items.plain_text(html)[: items.MAX_SUMMARY]


def _categories(entry: Any) -> list[str]:
    """An entry's categories: RSS <category> and Atom <category term="…" label="…">."""
    found = []
    for tag in entry.get("tags") or []:
        for key in ("term", "label"):
            value = " ".join(str(tag.get(key) or "").split())
            if value:
                found.append(value[:200])
    return list(dict.fromkeys(found))


def parse(source: str | bytes | Path) -> list[dict[str, Any]]:
    """The items of an RSS or Atom feed: a file path, an http(s) URL, or the feed's bytes.

    Each is a dict of title, url, guid, published_at (aware UTC), summary (plain text) and
    categories. Entries without a title or an http(s) link are left out.
    """
    data, headers = _read(source)
    # Bytes, never a URL: feedparser must not fetch anything itself.
    feed = feedparser.parse(io.BytesIO(data), response_headers=headers)
    if not feed.entries and (feed.bozo or not feed.version):
        raise FeedError(_not_a_feed(feed))
    found = []
    for entry in feed.entries:
        title = _title(entry)
        try:
            url = items.clean_url(entry.get("link"))
        except items.ItemError:
            continue
        if not title:
            continue
        guid = " ".join((entry.get("id") or "").split())
        found.append(
            {
                "title": title,
                "url": url,
                "guid": guid if 0 < len(guid) <= items.MAX_GUID else url,
                "published_at": _moment(entry),
                "summary": _summary(entry),
                "categories": _categories(entry),
            }
        )
    if not found and feed.bozo:
        # A broken document the lenient parser made a few empty entries of.
        raise FeedError(_not_a_feed(feed))
    return found


def _not_a_feed(feed: Any) -> str:
    reason = feed.get("bozo_exception")
    if reason:
        return _("This is not an RSS or Atom feed (%(why)s).", why=str(reason)[:200])
    return _("This is not an RSS or Atom feed.")


def join_categories(text: str | None) -> str:
    """The stored form of an editor's list of categories: trimmed, each once, comma-separated."""
    parts = (" ".join(part.split()) for part in (text or "").split(","))
    kept = list(dict.fromkeys(part for part in parts if part))
    return ", ".join(kept)


def alert_categories(newsletter: Newsletter) -> set[str]:
    """The feed categories the editor reads as breaking news on this list, in lower case."""
    parts = (part.strip().lower() for part in (newsletter.alert_categories or "").split(","))
    return {part for part in parts if part}


def is_breaking(newsletter: Newsletter, entry: dict[str, Any], now: datetime) -> bool:
    """Whether a feed's entry is an alert on the list: of a category mapped so, and fresh.

    An old entry (a first pull brings the feed's whole history) is no breaking news.
    """
    named = {category.lower() for category in entry.get("categories", [])}
    return bool(alert_categories(newsletter) & named) and entry["published_at"] > now - FRESH


def import_feed(
    session: Session, source: str | bytes | Path, newsletter: Newsletter
) -> tuple[int, int]:
    """Add a feed's new items to a newsletter; commits. Returns (added, already there).

    An entry of a category the list maps to alerts becomes an alert item.
    """
    items.open_newsletters(session, [newsletter.slug])  # refuses an archived list up front
    added = already = 0
    now = utcnow()
    for entry in parse(source):
        alert = is_breaking(newsletter, entry, now)
        fields = {key: value for key, value in entry.items() if key != "categories"}
        _i, created = items.add_item(
            session, **fields, newsletters=[newsletter.slug], source="feed", alert=alert
        )
        if created:
            added += 1
        else:
            already += 1
    return added, already


def pull(session: Session, newsletter: Newsletter) -> int:
    """Fetch a newsletter's feed and add its new items; commits. Never raises.

    Records when the feed was checked and what went wrong, if anything (cleared on
    success). Returns how many items were added.
    """
    url = newsletter.feed_url
    if not url:
        return 0
    added = 0
    try:
        added, _skipped = import_feed(session, url, newsletter)
    except (FeedError, items.ItemError) as exc:
        session.rollback()
        error: str | None = exc.message
    except Exception as exc:
        # The worker pulls feeds between sends: one odd feed must not stop it.
        log.exception("pulling the feed of %s failed", newsletter.slug)
        session.rollback()
        error = f"The feed could not be read: {type(exc).__name__}."
    else:
        error = None
    newsletter.feed_error = error
    newsletter.feed_checked_at = utcnow()
    session.commit()
    return added

"""News items, the material of digests: add (once per story), change, list."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from urllib.parse import urlsplit

from flask_babel import format_decimal, lazy_gettext
from flask_babel import gettext as _
from sqlalchemy import Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from newsletter.errors import UserError
from newsletter.models import (
    Digest,
    DigestItem,
    DigestStatus,
    Item,
    Newsletter,
    item_newsletter,
    utcnow,
)

MAX_TITLE = 500
MAX_URL = 1000
MAX_GUID = 500
MAX_SUMMARY = 10_000
SOURCES = ("api", "feed", "admin", "demo")
# Control characters other than tab and newline never reach the database or a mail.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class ItemError(UserError):
    """Item input the rules refuse; the message is fit to show whoever sent it."""

    message = lazy_gettext("Something is wrong with this item.")

    def __init__(self, message: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UrlTaken(ItemError):
    message = lazy_gettext("Another item has this link.")

    def __init__(self, message: str | None = None, field: str | None = "url") -> None:
        super().__init__(message, field)


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment, leaving out scripts and styles."""

    _HIDDEN = {"script", "style", "template"}
    _BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def plain_text(html: str) -> str:
    """The text of an HTML fragment: tags dropped, entities decoded, blank runs squeezed."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    text = "".join(extractor.parts)
    lines = (" ".join(line.split()) for line in text.splitlines())
    paragraphs = "\n".join(lines)
    return re.sub(r"\n{2,}", "\n\n", paragraphs).strip()


def _text(value: object, field: str, label: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ItemError(_("The %(label)s must be text.", label=label), field)
    return _CONTROL.sub("", value)


def clean_title(value: object) -> str:
    """A title on one line, or ItemError."""
    title = " ".join(_text(value, "title", "title").split())
    if not title:
        raise ItemError(_("Give the item a title."), "title")
    if len(title) > MAX_TITLE:
        raise ItemError(_("The title is longer than %(n)d characters.", n=MAX_TITLE), "title")
    return title


def clean_url(value: object) -> str:
    """An absolute http(s) link, or ItemError."""
    url = _text(value, "url", "link").strip()
    if not url:
        raise ItemError(_("Give the item a link (url)."), "url")
    if len(url) > MAX_URL:
        raise ItemError(_("The link is longer than %(n)d characters.", n=MAX_URL), "url")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ItemError(_("The link must be an absolute http or https address."), "url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ItemError(_("The link must be an absolute http or https address."), "url")
    return url


def clean_summary(value: object) -> str:
    """Plain text of at most MAX_SUMMARY characters, or ItemError."""
    summary = _text(value, "summary", "summary").strip()
    if len(summary) > MAX_SUMMARY:
        raise ItemError(
            _("The summary is longer than %(n)s characters.", n=format_decimal(MAX_SUMMARY)),
            "summary",
        )
    return summary


def clean_published_at(value: object) -> datetime:
    """An aware UTC moment from a datetime or ISO 8601 text (no zone: UTC); now when empty."""
    if value is None or value == "":
        return utcnow()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ItemError(
                "The publication time must be an ISO 8601 date and time, "
                "such as 2024-05-01T08:30:00Z.",
                "published_at",
            ) from exc
    if not isinstance(value, datetime):
        raise ItemError(_("The publication time must be ISO 8601 text."), "published_at")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clean_guid(value: object, url: str) -> str:
    """The item's unique id; its link when none is given."""
    guid = _text(value, "guid", "guid").strip()
    if not guid:
        return url
    if len(guid) > MAX_GUID:
        raise ItemError(_("The guid is longer than %(n)d characters.", n=MAX_GUID), "guid")
    return guid


def open_newsletters(session: Session, slugs: object) -> list[Newsletter]:
    """The open newsletters these slugs name, or ItemError naming the first unknown one."""
    if slugs is None:
        slugs = []
    elif isinstance(slugs, str):
        slugs = [slugs]
    if not isinstance(slugs, list | tuple) or not all(isinstance(s, str) for s in slugs):
        raise ItemError(_("List the newsletters by their slugs."), "newsletters")
    wanted = list(dict.fromkeys(s.strip() for s in slugs if s.strip()))
    if not wanted:
        raise ItemError(_("Choose at least one newsletter."), "newsletters")
    found = {
        n.slug: n
        for n in session.scalars(
            select(Newsletter).where(Newsletter.slug.in_(wanted), Newsletter.archived.is_(False))
        )
    }
    for slug in wanted:
        if slug not in found:
            raise ItemError(
                _("There is no open newsletter %(slug)r.", slug=slug[:64]), "newsletters"
            )
    return [found[slug] for slug in wanted]


def find_item(session: Session, guid: str, url: str | None) -> Item | None:
    """The item with this guid, else the one with this link."""
    matches = session.scalars(
        select(Item).where(or_(Item.guid == guid, Item.url == url) if url else Item.guid == guid)
    ).all()
    for item in matches:
        if item.guid == guid:
            return item
    return matches[0] if matches else None


def _tag(item: Item, newsletters: Iterable[Newsletter]) -> None:
    have = {n.id for n in item.newsletters}
    item.newsletters.extend(n for n in newsletters if n.id not in have)


def add_item(
    session: Session,
    *,
    title: object,
    url: object,
    summary: object = "",
    published_at: object = None,
    guid: object = None,
    newsletters: object,
    source: str,
    pick: bool | None = None,
    alert: bool = False,
) -> tuple[Item, bool]:
    """Add a news item once per guid and per link; commits.

    A repeat (same guid or same link) only adds the newsletters it names to the item
    there already, marks or unmarks it as a pick when `pick` is given, and makes it an alert
    when it says so (never the other way: an alert may be on its way). `alert`: breaking
    news, mailed at once to the readers of alerts. Returns (item, created).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown item source {source!r}")
    item_title = clean_title(title)
    link = clean_url(url)
    values = {
        "title": item_title,
        "url": link,
        "summary": clean_summary(summary),
        "published_at": clean_published_at(published_at),
        "guid": clean_guid(guid, link),
    }
    lists = open_newsletters(session, newsletters)
    existing = find_item(session, values["guid"], link)
    if existing is None:
        item = Item(source=source, newsletters=list(lists), pick=bool(pick), alert=alert, **values)
        try:
            # A savepoint: losing a race for the guid or link undoes only this insert.
            with session.begin_nested():
                session.add(item)
        except IntegrityError:
            existing = find_item(session, values["guid"], link)
            if existing is None:
                raise
        else:
            session.commit()
            return item, True
    _tag(existing, lists)
    if pick is not None:
        existing.pick = pick
    if alert:
        existing.alert = True
    session.commit()
    return existing, False


def update_item(
    session: Session,
    item: Item,
    *,
    title: object,
    url: object,
    summary: object,
    published_at: object,
    newsletters: object,
    pick: bool | None = None,
    alert: bool | None = None,
) -> Item:
    """Change an item's text, link, time, newsletters, pick and alert mark (its guid stays);
    commits.

    An alert already taken for mailing is not taken again, whatever its mark says now.
    """
    item_url = clean_url(url)
    values = {
        "title": clean_title(title),
        "url": item_url,
        "summary": clean_summary(summary),
        "published_at": clean_published_at(published_at),
    }
    lists = open_newsletters(session, newsletters)
    other = session.scalar(select(Item.id).where(Item.url == item_url, Item.id != item.id))
    if other is not None:
        raise UrlTaken()
    for name, value in values.items():
        setattr(item, name, value)
    if pick is not None:
        item.pick = pick
    if alert is not None and item.alerted_at is None:
        item.alert = alert
    # Archived lists are not offered in the form, so keep the item on those it had.
    item.newsletters = [n for n in item.newsletters if n.archived] + lists
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise UrlTaken() from exc
    return item


def unsent_digests_with(session: Session, item: Item) -> list[Digest]:
    """The drafts and scheduled digests the item is in: deleting it takes it out of them."""
    return list(
        session.scalars(
            select(Digest)
            .join(DigestItem, DigestItem.digest_id == Digest.id)
            .where(
                DigestItem.item_id == item.id,
                Digest.status.in_((DigestStatus.DRAFT, DigestStatus.SCHEDULED)),
            )
            .order_by(Digest.id)
        )
    )


def delete_item(session: Session, item: Item) -> None:
    """Delete an item: it leaves every newsletter and digest it was in; commits."""
    session.delete(item)
    session.commit()


def items_query(
    newsletter_id: int | None = None, since: datetime | None = None
) -> Select[tuple[Item]]:
    """Items newest first, of one newsletter and published after `since` when given."""
    query = select(Item).order_by(Item.published_at.desc(), Item.id.desc())
    if newsletter_id is not None:
        query = query.join(item_newsletter, item_newsletter.c.item_id == Item.id).where(
            item_newsletter.c.newsletter_id == newsletter_id
        )
    if since is not None:
        query = query.where(Item.published_at > since)
    return query


def items_since(
    session: Session, newsletter: Newsletter, since: datetime | None, limit: int = 50
) -> list[Item]:
    """A newsletter's items published after `since` (all when None), newest first."""
    return list(session.scalars(items_query(newsletter.id, since).limit(limit)))


def items_page(
    session: Session, newsletter_id: int | None, page: int, size: int = 50
) -> tuple[Sequence[Item], bool]:
    """One page (from 1) of items, newest first; and whether there is a next page."""
    query = items_query(newsletter_id).offset((max(page, 1) - 1) * size).limit(size + 1)
    rows = session.scalars(query).all()
    return rows[:size], len(rows) > size


def as_json(item: Item) -> dict[str, object]:
    """An item as the API shows it."""
    return {
        "id": item.id,
        "guid": item.guid,
        "title": item.title,
        "url": item.url,
        "summary": item.summary,
        "published_at": item.published_at.isoformat(),
        "source": item.source,
        "pick": item.pick,
        "newsletters": sorted(n.slug for n in item.newsletters),
        "created_at": item.created_at.isoformat(),
        "alert": item.alert,
        "alerted_at": item.alerted_at.isoformat() if item.alerted_at else None,
    }

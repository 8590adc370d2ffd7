"""A list's archive on the web: its editions newest first, each edition's page, its Atom feed.

A public archive is open to anyone. One kept for readers opens with a reader's signed key
(the `key` argument of the "View in browser" link in their mails), which every page passes on.
"""

from __future__ import annotations

import re
from datetime import datetime
from xml.etree import ElementTree as ET

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from newsletter import archive, links, site, texts
from newsletter.digests.compose import Content, render_web
from newsletter.extensions import db
from newsletter.links import ARCHIVE_KEY, Links
from newsletter.models import Digest, Newsletter
from newsletter.newsletters import UnknownNewsletter, by_slug
from newsletter.web import language

bp = Blueprint("archive", __name__, url_prefix=links.PATHS[links.ARCHIVE].rstrip("/"))
# An edition's last part: its id, then its day (which an old or mistyped link may miss).
_EDITION = re.compile(r"([0-9]{1,9})(?:-.*)?")
_PAGE = re.compile(r"[0-9]{1,6}")
ATOM = "http://www.w3.org/2005/Atom"


class _Refused(Exception):
    """An archive page that is not shown: the page that says why, and its status."""

    def __init__(self, page: str, status: int) -> None:
        super().__init__(status)
        self.page = page
        self.status = status


def _links() -> Links:
    return Links.from_config(current_app.config)


def _absolute(endpoint: str, **values: object) -> str:
    """A page's address under the base URL, as mails and feeds name it."""
    return _links().base_url + url_for(endpoint, **values)


def _message(title: str, text: str, status: int) -> _Refused:
    return _Refused(render_template("public/message.html", title=title, text=text), status)


def _newsletter(slug: str) -> Newsletter:
    """The list of the address, if its archive opens for this request; else _Refused."""
    try:
        newsletter = by_slug(db.session, slug)
    except UnknownNewsletter as exc:
        raise _message(gettext("Not found"), exc.message, 404) from exc
    if newsletter.archive_public:
        return newsletter
    key = request.args.get(ARCHIVE_KEY, "")
    refused = gettext("This archive is for readers only")
    if not key:
        raise _message(refused, archive.ReadersOnly().message, 403)
    try:
        link = _links().read_archive(key)
        if link.reader == links.TEST_READER:
            raise _message(
                gettext("This was a test copy"),
                gettext(
                    "This link comes from an editor's test copy or preview of a newsletter, "
                    "not from a mail sent to a reader: it opens no archive."
                ),
                403,
            )
        reader = archive.reader(db.session, newsletter, link)
    except links.LinkError as exc:
        raise _message(refused, f"{exc.message} {archive.ReadersOnly().message}", 403) from exc
    language.use_reader(reader.locale)
    g.archive_key = key
    return newsletter


def _key() -> dict[str, str]:
    """The reader's key that opened this private archive, for every link that stays in it."""
    key = g.get("archive_key")
    return {ARCHIVE_KEY: key} if key else {}


def _private(response: Response) -> Response:
    """A page opened by a reader's key: not kept by caches, its address not passed on."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _answer(newsletter: Newsletter, body: str, mimetype: str = "text/html") -> Response:
    response = Response(body, mimetype=mimetype)
    return response if newsletter.archive_public else _private(response)


def edition_url(digest: Digest) -> str:
    """An edition's page as this request links it (the reader's key kept)."""
    return _absolute(
        "archive.edition",
        slug=digest.newsletter.slug,
        name=archive.edition_name(digest),
        **_key(),
    )


@bp.errorhandler(_Refused)
def _refused(exc: _Refused) -> tuple[str, int]:
    return exc.page, exc.status


@bp.get("/<slug>")
def listing(slug: str) -> Response:
    """The list's editions, newest first, a page at a time."""
    newsletter = _newsletter(slug)
    given = request.args.get("page", "1")
    try:
        if not _PAGE.fullmatch(given):
            raise archive.NoSuchPage()
        page = archive.page(db.session, newsletter, int(given))
    except archive.NoSuchPage as exc:
        raise _message(gettext("Not found"), exc.message, 404) from exc
    body = render_template(
        "public/archive.html",
        newsletter=newsletter,
        page=page,
        key=_key(),
        edition_url=edition_url,
    )
    return _answer(newsletter, body)


@bp.get("/<slug>/<name>")
def edition(slug: str, name: str) -> Response:
    """One edition as its mail showed it, without the reader's own links."""
    newsletter = _newsletter(slug)
    match = _EDITION.fullmatch(name)
    try:
        if match is None:
            raise archive.NoSuchEdition()
        digest = archive.edition(db.session, newsletter, int(match[1]))
    except archive.NoSuchEdition as exc:
        raise _message(gettext("Not found"), exc.message, 404) from exc
    if name != archive.edition_name(digest):
        # An address cut short or with another day: the edition's own address.
        return redirect(edition_url(digest), 301)  # type: ignore[return-value]
    content = Content(newsletter, digest.subject, digest.intro, digest.items)
    listing_url = _absolute("archive.listing", slug=newsletter.slug, **_key())
    return _answer(newsletter, render_web(content, listing_url))


def _moment(digest: Digest) -> datetime:
    moment = digest.finished_at or digest.started_at
    assert moment is not None
    return moment


def _atom(newsletter: Newsletter, editions: list[Digest]) -> bytes:
    """The Atom document (RFC 4287) of these editions; ElementTree escapes every text."""
    ET.register_namespace("", ATOM)

    def child(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        element.text = text
        return element

    brand = site.current()
    public_listing = _absolute("archive.listing", slug=newsletter.slug)
    feed = ET.Element(f"{{{ATOM}}}feed")
    feed.set("{http://www.w3.org/XML/1998/namespace}lang", language.current())
    child(feed, "id", public_listing)
    child(feed, "title", texts.local(newsletter, "name"))
    if description := texts.local(newsletter, "description"):
        child(feed, "subtitle", description)
    updated = max((_moment(d) for d in editions), default=newsletter.created_at)
    child(feed, "updated", updated.isoformat())
    child(child(feed, "author"), "name", brand.name or brand.title)
    listing_url = _absolute("archive.listing", slug=newsletter.slug, **_key())
    child(feed, "link", rel="alternate", type="text/html", href=listing_url)
    child(
        feed,
        "link",
        rel="self",
        type="application/atom+xml",
        href=_absolute("archive.feed", slug=newsletter.slug, **_key()),
    )
    for digest in editions:
        entry = child(feed, "entry")
        # The public address names an edition for good, whoever reads the feed.
        public_url = _absolute(
            "archive.edition", slug=newsletter.slug, name=archive.edition_name(digest)
        )
        child(entry, "id", public_url)
        child(entry, "title", digest.subject)
        child(entry, "updated", _moment(digest).isoformat())
        if digest.started_at is not None:
            child(entry, "published", digest.started_at.isoformat())
        child(entry, "link", rel="alternate", type="text/html", href=edition_url(digest))
        summary = digest.intro.strip() or "\n".join(item.title for item in digest.items)
        child(entry, "summary", summary)
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


@bp.get("/<slug>/feed.atom")
def feed(slug: str) -> Response:
    """The list's latest editions as an Atom feed."""
    newsletter = _newsletter(slug)
    body = _atom(newsletter, archive.latest(db.session, newsletter))
    return _answer(newsletter, body.decode("utf-8"), "application/atom+xml")

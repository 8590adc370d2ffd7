"""Digest mails: rendered once per digest, then made personal per reader by substitution.

Rendering Jinja, inlining CSS and encoding MIME cost milliseconds; a digest to a million
readers does them once. What differs per reader (the address, the Message-ID, the date and
two links, three when the list's archive is for its readers only, one more per list of a
combined mail) is put into ready-made bytes. The links sit on lines of their own in the
quoted-printable parts (soft line breaks around them, invisible once decoded), so every
other line of the body is the same for every reader, and a DKIM body hash needs only the
personal lines canonicalised per message.
"""

from __future__ import annotations

import email.quoprimime
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import quote, urlsplit

import css_inline
from dkim import canonicalization
from flask import render_template
from flask_babel import force_locale

from newsletter import metrics, site
from newsletter.languages import DEFAULT
from newsletter.links import ARCHIVE, ARCHIVE_KEY, PREFERENCES, UNSUBSCRIBE, Links, Reader
from newsletter.mail import compose
from newsletter.mail.transport import END_OF_DATA, dot_stuffed
from newsletter.models import Item, Newsletter, utcnow

# Responsive rules (@media) stay in a <style> element; the rest goes into style attributes,
# which is what mail clients that drop <style> (some webmail) still show.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


class BodySigner(Protocol):
    """Signs a header block with a body hash computed apart (mail/dkim.py's Signer)."""

    def sign_with_body_hash(self, headers: bytes, body_hash: bytes) -> bytes: ...


@dataclass(frozen=True)
class Content:
    """What a digest says: the same for every reader."""

    newsletter: Newsletter
    subject: str
    intro: str
    items: Sequence[Item]
    # Where "View in browser" leads, under the base URL (archive.mail_path); None: nowhere.
    web_path: str | None = None


@dataclass(frozen=True)
class CombinedContent:
    """What a combined edition says to the readers of one set of lists: a section per list."""

    frequency: str
    subject: str
    intro: str
    sections: Sequence[tuple[Newsletter, Sequence[Item]]]

    @property
    def lists(self) -> list[Newsletter]:
        return [newsletter for newsletter, _ in self.sections]


def sections(
    lists: Sequence[Newsletter], items: Sequence[Item]
) -> list[tuple[Newsletter, list[Item]]]:
    """The combined edition's items for readers of `lists`: under each list those tagged to it,
    in the edition's order; an item tagged to several of the lists only under the first.

    Every list keeps its place (its unsubscribe link is in the footer) even when what it had
    was all shown under an earlier one.
    """
    shown: set[int] = set()
    found = []
    for newsletter in lists:
        own = [
            item
            for item in items
            if item.id not in shown and any(n.id == newsletter.id for n in item.newsletters)
        ]
        shown.update(item.id for item in own)
        found.append((newsletter, own))
    return found


def safe_link(url: str | None) -> str | None:
    """An item's link fit for an href: http(s) only, and nothing in it that HTML reads."""
    if not url or urlsplit(url).scheme.lower() not in ("http", "https"):
        return None
    return quote(url, safe=":/?#[]@!$&()*+,;=%~-._")


def _context(
    content: Content | CombinedContent,
    list_urls: dict[int, str] | None = None,
    **links: str | None,
) -> dict[str, object]:
    context: dict[str, object] = {
        "subject": content.subject,
        "intro": content.intro.strip(),
        "link": safe_link,
        **links,
    }
    if isinstance(content, CombinedContent):
        urls = list_urls or {}
        context.update(
            combined=True,
            frequency=content.frequency,
            sections=[s for s in content.sections if s[1]],
            leave=[(newsletter, urls[newsletter.id]) for newsletter in content.lists],
        )
    else:
        context.update(combined=False, newsletter=content.newsletter, items=content.items)
    return context


def render(
    content: Content | CombinedContent,
    unsubscribe_url: str,
    preferences_url: str,
    list_urls: dict[int, str] | None = None,
    view_url: str | None = None,
) -> tuple[str, str]:
    """The text and the HTML of a digest, CSS inlined, with these links.

    A combined edition's `unsubscribe_url` leaves every list it carries, `list_urls` each one.
    """
    context = _context(
        content,
        list_urls,
        unsubscribe_url=unsubscribe_url,
        preferences_url=preferences_url,
        view_url=view_url,
    )
    text = render_template("mail/digest.txt", **context)
    html = _INLINER.inline(render_template("mail/digest.html", **context))
    # Blank lines left by template tags say nothing and cost bytes a million times over.
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text, html


def render_web(content: Content, archive_url: str) -> str:
    """The digest's web version: the mail's HTML with no personal link, and a way to the
    list's other editions. Browsers read its <style>: nothing to inline."""
    return render_template(
        "mail/digest.html", web=True, archive_url=archive_url, **_context(content)
    )


def _qp(text: str) -> bytes:
    """Quoted-printable, CRLF, lines short enough that a soft break may follow the last."""
    latin = text.encode("utf-8").decode("latin-1")
    return email.quoprimime.body_encode(latin, maxlinelen=75, eol="\r\n").encode("ascii")


_SOFT_BREAK = b"=\r\n"
# What a link is made of, none of which quoted-printable needs to encode.
_PLAIN_URL = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;%-]*")


def _qp_link(url: str) -> bytes:
    """A link as quoted-printable lines ending in a soft break; the common case cut, not coded."""
    if _PLAIN_URL.fullmatch(url):
        return b"".join(
            url[i : i + 75].encode("ascii") + _SOFT_BREAK for i in range(0, len(url), 75)
        )
    return _qp(url) + _SOFT_BREAK


def _relaxed_body_lines(block: bytes) -> bytes:
    """dkimpy's relaxed canonicalisation of whole lines, without what it does at the body's end
    (dropping empty lines): a block is one piece of a body, and ends with a line break."""
    assert block.endswith(b"\r\n"), "a block ends with a line break"
    return canonicalization.compress_whitespace(canonicalization.strip_trailing_whitespace(block))


def list_hole(newsletter_id: int) -> str:
    """The name of the hole for a reader's unsubscribe link of one list of a combined mail."""
    return f"{UNSUBSCRIBE}:{newsletter_id}"


class ReaderLinks:
    """The per-reader links of a digest: the prefixes and signers made once.

    A list's digest has two: its unsubscribe link and the preferences link. A combined mail
    has one more per list it carries, and its unsubscribe link leaves all of them.
    """

    def __init__(self, links: Links, newsletter_id: int | None, lists: Sequence[int] = ()) -> None:
        self.links = links
        self.newsletter_id = newsletter_id
        self.lists = tuple(lists)
        self.unsubscribe_prefix = links.prefix(UNSUBSCRIBE)
        self.preferences_prefix = links.prefix(PREFERENCES)
        # The list's archive is for its readers: "View in browser" carries each one's key.
        self.archive_keys = False

    def archive_key(self, reader: Reader) -> str:
        """The reader's key to the list's archive, for their "View in browser" link."""
        assert self.newsletter_id is not None, "a combined mail has no web version"
        return self.links.archive_token(reader, self.newsletter_id)

    def urls(self, reader: Reader) -> tuple[str, str]:
        """The reader's one-click unsubscribe link for this mail, and their preferences link."""
        leaves = self.newsletter_id if self.newsletter_id is not None else self.lists
        return (
            self.unsubscribe_prefix + self.links.unsubscribe_token(reader, leaves),
            self.preferences_prefix + self.links.preferences_token(reader),
        )

    def holes(self, reader: Reader) -> dict[str, str]:
        """Every personal link of the reader's mail, by the name of its hole.

        Each list's own link of a combined mail is the link that leaves them all, narrowed
        to the list by its id after it (web/public.py): signed once, not once per list.
        """
        unsubscribe, preferences = self.urls(reader)
        found = {UNSUBSCRIBE: unsubscribe, PREFERENCES: preferences}
        for newsletter_id in self.lists:
            one = unsubscribe if len(self.lists) == 1 else f"{unsubscribe}/{newsletter_id}"
            found[list_hole(newsletter_id)] = one
        if self.archive_keys:
            found[ARCHIVE] = self.archive_key(reader)
        return found

    def mailto(self, reader: Reader) -> str:
        """The List-Unsubscribe header's mailto part for the reader, if an address is set.

        None for a combined mail: a mailto names one list, and one click must leave them all.
        """
        if self.newsletter_id is None:
            return ""
        address = self.links.unsubscribe_address(reader, self.newsletter_id)
        return f", <mailto:{address}?subject=unsubscribe>" if address else ""


class PreparedDigest:
    """A digest's mail as bytes with holes, filled per reader by `message`."""

    def __init__(
        self,
        content: Content | CombinedContent,
        message_key: str,
        links: Links,
        *,
        signer: BodySigner | None = None,
        locale: str = DEFAULT,
    ) -> None:
        newsletter = content.newsletter if isinstance(content, Content) else None
        lists = [] if isinstance(content, Content) else [n.id for n in content.lists]
        # Prepared once per send: it shows the brand as it stands now, not as this process
        # last read it (an editor who changes the brand and sends at once sees it in the mail).
        site.forget()
        self.domain = compose.mail_domain()
        self.message_key = message_key
        self.signer = signer
        self.links = ReaderLinks(links, newsletter.id if newsletter else None, lists)
        from_address = newsletter.from_address if newsletter else None
        self.sender = compose.wire_address(from_address or site.current().from_address)

        # Placeholders nobody can have typed into an item: random for every digest.
        marker = secrets.token_hex(8)
        holes = {UNSUBSCRIBE: f"U{marker}U", PREFERENCES: f"P{marker}P"}
        for n, newsletter_id in enumerate(lists):
            holes[list_hole(newsletter_id)] = f"L{marker}x{n}L"
        list_urls = {newsletter_id: holes[list_hole(newsletter_id)] for newsletter_id in lists}
        # "View in browser": the same link for every reader of a public archive; with the
        # reader's key (a hole) when only readers may open it. A combined mail has none.
        view_url = None
        if isinstance(content, Content) and content.web_path is not None:
            view_url = links.base_url + content.web_path
            if not content.newsletter.archive_public:
                self.links.archive_keys = True
                holes[ARCHIVE] = f"A{marker}A"
                view_url += f"?{ARCHIVE_KEY}={holes[ARCHIVE]}"
        # Its frame (footer, links, dates) in one language: a digest is prepared once per
        # language its readers read.
        with force_locale(locale):
            text, html = render(
                content, holes[UNSUBSCRIBE], holes[PREFERENCES], list_urls, view_url
            )
            list_headers = (
                compose.list_headers_static(content.newsletter)
                if isinstance(content, Content)
                else compose.combined_list_headers_static(content.frequency)
            )
        metrics.digest_rendered()

        boundary = f"=_{secrets.token_hex(12)}"
        lines = [f"From: {compose.sender(newsletter)}"]
        if newsletter is not None and newsletter.reply_to:
            lines.append(f"Reply-To: {compose.header_value(newsletter.reply_to, 254)}")
        # No length limit of its own: the digest's subject has one, and a test copy adds "[Test]".
        subject = compose.encoded_words("Subject", compose.header_value(content.subject))
        lines.append(f"Subject: {subject}")
        lines += [f"{name}: {value}" for name, value in list_headers.items()]
        lines.append("MIME-Version: 1.0")
        static_headers = "".join(line + "\r\n" for line in lines).encode("ascii")
        self.static_headers = (
            static_headers
            + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode()
        )

        def part(subtype: str) -> bytes:
            return (
                f"--{boundary}\r\n"
                f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            ).encode("ascii")

        # The body as fixed blocks with holes between them: (bytes, None) or (None, hole).
        pieces: list[tuple[bytes | None, str | None]] = []
        pending = b""
        by_marker = {marker: name for name, marker in holes.items()}
        any_hole = "|".join(by_marker)
        for subtype, body in (("plain", text), ("html", html)):
            pending += part(subtype)
            split = re.split(f"({any_hole})", body)
            for index, chunk in enumerate(split):
                if index % 2:
                    pieces.append((pending, None))
                    pending = b""
                    pieces.append((None, by_marker[chunk]))
                else:
                    encoded = _qp(chunk)
                    if index + 1 < len(split):
                        # A soft break ends the line before a link: the link gets its own lines.
                        encoded = encoded + _SOFT_BREAK if encoded else encoded
                    pending += encoded
            pending += b"\r\n"
        pending += f"--{boundary}--\r\n".encode("ascii")
        pieces.append((pending, None))
        self.pieces = pieces
        self.stuffed_pieces = [
            (dot_stuffed(block) if block is not None else None, hole) for block, hole in pieces
        ]
        # For DKIM: the fixed blocks canonicalised once (each holds whole lines).
        self.canonical = [
            _relaxed_body_lines(block) if block is not None else None for block, _ in pieces
        ]

    @staticmethod
    def recipient(address: str) -> str:
        """The envelope recipient for a reader's address."""
        return compose.wire_address(address)

    def message(
        self,
        delivery_id: int,
        to: str,
        reader: Reader,
        now: datetime | None = None,
        *,
        stuffed: bool = False,
    ) -> bytes:
        """The whole mail for one reader, ready for SMTP (and signed, with a signer); with
        `stuffed`, as it goes after SMTP's DATA (transport.dot_stuffed, ended by a lone dot)."""
        urls = self.links.holes(reader)
        unsubscribe = urls[UNSUBSCRIBE]
        filled = {hole: _qp_link(url) for hole, url in urls.items()}
        headers = (
            f"To: {compose.header_value(compose.wire_address(to), 254)}\r\n"
            f"Date: {format_datetime(now or utcnow())}\r\n"
            f"Message-ID: <{self.message_key}.{delivery_id}@{self.domain}>\r\n"
            f"List-Unsubscribe: <{unsubscribe}>{self.links.mailto(reader)}\r\n"
        ).encode("ascii") + self.static_headers
        head = headers + b"\r\n"
        if self.signer is not None:
            head = self.signer.sign_with_body_hash(headers, self._body_hash(filled)) + head
        if not stuffed:
            return head + b"".join(
                block if block is not None else filled[hole] for block, hole in self.pieces
            )
        # Each piece holds whole lines, so stuffing them one by one stuffs the whole; the fixed
        # blocks, most of the mail, were stuffed once.
        return (
            dot_stuffed(head)
            + b"".join(
                block if block is not None else dot_stuffed(filled[hole])
                for block, hole in self.stuffed_pieces
            )
            + END_OF_DATA
        )

    def _body_hash(self, filled: dict[str, bytes]) -> bytes:
        """SHA-256 of the relaxed canonical body: the fixed blocks' forms were made once."""
        digest = hashlib.sha256()
        for canonical, (_, hole) in zip(self.canonical, self.pieces, strict=True):
            if canonical is None:
                lines = filled[hole]  # type: ignore[index]
                blank = b" " in lines or b"\t" in lines
                canonical = _relaxed_body_lines(lines) if blank else lines
            digest.update(canonical)
        return digest.digest()

"""Building mails with the stdlib email package: addresses, list headers, links, parts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from urllib.parse import urlsplit

import idna
from babel.lists import format_list
from flask import current_app, render_template
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _

from newsletter import site
from newsletter.links import Links, reader_of
from newsletter.models import Newsletter, Subscriber, Subscription, utcnow
from newsletter.texts import local

# Lines may be as long as RFC 5322 allows: folded at 78, a long unsubscribe URL would be
# RFC 2047-encoded, and mail clients read List-Unsubscribe raw.
POLICY = policy.SMTP.clone(max_line_length=998)


# A line break that does not start a folded continuation line.
_BARE_BREAK = re.compile(r"\r(?!\n[ \t])|(?<!\r)\n")


class UnsafeHeader(ValueError):
    """A value cannot go into a mail header: a line break, a NUL, or too long."""


def header_value(value: str, limit: int = 900) -> str:
    """A value safe to put in a header: no line breaks, no NULs, not over `limit`."""
    if any(c in value for c in "\r\n\0"):
        raise UnsafeHeader("line break in a header value")
    if len(value) > limit:
        # Cutting would corrupt an address or a URL: refuse, and the mail fails alone.
        raise UnsafeHeader(f"header value longer than {limit} characters")
    return value


def wire_address(address: str) -> str:
    """An address as it travels: an internationalised domain in its ASCII (xn--) form."""
    local, _at, domain = address.rpartition("@")
    if domain.isascii():
        return address
    return f"{local}@{idna.encode(domain).decode('ascii')}"


def mail_domain() -> str:
    """The domain used in Message-IDs and List-Ids."""
    return current_app.config["LIST_ID_DOMAIN"] or urlsplit(current_app.config["BASE_URL"]).hostname


def encoded_words(name: str, text: str) -> str:
    """Header text: as it is when ASCII, else RFC 2047 encoded words of at most 75 characters.

    Not the email package's policies: folded at 998 they write a long subject as one encoded
    word (strict readers then show it raw), folded narrower they drop the spaces between words.
    The result may be folded over lines; set it with `EmailMessage.set_raw`.
    """
    if text.isascii() and "=?" not in text:
        return text
    return Header(text, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=75)


def mailbox(name: str, display: str, address: str) -> str:
    """A display name and an address, for From and List-Id; may be folded (`set_raw`)."""
    display = header_value(display, 200)
    if display.isascii():
        return formataddr((display, address))
    return f"{encoded_words(name, display)}\r\n <{address}>"


def sender(newsletter: Newsletter | None) -> str:
    """The From header of a newsletter, falling back to the site's default sender."""
    brand = site.current()
    name = (newsletter and newsletter.from_name) or brand.from_name
    address = (newsletter and newsletter.from_address) or brand.from_address
    return mailbox("From", name, header_value(address, 254))


def _senders(newsletters: Sequence[Newsletter]) -> tuple[str, str | None]:
    """From and Reply-To of a mail about these lists: theirs when they share one sender,
    else the site's default sender and no Reply-To."""
    first = newsletters[0]
    same = all(
        (n.from_name, n.from_address) == (first.from_name, first.from_address) for n in newsletters
    )
    return (sender(first), first.reply_to) if same else (sender(None), None)


def list_headers_static(newsletter: Newsletter) -> dict[str, str]:
    """The list headers that are the same for every reader of a list (RFC 2919, 8058)."""
    return {
        "List-Id": mailbox("List-Id", newsletter.name, f"{newsletter.slug}.{mail_domain()}"),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def combined_list_headers_static(frequency: str) -> dict[str, str]:
    """The list headers of the site's combined edition of a frequency: its own List-Id."""
    names = {"daily": _("Combined daily edition"), "weekly": _("Combined weekly edition")}
    return {
        "List-Id": mailbox(
            "List-Id", names.get(frequency, frequency), f"{frequency}.combined.{mail_domain()}"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def list_headers(links: Links, subscription: Subscription) -> dict[str, str]:
    """The RFC 2369 / 2919 / 8058 headers every mail about a list carries."""
    reader = reader_of(subscription.subscriber)
    targets = [f"<{links.unsubscribe_url(reader, subscription.newsletter_id)}>"]
    mailto = links.unsubscribe_address(reader, subscription.newsletter_id)
    if mailto:
        targets.append(f"<mailto:{header_value(mailto)}?subject=unsubscribe>")
    static = list_headers_static(subscription.newsletter)
    return {
        "List-Id": static["List-Id"],
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": static["List-Unsubscribe-Post"],
    }


def _folded(value: str) -> str:
    """A header value we built, possibly folded: every line break must start a continuation."""
    if "\0" in value or _BARE_BREAK.search(value):
        raise UnsafeHeader("line break in a header value")
    return value


def build(
    *,
    to: str,
    from_: str,
    subject: str,
    text: str,
    html: str,
    message_key: str,
    reply_to: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative message with the headers every mail of ours has."""
    message = EmailMessage(policy=POLICY)
    # Raw: the policy would refold encoded words into one long one (see encoded_words).
    message.set_raw("Subject", encoded_words("Subject", header_value(subject, 300)))
    message.set_raw("From", _folded(from_))
    message["To"] = Address(addr_spec=header_value(wire_address(to), 254))
    if reply_to:
        message["Reply-To"] = header_value(reply_to, 254)
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = f"<{message_key}@{mail_domain()}>"
    for name, value in (headers or {}).items():
        message.set_raw(name, _folded(header_value(value) if "\r\n " not in value else value))
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _render(name: str, **context: object) -> tuple[str, str]:
    return (
        render_template(f"mail/{name}.txt", **context),
        render_template(f"mail/{name}.html", **context),
    )


def confirmation(
    links: Links,
    subscriber: Subscriber,
    pending: Sequence[tuple[Subscription, str]],
    message_key: str,
    *,
    imported: bool = False,
    since: datetime | None = None,
) -> EmailMessage:
    """The one double opt-in mail for every list of a signup.

    `imported`: the reader was put on the lists by an import, not by a signup of their own:
    the mail asks them to confirm to keep receiving (re-permission), `since` when they were
    on the list from, if the import said so.
    """
    newsletters = [s.newsletter for s, _ in pending]
    names = local_names(newsletters)
    if imported:
        subject = ngettext(
            "Do you want to keep receiving %(names)s?",
            "Do you want to keep receiving these newsletters: %(names)s?",
            len(newsletters),
            names=names,
        )
    elif len(newsletters) == 1:
        subject = _("Please confirm your subscription to %(name)s", name=names)
    else:
        subject = _("Please confirm your newsletter subscriptions")
    url = links.confirm_url(reader_of(subscriber), [(s.id, nonce) for s, nonce in pending])
    text, html = _render(
        "confirmation",
        newsletters=newsletters,
        n=len(newsletters),
        confirm_url=url,
        imported=imported,
        since=since,
    )
    from_, reply_to = _senders(newsletters)
    return build(
        to=subscriber.email,
        from_=from_,
        subject=subject,
        text=text,
        html=html,
        message_key=message_key,
        reply_to=reply_to,
    )


def local_names(newsletters: Sequence[Newsletter]) -> str:
    """The lists' names in the current language, as a list in a sentence: "A, B and C"."""
    return format_list([local(n, "name") for n in newsletters], locale=str(get_locale() or "en"))


def _reader_mail(
    template: str,
    links: Links,
    subscriptions: Sequence[Subscription],
    subject: str,
    message_key: str,
) -> EmailMessage:
    """A mail to one reader about some of their lists, with each list's leave link.

    About one list, it carries that list's headers (List-Id, one-click List-Unsubscribe);
    about several, none: no header can name several lists, so each list's link is in the body.
    """
    subscriber = subscriptions[0].subscriber
    reader = reader_of(subscriber)
    lists = [
        ListLinks(s.newsletter, links.unsubscribe_url(reader, s.newsletter_id))
        for s in subscriptions
    ]
    text, html = _render(
        template,
        lists=lists,
        n=len(lists),
        newsletter=lists[0].newsletter,
        unsubscribe_url=lists[0].unsubscribe_url,
        preferences_url=links.preferences_url(reader),
    )
    from_, reply_to = _senders([entry.newsletter for entry in lists])
    return build(
        to=subscriber.email,
        from_=from_,
        subject=subject,
        text=text,
        html=html,
        message_key=message_key,
        reply_to=reply_to,
        headers=list_headers(links, subscriptions[0]) if len(subscriptions) == 1 else None,
    )


@dataclass(frozen=True)
class ListLinks:
    """A list a mail is about, and the reader's link to leave it."""

    newsletter: Newsletter
    unsubscribe_url: str


def welcome(links: Links, subscriptions: Sequence[Subscription], message_key: str) -> EmailMessage:
    """The one note a reader gets once they have confirmed, naming every list they confirmed."""
    if len(subscriptions) == 1:
        subject = _("Welcome to %(name)s", name=local(subscriptions[0].newsletter, "name"))
    else:
        subject = _(
            "Welcome to %(names)s", names=local_names([s.newsletter for s in subscriptions])
        )
    return _reader_mail("welcome", links, subscriptions, subject, message_key)


def leave_link(links: Links, subscription: Subscription, message_key: str) -> EmailMessage:
    """The unsubscribe link of one list, for a reader who wrote to the unsubscribe address.

    The mail they wrote proves nothing (anyone can put any From on a mail), so the list is
    left by the link, which only the address's owner receives.
    """
    subject = _("Your link to leave %(name)s", name=local(subscription.newsletter, "name"))
    return _reader_mail("leave_link", links, [subscription], subject, message_key)

"""Classify a returned mail: a bounce (RFC 3464 or not), a complaint (RFC 5965), or something else.

`parse` reads the message once with the standard library's parser. Delivery status notifications
and feedback reports are read from their machine-readable parts; only a message that looks like a
bounce without being a standard one goes to `flufl.bounce`, Mailman's detectors for the formats
servers make up (qmail, Exim's text, Yahoo, old Exchange).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import Header, decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr
from enum import StrEnum

from flufl.bounce import all_failures

DIAGNOSTIC_LENGTH = 500
MAX_ADDRESS_LENGTH = 254


class Kind(StrEnum):
    """What a returned mail means for the address it is about."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    UNSUBSCRIBE = "unsubscribe"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Report:
    """What a returned mail says.

    `recipients` are the addresses that failed or complained; for an unsubscribe request, an
    auto-reply or a reader's answer, the sender. `message_id` and `list_id` are those of our
    original message (without angle brackets), `tag` the VERP tag of the address the mail came
    back to, as found: whether it is genuine is for the signer to say.
    """

    kind: Kind
    recipients: tuple[str, ...] = ()
    status: str | None = None
    diagnostic: str = ""
    message_id: str | None = None
    list_id: str | None = None
    tag: str | None = None
    feedback_type: str | None = None


UNREADABLE = Report(Kind.OTHER, diagnostic="the message could not be read")

# Where the address a mail was delivered to shows, most reliable first.
_DELIVERY_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
# An enhanced status code (RFC 3463), not part of a longer dotted number such as an IP address.
_ENHANCED = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# A basic reply code opens a diagnostic ("550 No such user").
_BASIC = re.compile(r"\s*([245])\d\d(?!\d)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
_ANGLED = re.compile(r"<([^<>\s]+)>")
# An unquoted address anywhere in a header (our own addresses are never quoted).
_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]]+@[^\s<>,;:\"()\[\]]+")
# Header lines of an original message quoted as text (text/rfc822-headers, or a plain bounce).
_QUOTED = re.compile(
    r"^(message-id|list-id|return-path|to|x-hmxmroriginalrecipient)[ \t]*:"
    r"[ \t]*(.*(?:\n[ \t]+.*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_DAEMONS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mdaemon"})
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|fail|notif|problem|report)|returned mail|failure notice"
    r"|mail delivery|non-?delivery|could not be delivered|not delivered|delivery has failed",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[ -]?(?:reply|response|responder|antwort)"
    r"|automatische antwort|abwesenheit|r[ée]ponse automatique|respuesta autom[áa]tica"
    r"|risposta automatica|автовідповідь|автоответ|on vacation|away from (?:the|my) office",
    re.IGNORECASE,
)
# Feedback types that are not a reader's complaint: DMARC failure reports, "this is not spam".
_NOT_COMPLAINTS = frozenset({"auth-failure", "not-spam"})


def parse(
    data: bytes, *, bounce_address: str | None = None, unsubscribe_address: str | None = None
) -> Report:
    """Classify one returned mail; never raises, whatever the bytes."""
    try:
        return _parse(message_from_bytes(data), bounce_address, unsubscribe_address)
    except Exception:
        # Mail from the internet can be anything, and one message must not stop an ingest.
        return UNREADABLE


def _parse(msg: Message, bounce_address: str | None, unsubscribe_address: str | None) -> Report:
    delivered = _delivery_addresses(msg) if unsubscribe_address or bounce_address else []
    unsubscribe, unsubscribe_tag = _delivered_to(delivered, unsubscribe_address)
    subject = one_line(_decoded(_header(msg, "Subject")))
    if unsubscribe:
        return _personal(msg, Kind.UNSUBSCRIBE, subject, unsubscribe_tag)
    _, tag = _delivered_to(delivered, bounce_address)
    report = msg.get_content_type() == "multipart/report" and msg.is_multipart()
    if report:
        found = _report(msg, tag, bounce_address)
        if found is not None:
            return found
    daemon = report or "X-Failed-Recipients" in msg or _from_daemon(msg)
    if daemon or _BOUNCE_SUBJECT.search(subject):
        found = _nonstandard(msg, tag, bounce_address)
        if found is not None:
            return found
    if not daemon and _auto_reply(msg, subject):
        return _personal(msg, Kind.AUTOREPLY, subject, tag)
    return _personal(msg, Kind.OTHER, subject, tag)


def _personal(msg: Message, kind: Kind, subject: str, tag: str | None) -> Report:
    """A mail written by a person or for one: it is about its sender."""
    sender = clean_address(_mailbox(_header(msg, "From")))
    return Report(
        kind,
        recipients=(sender,) if sender else (),
        diagnostic=subject,
        message_id=_replied_to(msg),
        tag=tag,
    )


def _report(msg: Message, tag: str | None, bounce_address: str | None) -> Report | None:
    """A multipart/report: a delivery status notification or a feedback report."""
    status_blocks: list[Message] | None = None
    feedback: Message | None = None
    original = _Original()
    for part in _parts(msg):
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            status_blocks = _status_blocks(part)
        elif kind == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                feedback = payload[0]
        else:
            original.read(part)
    if feedback is not None:
        return _feedback(msg, feedback, original, tag, bounce_address)
    if status_blocks is None:
        return None
    return _delivery_status(msg, status_blocks, original, tag, bounce_address)


def _delivery_status(
    msg: Message,
    blocks: list[Message],
    original: _Original,
    tag: str | None,
    bounce_address: str | None,
) -> Report:
    """RFC 3464: each recipient block says what happened to one address."""
    found: dict[Kind, list[tuple[str, str | None, str]]] = {Kind.HARD: [], Kind.SOFT: []}
    original_id = None
    for block in blocks:
        original_id = original_id or _msg_id(_header(block, "X-Original-Message-ID"))
        recipient = clean_address(
            _header(block, "Final-Recipient") or _header(block, "Original-Recipient")
        )
        if recipient is None:
            continue
        diagnostic = _header(block, "Diagnostic-Code")
        # The type before the semicolon ("smtp; 550 ...") says how to read the rest.
        diagnostic = one_line(diagnostic.partition(";")[2] if ";" in diagnostic else diagnostic)
        status = status_code(_header(block, "Status")) or status_code(diagnostic)
        kind = _recipient_kind(_header(block, "Action").strip().lower(), status, diagnostic)
        if kind is not None:
            found[kind].append((recipient, status, diagnostic))
    kind = Kind.HARD if found[Kind.HARD] else Kind.SOFT
    if not found[kind]:
        # Delivered, relayed or expanded: a success notice is nothing to act on.
        return _personal(msg, Kind.OTHER, one_line(_decoded(_header(msg, "Subject"))), tag)
    _, status, diagnostic = found[kind][0]
    return Report(
        kind,
        recipients=_unique(recipient for recipient, _, _ in found[kind]),
        status=status,
        diagnostic=diagnostic,
        message_id=original.message_id or original_id or _replied_to(msg),
        list_id=original.list_id,
        tag=tag or _tag(original.return_path, bounce_address),
    )


def _recipient_kind(action: str, status: str | None, diagnostic: str) -> Kind | None:
    """Failed with a 5.x.x status is hard; 4.x.x or delayed is soft; the codes decide, not words."""
    code = status[0] if status else None
    if code is None and (basic := _BASIC.match(diagnostic)):
        code = basic.group(1)
    if action == "delayed":
        return Kind.SOFT
    if action == "failed":
        return Kind.SOFT if code == "4" else Kind.HARD
    if not action and code in ("4", "5"):
        # Some servers leave Action out; the status still says what happened.
        return Kind.HARD if code == "5" else Kind.SOFT
    return None


def _feedback(
    msg: Message, fields: Message, original: _Original, tag: str | None, bounce_address: str | None
) -> Report:
    """RFC 5965: a reader marked our mail as spam (or the report says why it is something else)."""
    feedback_type = one_line(_header(fields, "Feedback-Type")).lower() or None
    recipients = _unique(clean_address(value) for value in _all(fields, "Original-Rcpt-To"))
    if not recipients:
        recipients = original.recipients()
    agent = one_line(_header(fields, "User-Agent"))
    kind = Kind.OTHER if feedback_type in _NOT_COMPLAINTS else Kind.COMPLAINT
    return Report(
        kind,
        recipients=recipients,
        diagnostic=one_line(f"{feedback_type or 'feedback'} report from {agent or 'unknown'}"),
        message_id=original.message_id or _replied_to(msg),
        list_id=original.list_id,
        # A feedback loop mails its reports to one address; our envelope sender is in the report.
        tag=tag
        or _tag(_header(fields, "Original-Mail-From"), bounce_address)
        or _tag(original.return_path, bounce_address),
        feedback_type=feedback_type,
    )


def _nonstandard(msg: Message, tag: str | None, bounce_address: str | None) -> Report | None:
    """A bounce in a server's own words: Mailman's detectors find the addresses."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:
        # A detector that trips on a strange message means only that it found nothing.
        return None
    failed = permanent or temporary
    if not failed:
        return None
    recipients = _unique(
        clean_address(value.decode("ascii", "replace")) for value in sorted(failed)
    )
    if not recipients:
        return None
    original = _Original()
    text = ""
    for part in _parts(msg, into_multiparts=True):
        if part.get_content_type() == "text/plain" and not text:
            text = _text(part)
            original.read_text(text)
        else:
            original.read(part)
    diagnostic = _paragraph(text, recipients[0])
    return Report(
        Kind.HARD if permanent else Kind.SOFT,
        recipients=recipients,
        status=status_code(diagnostic),
        diagnostic=diagnostic,
        message_id=original.message_id or _replied_to(msg),
        list_id=original.list_id,
        tag=tag or _tag(original.return_path, bounce_address),
    )


class _Original:
    """The headers of our original message, as a report attaches or quotes them."""

    def __init__(self) -> None:
        self.message_id: str | None = None
        self.list_id: str | None = None
        self.return_path: str | None = None
        # Where the original was addressed; read into addresses only for a feedback report.
        self._named: list[str] = []
        self._to: list[str] = []

    def read(self, part: Message) -> None:
        """Take what an attached message (message/rfc822) or header block says."""
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            self.read_text(_text(part))
        elif kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                self._read_headers(payload[0])

    def _read_headers(self, headers: Message) -> None:
        self.message_id = self.message_id or _msg_id(_header(headers, "Message-ID"))
        self.list_id = self.list_id or _list_id(_header(headers, "List-Id"))
        self.return_path = self.return_path or _header(headers, "Return-Path") or None
        self._named = self._named or _all(headers, "X-HmXmrOriginalRecipient")
        self._to = self._to or _all(headers, "To")

    def read_text(self, text: str) -> None:
        """Take the first of each header line we use from quoted headers."""
        for match in _QUOTED.finditer(text):
            name, value = match.group(1).lower(), match.group(2)
            if name == "message-id":
                self.message_id = self.message_id or _msg_id(value)
            elif name == "list-id":
                self.list_id = self.list_id or _list_id(value)
            elif name == "return-path":
                self.return_path = self.return_path or value.strip() or None
            elif name == "to":
                self._to = self._to or [value]
            else:
                self._named = self._named or [value]

    def recipients(self) -> tuple[str, ...]:
        """Whom the original was sent to."""
        # Microsoft's feedback loop hides To but names the recipient in a header of its own.
        named = self._named or self._to
        return _unique(clean_address(address) for _, address in getaddresses(named))


def _parts(msg: Message, *, into_multiparts: bool = False) -> Iterator[Message]:
    """The parts of a multipart (and of the multiparts in it); attached messages stay whole."""
    if not msg.is_multipart():
        yield msg
        return
    for part in msg.get_payload():
        if not isinstance(part, Message):
            continue
        if into_multiparts and part.get_content_maintype() == "multipart":
            yield from _parts(part, into_multiparts=True)
        else:
            yield part


def _status_blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part, whichever way the parser left them."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    blocks = [block for block in payload if isinstance(block, Message)]
    if part.get_content_type() == "message/global-delivery-status" and blocks:
        # The parser reads only message/delivery-status as blocks; the rest is one "message".
        first, rest = blocks[0], blocks[0].get_payload()
        blocks = [first]
        if isinstance(rest, str):
            for chunk in re.split(r"\r?\n[ \t]*\r?\n", rest):
                if chunk.strip():
                    blocks.append(message_from_bytes(chunk.encode("utf-8", "surrogateescape")))
    return blocks


def _delivery_addresses(msg: Message) -> list[str]:
    """The addresses in the headers that say where the mail was delivered, most reliable first."""
    return [
        found for name in _DELIVERY_HEADERS for found in _ADDRESS.findall(" ".join(_all(msg, name)))
    ]


def _delivered_to(delivered: list[str], address: str | None) -> tuple[bool, str | None]:
    """Whether the mail came to this address (with or without a +tag), and the tag if any."""
    if not address or "@" not in address:
        return False, None
    local, _, domain = address.strip().rpartition("@")
    local, domain = local.lower(), domain.lower()
    seen = False
    for found in delivered:
        matched, tag = _match(found, local, domain)
        if matched and tag:
            return True, tag
        seen = seen or matched
    return seen, None


def _tag(value: str | None, address: str | None) -> str | None:
    """The tag of an address quoted in a report (an envelope sender), if it is ours."""
    if not value or not address or "@" not in address:
        return None
    local, _, domain = address.strip().rpartition("@")
    return _match(_mailbox(value), local.lower(), domain.lower())[1]


def _match(found: str, local: str, domain: str) -> tuple[bool, str | None]:
    """Whether `found` is local[+tag]@domain, compared without case; the tag as written."""
    found_local, at, found_domain = found.rpartition("@")
    if not at or found_domain.rstrip(".").lower() != domain:
        return False, None
    if found_local.lower() == local:
        return True, None
    # The configured local part may itself hold a "+" (news+bounces@): the tag follows it.
    if found_local.lower().startswith(local + "+"):
        return True, found_local[len(local) + 1 :] or None
    return False, None


def _from_daemon(msg: Message) -> bool:
    """Sent by a mail system rather than a person (MAILER-DAEMON, postmaster)."""
    sender = _mailbox(_header(msg, "From")).lower()
    return sender.partition("@")[0] in _DAEMONS


def _auto_reply(msg: Message, subject: str) -> bool:
    """An out-of-office answer or another reply made by a program (RFC 3834 and older habits)."""
    submitted = _header(msg, "Auto-Submitted").strip().lower()
    if submitted and not submitted.startswith("no"):
        return True
    for name in ("X-Autoreply", "X-Autorespond"):
        value = _header(msg, name).strip().lower()
        if value and value != "no":
            return True
    if _header(msg, "Precedence").strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(subject))


def _mailbox(value: str) -> str:
    """The address of a From-like header: "Name <a@b>", "<a@b>", "a@b" or "a@b (Name)"."""
    angled = _ANGLED.search(value)
    if angled:
        return angled.group(1)
    value = value.strip()
    if " " not in value and "," not in value:
        return value
    return parseaddr(value)[1]


def _replied_to(msg: Message) -> str | None:
    """The message this one answers: In-Reply-To, else the last of References."""
    found = _msg_id(_header(msg, "In-Reply-To"))
    if found:
        return found
    references = _ANGLED.findall(_header(msg, "References"))
    return references[-1] if references else None


def _header(msg: Message, name: str) -> str:
    """A header's value as text; raw 8-bit bytes (UTF-8 most often) decoded, not dropped."""
    value = msg.get(name)
    if value is None:
        return ""
    if isinstance(value, Header):
        # compat32 hides undeclared 8-bit text behind a Header; the raw value still holds it.
        for raw_name, raw in msg.raw_items():
            if raw_name.lower() == name.lower():
                return _unescape(str(raw))
        return str(value)
    return _unescape(value)


def _all(msg: Message, name: str) -> list[str]:
    """Every value of a header, as text."""
    values = msg.get_all(name)
    if not values:
        return []
    if any(isinstance(value, Header) for value in values):
        return [_unescape(str(raw)) for key, raw in msg.raw_items() if key.lower() == name.lower()]
    return [_unescape(value) for value in values]


def _unescape(value: str) -> str:
    """Undo the parser's surrogate escapes: the bytes were most likely UTF-8."""
    if not value.isascii():
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _decoded(value: str) -> str:
    """RFC 2047 encoded words decoded; the value as it stands when they are broken."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return value


def _text(part: Message) -> str:
    """A text part's body, decoded from its transfer encoding and charset."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _paragraph(text: str, address: str) -> str:
    """The lines about an address in a bounce's text, as one line."""
    at = text.lower().find(address.lower())
    if at < 0:
        return ""
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n\n", at)
    end = len(text) if end < 0 else end
    paragraph = text[start:end]
    if len(paragraph.strip().strip("<>:")) <= len(address) and end < len(text):
        # The address stood alone; the reason is the paragraph after it.
        following = text.find("\n\n", end + 2)
        paragraph += " " + text[end : following if following >= 0 else len(text)]
    return one_line(paragraph)


def one_line(text: str) -> str:
    """One line of plain text: no control characters, spaces collapsed, not too long."""
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text[:DIAGNOSTIC_LENGTH].rstrip()


def status_code(text: str) -> str | None:
    """The first enhanced status code (5.1.1) in a text."""
    found = _ENHANCED.search(text)
    return found.group(1) if found else None


def clean_address(value: str | None) -> str | None:
    """An address as reports write it ("rfc822; Name@Example.NET"), with its domain lowercased."""
    if not value:
        return None
    value = value.strip()
    if ";" in value:
        # An address type first (rfc822, utf-8), as DSN and ARF fields write it.
        value = value.partition(";")[2].strip()
    value = _mailbox(value)
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or _CONTROL.search(value) or " " in value:
        return None
    if len(value) > MAX_ADDRESS_LENGTH:
        # Longer than any address mail can go to (RFC 5321's path limit).
        return None
    return f"{local}@{domain.lower()}"


def _msg_id(value: str) -> str | None:
    """A Message-ID without its angle brackets."""
    found = _ANGLED.search(value)
    if found:
        return found.group(1)
    value = value.strip()
    return value if "@" in value and not _SPACES.search(value) else None


def _list_id(value: str) -> str | None:
    """The identifier of a List-Id (RFC 2919), without the display name or the brackets."""
    found = _ANGLED.search(value)
    if found:
        return found.group(1)
    value = value.strip()
    return value if value and not _SPACES.search(value) else None


def _unique(addresses: Iterable[str | None]) -> tuple[str, ...]:
    """The addresses found, in order, each once."""
    return tuple(dict.fromkeys(address for address in addresses if address))

"""Bounces and complaints providers POST to us: Amazon SES (through SNS), Postmark, our own form.

Each function takes the raw body (and what it needs of the request's headers) and returns events,
or refuses the request with a `WebhookRefused` carrying the HTTP status to answer: 403 when the
sender cannot be trusted, 400 when what it sent cannot be read, 503 when SNS's certificate could
not be fetched (SNS sends again later). Nothing here knows of Flask or of the database; an
event's `event_id` is the same each time a provider sends it again, so the caller can tell a
replay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import re
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.bounces.parse import Kind, clean_address, one_line, status_code
from newsletter.errors import UserError

MAX_EVENTS = 1000
SIGNATURE_HEADER = "X-Newsletter-Signature"
# SNS signs with certificates served from its regional hosts only (AWS's documented check).
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
_SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
# The fields SNS signs, in the order it signs them, per message type.
_SIGNED_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SIGNED_CONFIRMATION = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}
_POSTMARK_BOUNCES = {
    "HardBounce": Kind.HARD,
    "BadEmailAddress": Kind.HARD,
    "SoftBounce": Kind.SOFT,
    "Transient": Kind.SOFT,
    "DnsError": Kind.SOFT,
    "Blocked": Kind.SOFT,
    "SpamNotification": Kind.SOFT,
    "SpamComplaint": Kind.COMPLAINT,
}
_GENERIC_KINDS = {kind.value: kind for kind in (Kind.HARD, Kind.SOFT, Kind.COMPLAINT)}


class WebhookRefused(UserError):
    """The request is refused; `status` is the HTTP status to answer with."""

    status = 400
    message = "The request was refused."


class Malformed(WebhookRefused):
    """The body cannot be read as what the provider sends."""

    status = 400
    message = "The request body is not a notification we can read."


class BadSignature(WebhookRefused):
    """The request does not prove it comes from the provider."""

    status = 403
    message = "The request's signature or credentials do not match."


class Unavailable(WebhookRefused):
    """The signature cannot be checked now (its certificate did not come); the sender retries."""

    status = 503
    message = "The signing certificate could not be fetched; try again later."


@dataclass(frozen=True, slots=True)
class Event:
    """A bounce or complaint a provider reports for one address."""

    kind: Kind
    address: str
    provider: str
    event_id: str
    status: str | None = None
    diagnostic: str = ""
    message_id: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SnsResult:
    """What an SNS request asks of us: events to record, or a subscription to confirm."""

    events: tuple[Event, ...] = ()
    subscribe_url: str | None = None


CertificateFetcher = Callable[[str], bytes]


def fetch_certificate(url: str, timeout: float = 10.0) -> bytes:
    """The PEM certificate at an https URL; no redirects are followed."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise BadSignature("The signing certificate must be fetched over https.")
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=timeout, context=ssl.create_default_context()
    )
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        body = response.read(65536)
    except OSError as exc:
        raise Unavailable(f"The signing certificate could not be fetched: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise Unavailable(f"The signing certificate could not be fetched: {response.status}.")
    return body


def is_sns_url(url: str) -> bool:
    """An https URL on an SNS host (sns.<region>.amazonaws.com or .amazonaws.com.cn)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.username is None
        and parts.password is None
        and port in (None, 443)
        and parts.hostname is not None
        and _SNS_HOST.fullmatch(parts.hostname) is not None
        and "@" not in parts.netloc
    )


class SnsVerifier:
    """Checks SNS message signatures; keeps each signing certificate it fetched, by URL."""

    def __init__(
        self,
        fetch: CertificateFetcher = fetch_certificate,
        *,
        topics: Collection[str] | None = None,
        cache_size: int = 16,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.fetch = fetch
        self.topics = frozenset(topics) if topics is not None else None
        self.cache_size = cache_size
        self.clock = clock
        self._certificates: dict[str, x509.Certificate] = {}

    def verify(self, message: Mapping[str, Any]) -> None:
        """Refuse a message that SNS did not sign, or that comes from a topic we do not use."""
        kind = message.get("Type")
        keys = _SIGNED_NOTIFICATION if kind == "Notification" else _SIGNED_CONFIRMATION
        canonical = "".join(
            f"{key}\n{_field(message, key)}\n"
            for key in keys
            if not (key == "Subject" and message.get("Subject") is None)
        ).encode()
        version = message.get("SignatureVersion")
        if version not in _SNS_HASHES:
            raise BadSignature(f"Unsupported SNS signature version: {str(version)[:20]!r}.")
        try:
            signature = base64.b64decode(_field(message, "Signature"), validate=True)
        except binascii.Error:
            raise BadSignature("The SNS signature is not base64.") from None
        key = self._certificate(_field(message, "SigningCertURL")).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise BadSignature("The SNS signing certificate does not hold an RSA key.")
        try:
            key.verify(signature, canonical, padding.PKCS1v15(), _SNS_HASHES[version]())
        except InvalidSignature:
            raise BadSignature("The SNS signature does not match the message.") from None
        if self.topics is not None and message.get("TopicArn") not in self.topics:
            raise BadSignature("The SNS message comes from a topic we do not subscribe to.")

    def _certificate(self, url: str) -> x509.Certificate:
        """The certificate at an SNS URL, fetched once, checked for its dates at each use."""
        if not is_sns_url(url):
            raise BadSignature("The SNS signing certificate is not on an SNS host.")
        certificate = self._certificates.get(url)
        if certificate is None:
            try:
                pem = self.fetch(url)
            except OSError as exc:
                raise Unavailable(f"The signing certificate could not be fetched: {exc}") from exc
            try:
                certificate = x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise BadSignature("The SNS signing certificate cannot be read.") from None
            if len(self._certificates) >= self.cache_size:
                self._certificates.pop(next(iter(self._certificates)))
            self._certificates[url] = certificate
        now = self.clock()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise BadSignature("The SNS signing certificate is not valid now.")
        return certificate


def ses(body: bytes, verifier: SnsVerifier, *, message_type: str | None = None) -> SnsResult:
    """Amazon SES bounce and complaint notifications, delivered by SNS and signed by it."""
    message = _json_object(body)
    kind = message.get("Type")
    if kind not in _SNS_TYPES:
        raise Malformed("The body is not an SNS message.")
    if message_type is not None and message_type != kind:
        raise Malformed("The SNS message type header does not match the body.")
    verifier.verify(message)
    if kind == "SubscriptionConfirmation":
        url = _field(message, "SubscribeURL")
        if not is_sns_url(url):
            raise BadSignature("The subscription URL is not on an SNS host.")
        return SnsResult(subscribe_url=url)
    if kind == "UnsubscribeConfirmation":
        return SnsResult()
    return SnsResult(events=tuple(_ses_events(_json_object(_field(message, "Message").encode()))))


def _ses_events(notification: Mapping[str, Any]) -> list[Event]:
    """The events of one SES notification (or event publishing record)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail")
    message_id = _ses_message_id(mail if isinstance(mail, dict) else {})
    if kind == "Bounce":
        bounce = _object(notification, "bounce")
        bounce_type = bounce.get("bounceType")
        event_kind = Kind.HARD if bounce_type == "Permanent" else Kind.SOFT
        recipients = _list(bounce, "bouncedRecipients")
        detail = f"{bounce_type} {bounce.get('bounceSubType') or ''}"
    elif kind == "Complaint":
        bounce = _object(notification, "complaint")
        event_kind = Kind.COMPLAINT
        recipients = _list(bounce, "complainedRecipients")
        feedback = bounce.get("complaintFeedbackType") or "complaint"
        detail = f"{feedback} {bounce.get('userAgent') or ''}"
    else:
        # Deliveries, sends, opens: nothing to act on here.
        return []
    feedback_id = bounce.get("feedbackId")
    if not isinstance(feedback_id, str) or not feedback_id:
        raise Malformed("The SES notification has no feedbackId.")
    events = []
    for recipient in recipients:
        if not isinstance(recipient, dict):
            raise Malformed("An SES recipient is not an object.")
        address = clean_address(_text(recipient.get("emailAddress")))
        if address is None:
            raise Malformed("An SES recipient has no valid emailAddress.")
        diagnostic = _text(recipient.get("diagnosticCode")) or detail
        status = status_code(_text(recipient.get("status"))) or status_code(diagnostic)
        events.append(
            Event(
                event_kind,
                address,
                provider="ses",
                event_id=f"{feedback_id}:{address.lower()}",
                status=status,
                diagnostic=one_line(diagnostic.removeprefix("smtp;")),
                message_id=message_id,
                occurred_at=_when(bounce.get("timestamp")),
            )
        )
    return events


def _ses_message_id(mail: Mapping[str, Any]) -> str | None:
    """Our Message-ID header as SES echoes it back, else SES's own id for the message."""
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers:
            if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
                return _bare_id(_text(header.get("value")))
    common = mail.get("commonHeaders")
    if isinstance(common, dict) and common.get("messageId"):
        return _bare_id(_text(common.get("messageId")))
    return _bare_id(_text(mail.get("messageId")))


def check_basic_auth(authorization: str | None, username: str, password: str) -> None:
    """Refuse unless the Authorization header carries these credentials (constant-time compare)."""
    if not password:
        raise BadSignature("No credentials are configured for this webhook.")
    given = b""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            given = b""
    expected = f"{username}:{password}".encode()
    if not hmac.compare_digest(given, expected):
        raise BadSignature()


def postmark(
    body: bytes, *, authorization: str | None, username: str, password: str
) -> list[Event]:
    """A Postmark bounce or spam complaint webhook, authenticated with HTTP basic auth."""
    check_basic_auth(authorization, username, password)
    record = _json_object(body)
    record_type = record.get("RecordType")
    if record_type == "SpamComplaint":
        kind: Kind | None = Kind.COMPLAINT
    elif record_type == "Bounce":
        kind = _POSTMARK_BOUNCES.get(_text(record.get("Type")))
    else:
        kind = None
    if kind is None:
        # Deliveries, opens, auto-responders, subscription changes: not ours to act on.
        return []
    address = clean_address(_text(record.get("Email")))
    if address is None:
        raise Malformed("The Postmark record has no valid Email.")
    if record.get("ID") in (None, ""):
        raise Malformed("The Postmark record has no ID.")
    details = _text(record.get("Details")) or _text(record.get("Description"))
    return [
        Event(
            kind,
            address,
            provider="postmark",
            event_id=str(record["ID"]),
            status=status_code(details),
            diagnostic=one_line(details),
            message_id=_bare_id(_text(record.get("MessageID"))),
            occurred_at=_when(record.get("BouncedAt")),
        )
    ]


def sign(body: bytes, secret: str) -> str:
    """The X-Newsletter-Signature value for a body: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def generic(body: bytes, *, signature: str | None, secret: str) -> list[Event]:
    """Our own form: {"events": [{"type", "email", "status", "diagnostic", "message_id", "id"}]}."""
    if not secret:
        raise BadSignature("No secret is configured for this webhook.")
    given = (signature or "").strip()
    scheme, _, digest = given.partition("=")
    given = f"{scheme.lower()}={digest.lower()}"
    if not hmac.compare_digest(given.encode("utf-8", "replace"), sign(body, secret).encode()):
        raise BadSignature()
    payload = _json_object(body)
    items = payload.get("events")
    if not isinstance(items, list):
        raise Malformed('The body needs an "events" list.')
    if len(items) > MAX_EVENTS:
        raise Malformed(f"At most {MAX_EVENTS} events in one request.")
    # Events sent without an id are named by the body they came in: a replay has the same ids.
    body_id = hashlib.sha256(body).hexdigest()[:32]
    return [_generic_event(item, number, body_id) for number, item in enumerate(items)]


def _generic_event(item: object, number: int, body_id: str) -> Event:
    """One event of our form, checked field by field."""
    where = f"events[{number}]"
    if not isinstance(item, dict):
        raise Malformed(f"{where} is not an object.")
    kind = _GENERIC_KINDS.get(_text(item.get("type")))
    if kind is None:
        raise Malformed(f"{where}.type must be hard, soft or complaint.")
    address = clean_address(_text(item.get("email")))
    if address is None:
        raise Malformed(f"{where}.email is not an email address.")
    status = _optional(item, "status", where)
    if status is not None and status_code(status) != status:
        raise Malformed(f"{where}.status must be an enhanced status code such as 5.1.1.")
    event_id = _optional(item, "id", where) or f"{body_id}:{number}"
    occurred = _optional(item, "occurred_at", where)
    occurred_at = _when(occurred)
    if occurred is not None and occurred_at is None:
        raise Malformed(f"{where}.occurred_at must be an ISO 8601 date and time.")
    message_id = _optional(item, "message_id", where)
    return Event(
        kind,
        address,
        provider="generic",
        event_id=one_line(event_id)[:200],
        status=status,
        diagnostic=one_line(_optional(item, "diagnostic", where) or ""),
        message_id=_bare_id(message_id) if message_id else None,
        occurred_at=occurred_at,
    )


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON object, or a 400."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("The body is not JSON.") from None
    if not isinstance(value, dict):
        raise Malformed("The body is not a JSON object.")
    return value


def _field(message: Mapping[str, Any], key: str) -> str:
    """A string field the message must have."""
    value = message.get(key)
    if not isinstance(value, str):
        raise Malformed(f"The SNS message has no {key}.")
    return value


def _object(value: Mapping[str, Any], key: str) -> dict[str, Any]:
    found = value.get(key)
    if not isinstance(found, dict):
        raise Malformed(f"The notification has no {key} object.")
    return found


def _list(value: Mapping[str, Any], key: str) -> list[object]:
    found = value.get(key)
    if not isinstance(found, list):
        raise Malformed(f"The notification has no {key} list.")
    return found


def _optional(item: Mapping[str, Any], key: str, where: str) -> str | None:
    """An optional string field of our form."""
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{where}.{key} must be a string.")
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bare_id(value: str) -> str | None:
    """A Message-ID without its angle brackets, on one line."""
    value = one_line(value).strip("<>").strip()
    return value or None


def _when(value: object) -> datetime | None:
    """An ISO 8601 time as providers write it; a time without a zone is UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""Signed links in mails and pages: one salt per purpose, the formats, and the link builder.

Every link a reader gets names them by their id and their per-person key (so a reused row
id cannot inherit old links), plus what the link is for. The payloads are written and read
here only; the web app routes the paths below, and mail builds its links with `Links`
from the base URL and the keys, without a request or the app's URL map.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, Serializer, SignatureExpired, Signer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from newsletter.errors import UserError
from newsletter.languages import lazy_gettext

CONFIRM = "confirm"
UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
ARCHIVE = "archive"
# Where each kind of link points, under the base URL; web/public.py routes these paths.
# An archive link is a list's page under ARCHIVE's path with the token as its `key` argument.
PATHS = {
    CONFIRM: "/confirm/",
    UNSUBSCRIBE: "/unsubscribe/",
    PREFERENCES: "/preferences/",
    ARCHIVE: "/archive/",
}
ARCHIVE_KEY = "key"


# What a VERP tag names: one digest delivery, or one outbox mail.
DELIVERY = "d"
OUTBOX = "o"
# A tag in a returned mail's address: kind, row id, signature. Lowercase only, so a mail server
# that lowercases the local part (many do) changes nothing.
_TAG = re.compile(r"([do])([0-9]{1,12})-([a-z2-7]{16})")
# A mailto unsubscribe tag: subscriber id, newsletter id, signature over the reader's key too.
_UNSUBSCRIBE_TAG = re.compile(r"u([0-9]{1,12})x([0-9]{1,12})-([a-z2-7]{16})")


class LinkError(UserError):
    """A link that cannot be used."""

    message = lazy_gettext("This link cannot be used.")


class TamperedLink(LinkError):
    """The signature does not match: a mangled or forged link."""

    message = lazy_gettext("This link is broken.")


class ExpiredLink(LinkError):
    """A genuine link past its age; what it names is kept so a fresh one can be offered."""

    message = lazy_gettext("This link has expired.")

    def __init__(self, link: object) -> None:
        super().__init__()
        self.link = link


class LinkNoLongerValid(LinkError):
    """A genuine link whose reader or subscriptions have moved on (used, left, erased)."""

    message = lazy_gettext("This link is no longer valid.")


@dataclass(frozen=True)
class Reader:
    """Whom a link was made for: a subscriber's id and their per-person key."""

    subscriber_id: int
    key: str


@dataclass(frozen=True)
class ConfirmLink:
    """A confirmation link: the (subscription id, nonce) pairs it confirms."""

    reader: Reader
    pairs: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class UnsubscribeLink:
    """A one-click unsubscribe link for one list, or for every list a combined mail carried."""

    reader: Reader
    newsletter_id: int
    # The other lists of a combined mail's link: it leaves them all.
    others: tuple[int, ...] = ()

    @property
    def newsletter_ids(self) -> tuple[int, ...]:
        return (self.newsletter_id, *self.others)


# Whom the links of an editor's test copy or preview name: nobody. Their pages say it was a test.
TEST_READER = Reader(0, "test")


def reader_of(subscriber: Any) -> Reader:
    """The `Reader` of a subscriber row."""
    return Reader(subscriber.id, subscriber.token_key)


def _reader(payload: Any) -> Reader:
    if not isinstance(payload, dict):
        raise LinkNoLongerValid()
    subscriber_id, key = payload.get("s"), payload.get("k")
    if not isinstance(subscriber_id, int) or not isinstance(key, str):
        raise LinkNoLongerValid()
    return Reader(subscriber_id, key)


def _confirm(payload: Any) -> ConfirmLink:
    reader = _reader(payload)
    pairs = payload.get("n")
    if not isinstance(pairs, list):
        raise LinkNoLongerValid()
    return ConfirmLink(
        reader,
        tuple(
            (pair[0], str(pair[1]))
            for pair in pairs
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
        ),
    )


def _unsubscribe(payload: Any) -> UnsubscribeLink:
    reader = _reader(payload)
    newsletter_id, others = payload.get("l"), payload.get("o", [])
    if not isinstance(newsletter_id, int) or not isinstance(others, list):
        raise LinkNoLongerValid()
    if not all(isinstance(other, int) for other in others):
        raise LinkNoLongerValid()
    return UnsubscribeLink(reader, newsletter_id, tuple(others))


@dataclass(frozen=True)
class ArchiveLink:
    """A reader's key to one list's private archive."""

    reader: Reader
    newsletter_id: int


def _archive(payload: Any) -> ArchiveLink:
    link = _unsubscribe(payload)
    return ArchiveLink(link.reader, link.newsletter_id)


@dataclass(frozen=True)
class Tag:
    """What a verified VERP tag names: a digest delivery or an outbox mail, by row id."""

    kind: str  # DELIVERY or OUTBOX
    row_id: int


# Payloads up to this many bytes of JSON are not offered to zlib (see _LinkSerializer).
_SHORT_PAYLOAD = 120


class _LinkSerializer(URLSafeTimedSerializer):
    """itsdangerous's URL-safe timed serializer, cheaper for the two links of every digest mail.

    The signer is made once rather than for every link. A short payload (a reader's id and key)
    is not offered to zlib, which never made it shorter and cost more than the signature;
    itsdangerous reads tokens with and without compression alike, so links mailed before
    and after this read the same.
    """

    def dump_payload(self, obj: Any) -> bytes:
        data = Serializer.dump_payload(self, obj)
        if len(data) > _SHORT_PAYLOAD:
            return super().dump_payload(obj)
        return base64_encode(data)

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None and salt != self.salt:
            return super().make_signer(salt)
        signer = self.__dict__.get("_signer")
        if signer is None:
            signer = self.__dict__["_signer"] = super().make_signer()
        return signer


class Links:
    """Makes and reads the signed links of one service: its base URL and its keys.

    Also the signed tags of addresses: the envelope sender of every mail when a bounce address
    is set (VERP: bounces+TAG@domain names the delivery a returned mail is about, and nothing
    of the reader's address), and the reader's own mailto unsubscribe address.
    """

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        fallbacks: Sequence[str] = (),
        *,
        bounce_address: str | None = None,
        unsubscribe_mailto: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # itsdangerous signs with the last key and accepts every key in the list.
        keys = [*fallbacks, secret_key]
        self._serializers = {
            purpose: _LinkSerializer(keys, salt=f"newsletter.{purpose}") for purpose in PATHS
        }
        self._tag_keys = [
            hashlib.sha256(f"newsletter.verp:{key}".encode()).digest() for key in reversed(keys)
        ]
        self.bounce_address = bounce_address
        self.unsubscribe_mailto = unsubscribe_mailto

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Links:
        """The links of NEWSLETTER_BASE_URL, NEWSLETTER_SECRET_KEY and its fallbacks, with
        NEWSLETTER_BOUNCE_ADDRESS and NEWSLETTER_UNSUBSCRIBE_MAILTO."""
        return cls(
            str(config["BASE_URL"]),
            str(config["SECRET_KEY"]),
            [str(key) for key in config.get("SECRET_KEY_FALLBACKS") or ()],
            bounce_address=config.get("BOUNCE_ADDRESS") or None,
            unsubscribe_mailto=config.get("UNSUBSCRIBE_MAILTO") or None,
        )

    def _mac(self, text: str, key: bytes | None = None) -> str:
        digest = hmac.new(key or self._tag_keys[0], text.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode("ascii").lower()

    def _verified(self, text: str, mac: str) -> bool:
        return any(hmac.compare_digest(self._mac(text, key), mac) for key in self._tag_keys)

    def envelope_sender(self, kind: str, row_id: int) -> str | None:
        """The VERP envelope sender of one mail, or None when no bounce address is set."""
        if not self.bounce_address:
            return None
        local, _, domain = self.bounce_address.rpartition("@")
        text = f"{kind}{row_id}"
        return f"{local}+{text}-{self._mac(text)}@{domain}"

    def read_tag(self, tag: str) -> Tag | None:
        """The delivery a returned mail's VERP tag names, or None when it is not one of ours."""
        match = _TAG.fullmatch(tag.strip().lower())
        if match is None or not self._verified(f"{match[1]}{match[2]}", match[3]):
            return None
        return Tag(match[1], int(match[2]))

    def unsubscribe_address(self, reader: Reader, newsletter_id: int) -> str | None:
        """The reader's own mailto unsubscribe address for one list, or None when unset.

        Signed over the reader's per-person key too: no tag of one reader fits another.
        """
        if not self.unsubscribe_mailto:
            return None
        local, _, domain = self.unsubscribe_mailto.rpartition("@")
        text = f"u{reader.subscriber_id}x{newsletter_id}"
        return f"{local}+{text}-{self._mac(f'{text}:{reader.key}')}@{domain}"

    def read_unsubscribe_tag(self, tag: str) -> tuple[int, int, str] | None:
        """(subscriber id, newsletter id, signature) of a mailto tag; check it with
        `unsubscribe_tag_matches` once the subscriber's key is known."""
        match = _UNSUBSCRIBE_TAG.fullmatch(tag.strip().lower())
        if match is None:
            return None
        return int(match[1]), int(match[2]), match[3]

    def unsubscribe_tag_matches(
        self, subscriber_id: int, newsletter_id: int, signature: str, key: str
    ) -> bool:
        """Whether a mailto tag was made for this reader (their key) and list."""
        return self._verified(f"u{subscriber_id}x{newsletter_id}:{key}", signature)

    def prefix(self, purpose: str) -> str:
        """A link of this purpose up to its token."""
        return self.base_url + PATHS[purpose]

    def token(self, purpose: str, payload: object) -> str:
        """Sign a payload for one purpose."""
        return self._serializers[purpose].dumps(payload)

    def confirm_url(self, reader: Reader, pairs: Sequence[tuple[int, str]]) -> str:
        """The link that confirms these (subscription id, nonce) pairs."""
        payload = self._payload(reader, n=[list(pair) for pair in pairs])
        return self.prefix(CONFIRM) + self.token(CONFIRM, payload)

    def unsubscribe_url(self, reader: Reader, newsletter_id: int | Sequence[int]) -> str:
        """The one-click unsubscribe link for one list, or for several (a combined mail's);
        it never expires."""
        return self.prefix(UNSUBSCRIBE) + self.unsubscribe_token(reader, newsletter_id)

    def unsubscribe_token(self, reader: Reader, newsletter_id: int | Sequence[int]) -> str:
        """The token of `unsubscribe_url`."""
        if not isinstance(newsletter_id, int) and len(newsletter_id) == 1:
            newsletter_id = newsletter_id[0]
        if isinstance(newsletter_id, int):
            return self.token(UNSUBSCRIBE, self._payload(reader, l=newsletter_id))
        first, *others = newsletter_id
        return self.token(UNSUBSCRIBE, self._payload(reader, l=first, o=others))

    def preferences_url(self, reader: Reader) -> str:
        """The link to the reader's page of all lists."""
        return self.prefix(PREFERENCES) + self.preferences_token(reader)

    def preferences_token(self, reader: Reader) -> str:
        """The token of `preferences_url`."""
        return self.token(PREFERENCES, self._payload(reader))

    def archive_url(self, path: str, reader: Reader, newsletter_id: int) -> str:
        """A page of a list's readers-only archive (`path`: under the base URL) for a reader."""
        token = self.archive_token(reader, newsletter_id)
        return f"{self.base_url}{path}?{ARCHIVE_KEY}={token}"

    def archive_token(self, reader: Reader, newsletter_id: int) -> str:
        """The reader's key to one list's archive, for the `key` argument of its pages."""
        return self.token(ARCHIVE, self._payload(reader, l=newsletter_id))

    @staticmethod
    def _payload(reader: Reader, **extra: object) -> dict[str, object]:
        return {"s": reader.subscriber_id, "k": reader.key, **extra}

    def read_confirm(self, token: str, max_age: int | None) -> ConfirmLink:
        """A confirmation link's contents; TamperedLink, ExpiredLink (with the contents)."""
        return _confirm(self._loads(CONFIRM, token, max_age, _confirm))

    def read_unsubscribe(self, token: str) -> UnsubscribeLink:
        """An unsubscribe link's contents; they never expire."""
        return _unsubscribe(self._loads(UNSUBSCRIBE, token))

    def read_archive(self, token: str) -> ArchiveLink:
        """Whose key to which list's archive this is; it never expires."""
        return _archive(self._loads(ARCHIVE, token))

    def read_preferences(self, token: str) -> Reader:
        """Whom a preferences link was made for; it never expires."""
        return _reader(self._loads(PREFERENCES, token))

    def _loads(self, purpose: str, token: str, max_age: int | None = None, read: Any = None) -> Any:
        serializer = self._serializers[purpose]
        try:
            return serializer.loads(token, max_age=max_age)
        except SignatureExpired as exc:
            try:
                payload = serializer.loads(token)
            except BadSignature:
                raise TamperedLink() from exc
            raise ExpiredLink(read(payload) if read else payload) from exc
        except BadSignature as exc:
            raise TamperedLink() from exc

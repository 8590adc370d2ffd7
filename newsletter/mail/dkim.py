"""DKIM signatures (RFC 6376) for outgoing mail: RSA-SHA256, or Ed25519-SHA256 (RFC 8463).

dkimpy's canonicalisation decides which bytes are signed, so a signature here covers
exactly what dkimpy (and the receivers that agree with it) verify. The signing itself is done by
OpenSSL through `cryptography`: dkimpy signs RSA in pure Python, over ten times slower.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path

import idna
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import canonicalization
from dkim.canonicalization import CanonicalizationPolicy

log = logging.getLogger(__name__)

#: Header fields signed when present. RFC 8058 requires List-Unsubscribe and
#: List-Unsubscribe-Post to be covered, or mail clients will not offer one-click unsubscribe.
SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
)

_SIGNED = tuple(name.encode("ascii") for name in SIGNED_HEADERS)
# Stand-ins of the same length as the values, for the signature header's template.
_T_MARK = "9" * 10
_BH_MARK = "B" * 44
# Where one header field ends: a line break not followed by folding white space.
_FIELD_END = re.compile(rb"\r\n(?![ \t])")

MIN_RSA_BITS = 1024  # RFC 8301: signers MUST NOT use smaller keys
MAX_RSA_BITS = 4096  # the largest verifiers are required to accept (RFC 8301)

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# A selector or a domain: dot-separated DNS labels.
_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_SPACES = re.compile(rb"  +")
# Header lines are kept under the 78 characters RFC 5322 recommends.
_LINE = 78


class DKIMConfigError(ValueError):
    """The DKIM settings cannot sign mail."""


class SigningError(ValueError):
    """This message cannot be signed (no From header, or headers that do not parse)."""


class Signer:
    """Signs messages with one key for one selector and domain; the key is loaded once."""

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
        selector: str,
        domain: str,
    ) -> None:
        self.selector = _dns_name(selector, "selector")
        self.domain = _dns_name(domain, "domain")
        if isinstance(private_key, rsa.RSAPrivateKey):
            bits = private_key.key_size
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise DKIMConfigError(
                    f"the RSA key has {bits} bits; DKIM needs {MIN_RSA_BITS} to {MAX_RSA_BITS}"
                    " (use 2048)"
                )
            if bits < 2048:
                log.warning("DKIM key of %d bits: receivers may distrust it, use 2048", bits)
            self.algorithm = "rsa-sha256"
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
        else:
            raise DKIMConfigError(
                f"a {type(private_key).__name__} cannot sign DKIM; use RSA (2048 bits) or Ed25519"
            )
        self._key = private_key
        self._canonical_fields: dict[bytes, tuple[bytes, bytes]] = {}
        self._templates: dict[tuple[bytes, ...], str] = {}
        self._fixed_tags = (
            "v=1",
            f"a={self.algorithm}",
            "c=relaxed/relaxed",
            f"d={self.domain}",
            f"s={self.selector}",
        )

    @classmethod
    def from_pem(cls, pem: bytes, selector: str, domain: str) -> Signer:
        """A signer for an unencrypted PEM private key (PKCS#8 or PKCS#1), RSA or Ed25519."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise DKIMConfigError(f"not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise DKIMConfigError(
                f"a {_key_kind(key)} key cannot sign DKIM; use RSA (2048 bits) or Ed25519"
            )
        return cls(key, selector, domain)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Signer | None:
        """The signer DKIM_PRIVATE_KEY, DKIM_SELECTOR and DKIM_DOMAIN describe; None when unset."""
        names = ("DKIM_PRIVATE_KEY", "DKIM_SELECTOR", "DKIM_DOMAIN")
        values = {name: str(config.get(name) or "").strip() for name in names}
        missing = [f"NEWSLETTER_{name}" for name, value in values.items() if not value]
        if len(missing) == len(names):
            return None
        if missing:
            raise DKIMConfigError(
                "NEWSLETTER_DKIM_PRIVATE_KEY, NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_DOMAIN"
                f" go together; missing: {', '.join(missing)}"
            )
        path = Path(values["DKIM_PRIVATE_KEY"]).expanduser()
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise DKIMConfigError(
                f"NEWSLETTER_DKIM_PRIVATE_KEY: cannot read {path}: {exc.strerror or exc}"
            ) from exc
        try:
            return cls.from_pem(pem, values["DKIM_SELECTOR"], values["DKIM_DOMAIN"])
        except DKIMConfigError as exc:
            raise DKIMConfigError(f"DKIM key {path}: {exc}") from exc

    @staticmethod
    def body_hash(body: bytes) -> bytes:
        """The SHA-256 digest of a body after relaxed canonicalisation: the bh= value, raw."""
        return hashlib.sha256(relaxed_body(body)).digest()

    def sign(self, data: bytes) -> bytes:
        """The DKIM-Signature header (ending in CRLF) to put in front of `data`.

        `data` is the whole message as it will be sent, with CRLF line ends.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return self.sign_with_body_hash(data, self.body_hash(b""))
        return self.sign_with_body_hash(data[: end + 2], self.body_hash(data[end + 4 :]))

    def sign_with_body_hash(self, headers: bytes, body_hash: bytes) -> bytes:
        """Sign a header block with a body hash computed earlier (by `body_hash`).

        For a mail whose body is the same for every recipient (per-reader links only in the
        headers, List-Unsubscribe among them), hash the body once and sign each header block.
        `headers` may end with or without the blank line that ends it.

        Mails of one digest share most header fields: each field's canonical form (dkimpy's
        relaxed canonicalisation) is kept, and so is the signature header's text around t=
        and bh=, so only what differs per reader is worked out again.
        """
        canonical = [self._canonical(field) for field in _fields(headers)]
        counts: dict[bytes, int] = {}
        for name, _value in canonical:
            counts[name] = counts.get(name, 0) + 1
        if b"from" not in counts:
            raise SigningError("a message without a From header cannot be DKIM-signed")
        # Each field is listed once more than it occurs ("oversigning", RFC 6376 §8.15): a
        # second Subject or List-Unsubscribe added on the way then breaks the signature.
        signed: list[bytes] = []
        for name in _SIGNED:
            if name in counts:
                signed += [name] * (counts[name] + 1)
        tags = self._tags_for(tuple(signed), base64.b64encode(body_hash).decode("ascii"))
        digest = hashlib.sha256()
        # RFC 6376 §5.4.2: each name in h= takes the next occurrence from the bottom up;
        # a name listed more often than it occurs adds nothing.
        below: dict[bytes, int] = {}
        for name in signed:
            position = below.get(name, len(canonical))
            while position > 0:
                position -= 1
                if canonical[position][0] == name:
                    digest.update(name + b":" + canonical[position][1])
                    break
            below[name] = position
        [(sig_name, sig_value)] = _RELAXED.canonicalize_headers(
            [(b"DKIM-Signature", tags.encode("ascii"))]
        )
        # The signature header is hashed without its final CRLF, its b= empty.
        digest.update(sig_name + b":" + sig_value.rstrip())
        if isinstance(self._key, rsa.RSAPrivateKey):
            signature = self._key.sign(
                digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256())
            )
        else:
            # RFC 8463: Ed25519 signs the SHA-256 digest of the canonical headers.
            signature = self._key.sign(digest.digest())
        return b"DKIM-Signature:" + tags.encode("ascii") + _fold_b(signature) + b"\r\n"

    def _canonical(self, field: bytes) -> tuple[bytes, bytes]:
        """A header field's relaxed canonical (name, value), remembered for the next mail."""
        found = self._canonical_fields.get(field)
        if found is None:
            name, colon, value = field.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise SigningError(f"not a header field: {field[:60]!r}")
            [found] = _RELAXED.canonicalize_headers([(name, value)])
            if len(self._canonical_fields) > 10_000:
                self._canonical_fields.clear()  # per-reader fields would pile up
            self._canonical_fields[field] = found
        return found

    def _tags_for(self, signed: tuple[bytes, ...], body_hash: str) -> str:
        """The signature header up to b=, from a folded template per list of signed names.

        t= always has ten digits and bh= 44 characters, so the folding of one template fits
        every time and every body.
        """
        template = self._templates.get(signed)
        if template is None:
            template = self._tags([n.decode("ascii") for n in signed], _BH_MARK)
            self._templates[signed] = template
        return template.replace(f"t={_T_MARK};", f"t={int(time.time())};", 1).replace(
            f"bh={_BH_MARK};", f"bh={body_hash};", 1
        )

    def _tags(self, signed: list[str], body_hash: str) -> str:
        """The header's value up to an empty b=, folded: what the signature covers."""
        pieces = [(" ", f"{tag};") for tag in self._fixed_tags]
        pieces.append((" ", f"t={_T_MARK};"))
        # Folding white space may go around the colons of h=, so a long list folds there.
        for position, name in enumerate(signed):
            separator, prefix = (" ", "h=") if position == 0 else ("", "")
            end = ";" if position == len(signed) - 1 else ":"
            pieces.append((separator, f"{prefix}{name}{end}"))
        pieces.append((" ", f"bh={body_hash};"))
        out = []
        width = len("DKIM-Signature:")
        for separator, piece in pieces:
            if width + len(separator) + len(piece) > _LINE:
                out.append("\r\n ")
                width = 1
            else:
                out.append(separator)
                width += len(separator)
            out.append(piece)
            width += len(piece)
        # b= starts a line of its own, so the signature folds the same way whatever precedes it.
        out.append("\r\n b=")
        return "".join(out)


def aligned(address: str, signing_domain: str) -> bool:
    """Whether mail From this address, signed with d=signing_domain, passes DMARC's relaxed
    alignment: one domain is the other or a subdomain of it (a stricter test than sharing an
    organisational domain, which needs the public suffix list; it errs towards warning)."""
    domain = address.rpartition("@")[2].lower().rstrip(".")
    signing = signing_domain.lower().rstrip(".")
    return domain == signing or domain.endswith("." + signing) or signing.endswith("." + domain)


def _fields(headers: bytes) -> list[bytes]:
    """A header block's fields, each with its folded lines."""
    block = headers.rstrip(b"\r\n")
    if not block:
        raise SigningError("a message without headers cannot be DKIM-signed")
    return _FIELD_END.split(block)


def relaxed_body(body: bytes) -> bytes:
    """A body in relaxed canonical form (RFC 6376 §3.4.4), byte for byte as dkimpy makes it.

    dkimpy's character-class expressions take most of the signing time on a 20 KB body. Without
    tabs the same result comes from collapsing runs of spaces first (an expression with a literal
    prefix, which the regex engine searches fast), after which trailing white space is a single
    space before CRLF; with tabs, dkimpy's own code runs.
    """
    if b"\t" in body:
        return canonicalization.Relaxed.canonicalize_body(body)
    if b"  " in body:
        body = _SPACES.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    return canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body))


def _fold_b(signature: bytes) -> bytes:
    """The signature's base64, folded; a verifier drops the folding with the rest of b=."""
    text = base64.b64encode(signature)
    first = _LINE - len(" b=")
    parts = [text[:first]]
    parts.extend(text[i : i + _LINE - 1] for i in range(first, len(text), _LINE - 1))
    return b"\r\n ".join(parts)


def generate(selector: str, domain: str, algorithm: str = "rsa") -> tuple[bytes, str, str]:
    """A new key: (private key PEM, the DNS name to publish, the TXT record's value)."""
    selector, domain = _dns_name(selector, "selector"), _dns_name(domain, "domain")
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use rsa or ed25519")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    value = f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"
    return pem, f"{selector}._domainkey.{domain}", value


def txt_strings(value: str, size: int = 255) -> list[str]:
    """A TXT value cut into the character-strings DNS carries (at most 255 bytes each)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _dns_name(value: str, what: str) -> str:
    """A selector or domain in its ASCII form, or DKIMConfigError."""
    text = value.strip().rstrip(".")
    try:
        ascii_form = text if text.isascii() else idna.encode(text).decode("ascii")
    except idna.IDNAError as exc:
        raise DKIMConfigError(f"invalid DKIM {what} {value!r}: {exc}") from exc
    if not _NAME.fullmatch(ascii_form):
        raise DKIMConfigError(f"invalid DKIM {what} {value!r}: letters, digits, '-' and '.' only")
    return ascii_form.lower()


def _key_kind(key: object) -> str:
    """What a loaded key is, in the words an operator knows."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC ({key.curve.name})"
    if isinstance(key, dsa.DSAPrivateKey):
        return "DSA"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448"
    return type(key).__name__

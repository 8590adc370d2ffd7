"""Provider webhooks: signed payloads are read, anything tampered with or unsigned is refused."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from newsletter.bounces.parse import Kind
from newsletter.bounces.webhooks import (
    MAX_EVENTS,
    BadSignature,
    Event,
    Malformed,
    SnsVerifier,
    Unavailable,
    WebhookRefused,
    generic,
    is_sns_url,
    postmark,
    ses,
    sign,
)

UTC = datetime.UTC
NOW = datetime.datetime(2024, 12, 3, 6, 15, tzinfo=UTC)
CERT_URL = "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem"
TOPIC = "arn:aws:sns:eu-central-1:123456789012:newsletter-bounces"


@dataclass(frozen=True)
class Signer:
    """A test CA, and a signing certificate it issued, as SNS's would be."""

    key: rsa.RSAPrivateKey
    pem: bytes


def issue(
    subject: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    days: tuple[int, int] = (-30, 300),
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + datetime.timedelta(days=days[0]))
        .not_valid_after(NOW + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ca() -> tuple[rsa.RSAPrivateKey, x509.Name]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA for SNS")])
    return key, name


def make_signer(ca: tuple[rsa.RSAPrivateKey, x509.Name], **options: Any) -> Signer:
    ca_key, ca_name = ca
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = issue("sns.amazonaws.com", key, ca_name, ca_key, **options)
    return Signer(key, certificate.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def signer(ca: tuple[rsa.RSAPrivateKey, x509.Name]) -> Signer:
    return make_signer(ca)


@dataclass
class Fetcher:
    """Hands out certificates by URL, as the network would, and counts the requests."""

    certificates: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.requests.append(url)
        return self.certificates[url]


@pytest.fixture
def fetcher(signer: Signer) -> Fetcher:
    return Fetcher({CERT_URL: signer.pem})


@pytest.fixture
def verifier(fetcher: Fetcher) -> SnsVerifier:
    return SnsVerifier(fetcher, clock=lambda: NOW)


def string_to_sign(message: dict[str, str]) -> bytes:
    """As AWS documents it: the fields in byte order, each as its name and value on lines."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def signed(message: dict[str, str], signer: Signer, version: str = "1") -> dict[str, str]:
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = signer.key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    return {
        **message,
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
        "SigningCertURL": CERT_URL,
    }


def notification(ses_message: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "Type": "Notification",
        "MessageId": "f3b9e0a2-6c1d-5e4f-8a7b-2c3d4e5f6a7b",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses_message),
        "Timestamp": "2024-12-03T06:14:08.123Z",
        "UnsubscribeURL": "https://sns.eu-central-1.amazonaws.com/?Action=Unsubscribe",
        **extra,
    }


def body(message: dict[str, str]) -> bytes:
    return json.dumps(message).encode()


MAIL = {
    "timestamp": "2024-12-03T06:14:05.000Z",
    "source": "bounces+m4xq7k2p9d3a@news.example.org",
    "messageId": "0102019385f4c7a0-4c3e9a1b-7d2f-4e8a-9b6c-1a2b3c4d5e6f-000000",
    "destination": ["oksana.melnyk@example.net"],
    "headersTruncated": False,
    "headers": [
        {"name": "From", "value": "Daily News <news@news.example.org>"},
        {"name": "Message-ID", "value": "<5e1c9a7b3f20.42@news.example.org>"},
    ],
}


def bounce(bounce_type: str, *recipients: dict[str, str]) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": "0102019385f4d6c1-8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3-000000",
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": list(recipients),
            "timestamp": "2024-12-03T06:14:07.000Z",
            "reportingMTA": "dns; b224-13.smtp-out.eu-central-1.amazonses.com",
        },
        "mail": MAIL,
    }


GONE = {
    "emailAddress": "Oksana.Melnyk@Example.NET",
    "action": "failed",
    "status": "5.1.1",
    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
}
FULL = {
    "emailAddress": "taras@example.net",
    "action": "delayed",
    "status": "4.2.2",
    "diagnosticCode": "smtp; 452 4.2.2 Mailbox full",
}
COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "feedbackId": "0102019386a1b2c3-1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b-000000",
        "complaintSubType": None,
        "complainedRecipients": [{"emailAddress": "nadiya@example.net"}],
        "timestamp": "2024-12-03T09:41:04.000Z",
        "userAgent": "Yahoo!-Mail-Feedback/2.0",
        "complaintFeedbackType": "abuse",
    },
    "mail": MAIL,
}


@pytest.mark.parametrize("version", ["1", "2"], ids=["sha1", "sha256"])
def test_ses_permanent_bounce_is_hard(version: str, signer: Signer, verifier: SnsVerifier) -> None:
    result = ses(body(signed(notification(bounce("Permanent", GONE)), signer, version)), verifier)
    assert result.subscribe_url is None
    assert result.events == (
        Event(
            Kind.HARD,
            "Oksana.Melnyk@example.net",
            provider="ses",
            event_id="0102019385f4d6c1-8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3-000000:"
            "oksana.melnyk@example.net",
            status="5.1.1",
            diagnostic="550 5.1.1 user unknown",
            message_id="5e1c9a7b3f20.42@news.example.org",
            occurred_at=datetime.datetime(2024, 12, 3, 6, 14, 7, tzinfo=UTC),
        ),
    )


def test_ses_transient_bounce_and_complaint(signer: Signer, verifier: SnsVerifier) -> None:
    soft = ses(body(signed(notification(bounce("Transient", FULL, GONE)), signer)), verifier)
    assert [(e.kind, e.address, e.status) for e in soft.events] == [
        (Kind.SOFT, "taras@example.net", "4.2.2"),
        (Kind.SOFT, "Oksana.Melnyk@example.net", "5.1.1"),
    ]
    complaint = ses(body(signed(notification(COMPLAINT, Subject="Complaint"), signer)), verifier)
    (event,) = complaint.events
    assert (event.kind, event.address, event.message_id) == (
        Kind.COMPLAINT,
        "nadiya@example.net",
        "5e1c9a7b3f20.42@news.example.org",
    )
    assert event.diagnostic == "abuse Yahoo!-Mail-Feedback/2.0"


def test_ses_event_publishing_and_deliveries(signer: Signer, verifier: SnsVerifier) -> None:
    published = {**bounce("Permanent", GONE), "eventType": "Bounce"}
    del published["notificationType"]
    assert len(ses(body(signed(notification(published), signer)), verifier).events) == 1
    delivery = {"notificationType": "Delivery", "mail": MAIL, "delivery": {}}
    assert ses(body(signed(notification(delivery), signer)), verifier).events == ()


def test_replayed_notification_has_the_same_event_ids(
    signer: Signer, verifier: SnsVerifier
) -> None:
    data = body(signed(notification(bounce("Permanent", GONE)), signer))
    assert ses(data, verifier).events == ses(data, verifier).events


def test_certificate_is_fetched_once_per_url(
    signer: Signer, verifier: SnsVerifier, fetcher: Fetcher
) -> None:
    for _ in range(3):
        ses(body(signed(notification(bounce("Permanent", GONE)), signer)), verifier)
    assert fetcher.requests == [CERT_URL]


def tampered(message: dict[str, str], key: str, value: str) -> bytes:
    return body({**message, key: value})


@pytest.mark.parametrize(
    "change",
    [
        lambda m: tampered(m, "Message", m["Message"].replace("Permanent", "Transient")),
        lambda m: tampered(m, "TopicArn", TOPIC + "-other"),
        lambda m: tampered(m, "Timestamp", "2024-12-04T06:14:08.123Z"),
        lambda m: tampered(m, "Subject", "added after signing"),
        lambda m: tampered(m, "Signature", base64.b64encode(b"\x00" * 256).decode()),
        lambda m: tampered(m, "Signature", "not base64!"),
        lambda m: tampered(m, "SignatureVersion", "2"),
        lambda m: tampered(m, "SignatureVersion", "3"),
    ],
    ids=[
        "message",
        "topic",
        "timestamp",
        "subject",
        "signature",
        "signature-not-base64",
        "version-swapped",
        "version-unknown",
    ],
)
def test_tampered_sns_message_is_refused(
    change: Callable[[dict[str, str]], bytes], signer: Signer, verifier: SnsVerifier
) -> None:
    message = signed(notification(bounce("Permanent", GONE)), signer)
    with pytest.raises(BadSignature) as refused:
        ses(change(message), verifier)
    assert refused.value.status == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.eu-central-1.amazonaws.com/cert.pem",
        "https://sns.eu-central-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.eu-central-1.amazonaws.com/cert.pem",
        "https://sns.eu-central-1.amazonaws.com@evil.example/cert.pem",
        "https://user@sns.eu-central-1.amazonaws.com/cert.pem",
        "https://sns.eu-central-1.amazonaws.com:8443/cert.pem",
        "https://s3.eu-central-1.amazonaws.com/cert.pem",
        "https://sns.amazonaws.com/cert.pem",
        "https://sns.eu-central-1.amazonaws.com:bad/cert.pem",
    ],
    ids=[
        "http",
        "suffix",
        "path",
        "userinfo-trick",
        "userinfo",
        "port",
        "other-service",
        "no-region",
        "bad-port",
    ],
)
def test_certificate_off_the_sns_hosts_is_refused(
    url: str, signer: Signer, fetcher: Fetcher, verifier: SnsVerifier
) -> None:
    fetcher.certificates[url] = signer.pem
    message = {**notification(bounce("Permanent", GONE)), "SigningCertURL": url}
    message = {**signed(message, signer), "SigningCertURL": url}
    with pytest.raises(BadSignature, match="not on an SNS host"):
        ses(body(message), verifier)
    assert fetcher.requests == []
    assert not is_sns_url(url)


def test_sns_hosts_of_every_region() -> None:
    assert is_sns_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem")
    assert is_sns_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem")
    assert is_sns_url("https://SNS.EU-WEST-3.AMAZONAWS.COM:443/x.pem")


def test_certificate_from_another_key_or_out_of_date_is_refused(
    ca: tuple[rsa.RSAPrivateKey, x509.Name], signer: Signer
) -> None:
    message = body(signed(notification(bounce("Permanent", GONE)), signer))
    stranger = make_signer(ca)
    with pytest.raises(BadSignature, match="does not match"):
        ses(message, SnsVerifier(Fetcher({CERT_URL: stranger.pem}), clock=lambda: NOW))
    expired = make_signer(ca, days=(-400, -1))
    message = body(signed(notification(bounce("Permanent", GONE)), expired))
    with pytest.raises(BadSignature, match="not valid now"):
        ses(message, SnsVerifier(Fetcher({CERT_URL: expired.pem}), clock=lambda: NOW))
    with pytest.raises(BadSignature, match="cannot be read"):
        ses(message, SnsVerifier(Fetcher({CERT_URL: b"not a certificate"}), clock=lambda: NOW))


def test_certificate_with_an_ec_key_is_refused(ca: tuple[rsa.RSAPrivateKey, x509.Name]) -> None:
    ca_key, ca_name = ca
    key = ec.generate_private_key(ec.SECP256R1())
    pem = issue("sns.amazonaws.com", key, ca_name, ca_key).public_bytes(serialization.Encoding.PEM)
    message = notification(bounce("Permanent", GONE))
    message.update(SignatureVersion="2", Signature="AAAA", SigningCertURL=CERT_URL)
    with pytest.raises(BadSignature, match="RSA"):
        ses(body(message), SnsVerifier(Fetcher({CERT_URL: pem}), clock=lambda: NOW))


def test_certificate_that_cannot_be_fetched_asks_for_a_retry(signer: Signer) -> None:
    def unreachable(url: str) -> bytes:
        raise ConnectionRefusedError("connection refused")

    message = body(signed(notification(bounce("Permanent", GONE)), signer))
    with pytest.raises(Unavailable) as refused:
        ses(message, SnsVerifier(unreachable, clock=lambda: NOW))
    assert refused.value.status == 503


def test_topic_not_ours_is_refused(signer: Signer, fetcher: Fetcher) -> None:
    message = body(signed(notification(bounce("Permanent", GONE)), signer))
    ours = SnsVerifier(fetcher, topics=[TOPIC], clock=lambda: NOW)
    assert len(ses(message, ours).events) == 1
    other = SnsVerifier(fetcher, topics=[TOPIC + "-other"], clock=lambda: NOW)
    with pytest.raises(BadSignature, match="topic"):
        ses(message, other)


SUBSCRIBE = (
    "https://sns.eu-central-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=2336"
)


def confirmation(kind: str = "SubscriptionConfirmation", url: str = SUBSCRIBE) -> dict[str, str]:
    return {
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a74",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": url,
        "Timestamp": "2024-12-01T12:00:00.000Z",
    }


def test_subscription_confirmation_gives_the_url_to_visit(
    signer: Signer, verifier: SnsVerifier
) -> None:
    result = ses(body(signed(confirmation(), signer, "2")), verifier)
    assert (result.subscribe_url, result.events) == (SUBSCRIBE, ())
    unsubscribed = ses(body(signed(confirmation("UnsubscribeConfirmation"), signer)), verifier)
    assert (unsubscribed.subscribe_url, unsubscribed.events) == (None, ())


def test_subscription_confirmation_tampered_or_off_the_sns_hosts(
    signer: Signer, verifier: SnsVerifier
) -> None:
    message = signed(confirmation(), signer)
    with pytest.raises(BadSignature):
        ses(tampered(message, "SubscribeURL", "https://evil.example/confirm"), verifier)
    elsewhere = signed(confirmation(url="https://evil.example/?Action=ConfirmSubscription"), signer)
    with pytest.raises(BadSignature, match="not on an SNS host"):
        ses(body(elsewhere), verifier)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"Type": "Something"}',
        b'{"Type": "Notification"}',
        json.dumps({**notification({}), "Message": 7}).encode(),
    ],
    ids=["empty", "text", "bytes", "list", "type", "fields-missing", "message-not-text"],
)
def test_malformed_sns_body(data: bytes, verifier: SnsVerifier) -> None:
    with pytest.raises(Malformed) as refused:
        ses(data, verifier)
    assert refused.value.status == 400


def test_signed_but_unreadable_ses_message(signer: Signer, verifier: SnsVerifier) -> None:
    for ses_message in ({"notificationType": "Bounce"}, bounce("Permanent", {"emailAddress": 7})):
        with pytest.raises(Malformed):
            ses(body(signed(notification(ses_message), signer)), verifier)
    raw = signed({**notification({}), "Message": "plain text, not JSON"}, signer)
    with pytest.raises(Malformed, match="not JSON"):
        ses(body(raw), verifier)


def test_message_type_header_must_match(signer: Signer, verifier: SnsVerifier) -> None:
    data = body(signed(notification(bounce("Permanent", GONE)), signer))
    assert ses(data, verifier, message_type="Notification").events
    with pytest.raises(Malformed):
        ses(data, verifier, message_type="SubscriptionConfirmation")


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "s3cret-ä"
POSTMARK_AUTH = basic(POSTMARK_USER, POSTMARK_PASSWORD)


def postmark_record(**fields: object) -> bytes:
    record = {
        "RecordType": "Bounce",
        "ID": 4323372036,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "MessageStream": "broadcast",
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "Dmytro@Example.NET",
        "From": "news@news.example.org",
        "BouncedAt": "2024-12-03T06:18:11.2735393Z",
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Daily News: 3 December",
        **fields,
    }
    return json.dumps(record).encode()


def read_postmark(data: bytes, authorization: str | None = POSTMARK_AUTH) -> list[Event]:
    return postmark(
        data, authorization=authorization, username=POSTMARK_USER, password=POSTMARK_PASSWORD
    )


def test_postmark_hard_bounce() -> None:
    (event,) = read_postmark(postmark_record())
    assert event == Event(
        Kind.HARD,
        "Dmytro@example.net",
        provider="postmark",
        event_id="4323372036",
        status="5.1.1",
        diagnostic="smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        message_id="883953f4-6105-42a2-a16a-77a8eac79483",
        occurred_at=datetime.datetime(2024, 12, 3, 6, 18, 11, 273539, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"Type": "SoftBounce", "TypeCode": 4096}, Kind.SOFT),
        ({"Type": "Transient", "TypeCode": 2}, Kind.SOFT),
        ({"RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 512}, Kind.COMPLAINT),
        ({"Type": "AutoResponder", "TypeCode": 64}, None),
        ({"RecordType": "Delivery"}, None),
    ],
    ids=["soft", "transient", "complaint", "autoresponder", "delivery"],
)
def test_postmark_record_types(fields: dict[str, object], kind: Kind | None) -> None:
    events = read_postmark(postmark_record(**fields))
    assert [event.kind for event in events] == ([kind] if kind else [])


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        basic(POSTMARK_USER, "wrong"),
        basic("someone", POSTMARK_PASSWORD),
        "Bearer " + POSTMARK_PASSWORD,
        "Basic !!!",
        "Basic " + base64.b64encode(b"postmark:s3cret-\xe4").decode(),
    ],
    ids=["missing", "empty", "password", "user", "scheme", "not-base64", "latin-1"],
)
def test_postmark_without_the_credentials_is_refused(authorization: str | None) -> None:
    with pytest.raises(BadSignature) as refused:
        read_postmark(postmark_record(), authorization)
    assert refused.value.status == 403


def test_postmark_refuses_everyone_when_no_password_is_set() -> None:
    with pytest.raises(BadSignature, match="No credentials"):
        postmark(postmark_record(), authorization=basic("", ""), username="", password="")


@pytest.mark.parametrize(
    "data",
    [b"{", b"[]", postmark_record(Email="not an address"), postmark_record(ID=None)],
    ids=["json", "list", "email", "id"],
)
def test_postmark_malformed(data: bytes) -> None:
    with pytest.raises(Malformed):
        read_postmark(data)


SECRET = "generic-webhook-secret"


def generic_body(*events: dict[str, object]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


HARD_EVENT = {
    "type": "hard",
    "email": "oksana.melnyk@Example.NET",
    "status": "5.1.1",
    "diagnostic": "550 5.1.1 user unknown\r\nX-Injected: yes",
    "message_id": "<5e1c9a7b3f20.42@news.example.org>",
    "id": "evt-1001",
    "occurred_at": "2024-12-03T06:14:07Z",
}


def test_generic_form_signed_with_the_secret() -> None:
    data = generic_body(HARD_EVENT, {"type": "complaint", "email": "nadiya@example.net"})
    hard, complaint = generic(data, signature=sign(data, SECRET), secret=SECRET)
    assert hard == Event(
        Kind.HARD,
        "oksana.melnyk@example.net",
        provider="generic",
        event_id="evt-1001",
        status="5.1.1",
        diagnostic="550 5.1.1 user unknown X-Injected: yes",
        message_id="5e1c9a7b3f20.42@news.example.org",
        occurred_at=datetime.datetime(2024, 12, 3, 6, 14, 7, tzinfo=UTC),
    )
    assert (complaint.kind, complaint.address, complaint.status) == (
        Kind.COMPLAINT,
        "nadiya@example.net",
        None,
    )
    # Without an id, an event is named by its body: the same body sent again has the same ids.
    again = generic(data, signature=sign(data, SECRET), secret=SECRET)
    assert complaint.event_id == again[1].event_id != again[0].event_id


def test_generic_signature_in_capitals_is_accepted() -> None:
    data = generic_body(HARD_EVENT)
    digest = hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest().upper()
    assert len(generic(data, signature=f"SHA256={digest}", secret=SECRET)) == 1


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=",
        sign(generic_body(HARD_EVENT), "another-secret"),
        sign(generic_body(HARD_EVENT), SECRET).replace("sha256", "sha1"),
        sign(generic_body(HARD_EVENT, HARD_EVENT), SECRET),
        "sha256=ünïcödé",
    ],
    ids=["missing", "empty", "no-digest", "other-secret", "scheme", "other-body", "non-ascii"],
)
def test_generic_form_not_signed_with_the_secret_is_refused(signature: str | None) -> None:
    with pytest.raises(BadSignature) as refused:
        generic(generic_body(HARD_EVENT), signature=signature, secret=SECRET)
    assert refused.value.status == 403


def test_generic_form_refuses_everyone_when_no_secret_is_set() -> None:
    data = generic_body(HARD_EVENT)
    with pytest.raises(BadSignature, match="No secret"):
        generic(data, signature=sign(data, ""), secret="")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not json", "not JSON"),
        (b'{"events": {}}', '"events" list'),
        (generic_body("hard"), r"events\[0\] is not an object"),  # type: ignore[arg-type]
        (generic_body({**HARD_EVENT, "type": "delivered"}), "type must be hard, soft or complaint"),
        (generic_body({**HARD_EVENT, "email": "nobody"}), "email is not an email address"),
        (generic_body({**HARD_EVENT, "status": "550"}), "enhanced status code"),
        (generic_body({**HARD_EVENT, "id": 7}), "id must be a string"),
        (generic_body({**HARD_EVENT, "occurred_at": "yesterday"}), "ISO 8601"),
        (generic_body(*[HARD_EVENT] * (MAX_EVENTS + 1)), "At most"),
    ],
    ids=["json", "events", "item", "type", "email", "status", "id", "time", "too-many"],
)
def test_generic_form_malformed(payload: bytes, words: str) -> None:
    with pytest.raises(Malformed, match=words) as refused:
        generic(payload, signature=sign(payload, SECRET), secret=SECRET)
    assert refused.value.status == 400
    assert isinstance(refused.value, WebhookRefused)

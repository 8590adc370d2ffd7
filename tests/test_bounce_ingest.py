"""Returned mail and complaints coming in: matched to our mail, recorded, and acted on."""

from __future__ import annotations

import base64
import datetime
import json
import mailbox
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from flask import current_app
from sqlalchemy import func, select

from newsletter import suppression
from newsletter.bounces import ingest, webhooks
from newsletter.bounces.parse import parse
from newsletter.cli import cli
from newsletter.digests import states
from newsletter.links import DELIVERY, Links, Reader
from newsletter.mail import outbox
from newsletter.mail.transport import MemoryTransport
from newsletter.models import (
    BounceEvent,
    ConsentEvent,
    Delivery,
    Digest,
    MailKind,
    OutboxMessage,
    OutboxStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from newsletter.web import hooks

from dovecot_server import append, unseen
from factories import Mailbox, add_item, add_reader, app_links, links, send_all, text_part

CORPUS = Path(__file__).parent / "data" / "bounces"
BOUNCES = "bounces@news.example.org"
UNSUBSCRIBE = "unsubscribe@news.example.org"
SECRET = "a-shared-secret-for-the-webhooks"
_VERP = re.compile(rb"bounces\+[A-Za-z0-9.=_-]+@news\.example\.org")


@pytest.fixture
def app_config() -> dict[str, object]:
    return {
        "BOUNCE_ADDRESS": BOUNCES,
        "UNSUBSCRIBE_MAILTO": UNSUBSCRIBE,
        "BOUNCE_WEBHOOK_SECRET": SECRET,
    }


@pytest.fixture
def sent(db, daily):  # type: ignore[no-untyped-def]
    """A digest of the daily list, sent to two readers: (the reader's row, their delivery)."""
    add_item(db, daily, "Story")
    reader = add_reader(db, daily, "reader@example.com")
    add_reader(db, daily, "other@example.com")
    states.start(db.session, states.compose(db.session, daily))
    send_all(db, MemoryTransport())
    delivery = db.session.scalar(
        select(Delivery).join(Subscription).where(Subscription.subscriber_id == reader.id)
    )
    return reader, delivery


def returned(
    name: str,
    *,
    envelope: str | None = None,
    address: str | None = None,
    message_id: str | None = None,
    extra: bytes = b"",
) -> bytes:
    """A sample of the corpus as it would come back for our own mail."""
    data = (CORPUS / name).read_bytes()
    report = parse(data, bounce_address=BOUNCES, unsubscribe_address=UNSUBSCRIBE)
    if envelope is not None:
        data = _VERP.sub(envelope.encode(), data)
    if address is not None and report.recipients:
        data = re.sub(re.escape(report.recipients[0]).encode(), address.encode(), data, flags=re.I)
    if message_id is not None and report.message_id:
        data = data.replace(report.message_id.encode(), message_id.encode())
    return extra + data


def verp(delivery: Delivery) -> str:
    address = app_links().envelope_sender(DELIVERY, delivery.id)
    assert address is not None
    return address


def ingest_mail(db, data: bytes) -> str:  # type: ignore[no-untyped-def]
    links = app_links()
    return ingest.ingest_mail(db.session, data, links, ingest.Rules(), "pipe")


def status_of(db, reader) -> set[str]:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return {s.status for s in db.session.scalars(select(Subscription).filter_by(subscriber=reader))}


@pytest.mark.parametrize(
    ("sample", "kind", "reason"),
    [
        ("postfix-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("exim-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("gmail-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("yahoo-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("exchange-online-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("outlook-quota-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("qmail-hard.eml", "hard", SuppressionReason.BOUNCED),
        ("postfix-soft-delayed.eml", "soft", None),
        ("arf-yahoo-complaint.eml", "complaint", SuppressionReason.COMPLAINED),
        ("arf-microsoft-jmrp.eml", "complaint", SuppressionReason.COMPLAINED),
    ],
)
def test_returned_mail_is_matched_by_its_tag_recorded_and_acted_on(
    db, daily, sent, sample, kind, reason
):
    reader, delivery = sent
    data = returned(sample, envelope=verp(delivery), address="reader@example.com")

    assert ingest_mail(db, data) == kind

    [event] = db.session.scalars(select(BounceEvent)).all()
    assert (event.kind, event.delivery_id, event.digest_id) == (
        kind,
        delivery.id,
        delivery.digest_id,
    )
    assert (event.newsletter_id, event.subscriber_id, event.source) == (daily.id, reader.id, "pipe")
    assert suppression.reason(db.session, "reader@example.com") == reason
    expected = {
        None: SubscriptionStatus.CONFIRMED,
        SuppressionReason.BOUNCED: SubscriptionStatus.BOUNCED,
        SuppressionReason.COMPLAINED: SubscriptionStatus.COMPLAINED,
    }[reason]
    assert status_of(db, reader) == {expected}
    trail = db.session.scalars(
        select(ConsentEvent.action).where(ConsentEvent.source == "bounce:pipe")
    )
    assert list(trail) == [{"hard": "hard_bounce", "soft": "soft_bounce"}.get(kind, "complained")]
    # The other reader of the digest is untouched.
    assert not suppression.is_suppressed(db.session, "other@example.com")


@pytest.mark.parametrize(
    ("sample", "outcome"),
    [("autoreply-out-of-office.eml", "autoreply"), ("reader-reply.eml", "other")],
)
def test_auto_replies_and_readers_answers_are_left_alone(db, sent, sample, outcome):
    reader, delivery = sent
    assert ingest_mail(db, returned(sample, envelope=verp(delivery))) == outcome
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0
    assert status_of(db, reader) == {SubscriptionStatus.CONFIRMED}


def without_verp(db, data: bytes) -> str:  # type: ignore[no-untyped-def]
    """Ingest as a service without BOUNCE_ADDRESS does: returned mail carries no tag."""
    links = Links.from_config(dict(current_app.config, BOUNCE_ADDRESS=None))
    return ingest.ingest_mail(db.session, data, links, ingest.Rules(), "pipe")


def test_without_a_tag_the_original_message_id_names_the_delivery(db, sent):
    reader, delivery = sent
    digest = db.session.get(Digest, delivery.digest_id)
    ours = f"{digest.message_key}.{delivery.id}@news.example.org"
    data = returned(
        "postfix-hard.eml", envelope=BOUNCES, address="someone@else.example", message_id=ours
    )
    assert without_verp(db, data) == "hard"
    assert db.session.scalar(select(BounceEvent.delivery_id)) == delivery.id
    assert suppression.unmailable(db.session, "reader@example.com")


def test_without_a_tag_or_our_message_id_the_recipient_of_our_list_is_taken(db, daily, sent):
    reader, _ = sent
    data = returned(
        "postfix-hard.eml",
        envelope=BOUNCES,
        address="Reader@Example.com",
        message_id="not-ours@elsewhere.example",
    )
    assert without_verp(db, data) == "hard"
    event = db.session.scalars(select(BounceEvent)).one()
    assert (event.subscriber_id, event.newsletter_id, event.delivery_id) == (
        reader.id,
        daily.id,
        None,
    )
    assert suppression.unmailable(db.session, "reader@example.com")


@pytest.mark.parametrize("sample", ["postfix-hard.eml", "arf-yahoo-complaint.eml"])
def test_with_verp_on_returned_mail_without_our_tag_is_kept_and_changes_nothing(db, sent, sample):
    """Anyone can write a bounce naming a reader, or a digest's Message-ID, to the address."""
    reader, delivery = sent
    digest = db.session.get(Digest, delivery.digest_id)
    ours = f"{digest.message_key}.{delivery.id}@news.example.org"
    for n, message_id in enumerate((ours, "not-ours@elsewhere.example")):
        data = returned(
            sample,
            envelope=BOUNCES,
            address="reader@example.com",
            message_id=message_id,
            extra=b"X-N: %d\n" % n,
        )
        assert ingest_mail(db, data) in ("hard", "complaint")

    events = db.session.scalars(select(BounceEvent)).all()
    assert len(events) == 2 and not any(e.suppressed for e in events)
    assert not suppression.is_suppressed(db.session, "reader@example.com")
    assert status_of(db, reader) == {SubscriptionStatus.CONFIRMED}
    bounce_trail = select(func.count()).where(ConsentEvent.source == "bounce:pipe")
    assert db.session.scalar(bounce_trail) == 0


def test_a_bounce_about_nobody_of_ours_changes_nothing(db, sent):
    data = returned(
        "postfix-hard.eml",
        envelope=BOUNCES,
        address="stranger@example.net",
        message_id="not-ours@elsewhere.example",
    )
    assert ingest_mail(db, data) == "unmatched"
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0


def test_a_forged_tag_does_not_name_a_delivery(db, sent):
    reader, delivery = sent
    forged = verp(delivery).replace(f"d{delivery.id}-", f"d{delivery.id + 1}-")
    data = returned(
        "postfix-hard.eml",
        envelope=forged,
        address="stranger@example.net",
        message_id="not-ours@elsewhere.example",
    )
    assert ingest_mail(db, data) == "unmatched"
    assert not suppression.is_suppressed(db.session, "reader@example.com")


def test_the_same_returned_mail_twice_is_one_event(db, sent):
    _, delivery = sent
    data = returned("postfix-soft-delayed.eml", envelope=verp(delivery))
    assert ingest_mail(db, data) == "soft"
    assert ingest_mail(db, data) == "replay"
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 1


def soft_again(db, delivery: Delivery, n: int) -> str:  # type: ignore[no-untyped-def]
    """Another soft bounce of the same delivery (another report: other bytes)."""
    data = returned("postfix-soft-delayed.eml", envelope=verp(delivery), extra=b"X-N: %d\n" % n)
    return ingest_mail(db, data)


def test_soft_bounces_suppress_once_they_add_up(db, sent):
    reader, delivery = sent
    assert [soft_again(db, delivery, n) for n in range(3)] == ["soft", "soft", "soft"]
    assert suppression.reason(db.session, "reader@example.com") == SuppressionReason.BOUNCED
    assert status_of(db, reader) == {SubscriptionStatus.BOUNCED}
    assert db.session.scalars(select(BounceEvent.suppressed)).all() == [False, False, True]


def test_a_good_delivery_between_soft_bounces_starts_the_count_again(db, daily, sent):
    reader, first = sent
    soft_again(db, first, 1)
    soft_again(db, first, 2)
    # Two later digests: the first reached the reader (nothing came back), the second bounced.
    later = []
    for title in ("Next story", "Another story"):
        add_item(db, daily, title)
        states.start(db.session, states.compose(db.session, daily))
        send_all(db, MemoryTransport())
        later.append(
            db.session.scalars(
                select(Delivery)
                .join(Subscription)
                .where(Subscription.subscriber_id == reader.id)
                .order_by(Delivery.id.desc())
            ).first()
        )
    assert soft_again(db, later[1], 3) == "soft"
    assert not suppression.is_suppressed(db.session, "reader@example.com")
    # Without that good one, the third soft bounce would have suppressed the address.
    assert soft_again(db, later[0], 4) == "soft"
    assert suppression.unmailable(db.session, "reader@example.com")


def test_mail_to_the_unsubscribe_address_takes_the_reader_off_that_list(db, daily, sent):
    reader, _ = sent
    mailto = app_links().unsubscribe_address(Reader(reader.id, reader.token_key), daily.id)
    data = (CORPUS / "unsubscribe-mailto.eml").read_bytes()
    data = re.sub(rb"unsubscribe\+[a-z0-9]+@news\.example\.org", mailto.encode(), data)
    assert ingest_mail(db, data) == "unsubscribe"
    assert status_of(db, reader) == {SubscriptionStatus.UNSUBSCRIBED}
    trail = db.session.scalars(select(ConsentEvent.source).order_by(ConsentEvent.id.desc()))
    assert trail.first() == "mailto"
    # Anyone else's tag, or a made-up one, unsubscribes nobody.
    forged = re.sub(rb"unsubscribe\+[a-z0-9-]+@", b"unsubscribe+u1x1-aaaaaaaaaaaaaaaa@", data)
    assert ingest_mail(db, forged) == "unmatched"


def test_the_command_reads_a_maildir_once(app, db, sent, tmp_path):
    _, delivery = sent
    folder = mailbox.Maildir(tmp_path / "Maildir", create=True)
    folder.add(returned("postfix-hard.eml", envelope=verp(delivery)))
    folder.add(returned("reader-reply.eml", envelope=verp(delivery)))
    runner = app.test_cli_runner()

    first = runner.invoke(cli, ["bounces", "ingest", str(tmp_path / "Maildir")])
    assert first.exit_code == 0, first.output
    assert "1 hard" in first.output and "1 other" in first.output
    again = runner.invoke(cli, ["bounces", "ingest", str(tmp_path / "Maildir")])
    assert again.exit_code == 0 and "none" in again.output
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 1


def test_the_command_reads_one_message_from_standard_input(app, db, sent):
    _, delivery = sent
    runner = app.test_cli_runner()
    result = runner.invoke(
        cli,
        ["bounces", "ingest", "-"],
        input=returned("gmail-hard.eml", envelope=verp(delivery)),
    )
    assert result.exit_code == 0, result.output
    assert suppression.unmailable(db.session, "reader@example.com")


def test_the_command_lifts_a_suppression_saying_why(app, db, sent):
    suppression.suppress(db.session, "reader@example.com", SuppressionReason.BOUNCED)
    db.session.commit()
    runner = app.test_cli_runner()
    refused = runner.invoke(cli, ["bounces", "lift", "reader@example.com", "--why", " "])
    assert refused.exit_code == 1 and "Say why" in refused.output
    lifted = runner.invoke(cli, ["bounces", "lift", "reader@example.com", "--why", "It works"])
    assert lifted.exit_code == 0, lifted.output
    assert not suppression.is_suppressed(db.session, "reader@example.com")


def test_the_worker_reads_returned_mail_from_imap(app, db, sent, dovecot, folder):
    from newsletter.worker import build

    _, delivery = sent
    append(dovecot, folder, returned("postfix-hard.eml", envelope=verp(delivery)))
    append(dovecot, folder, returned("autoreply-out-of-office.eml", envelope=verp(delivery)))
    app.config["BOUNCE_IMAP_URL"] = dovecot.url(folder)

    handled = build(app.config, lambda: db.session, mail=MemoryTransport()).run(drain=True)

    assert handled["returned mail"] == 2
    assert unseen(dovecot, folder) == 0
    assert suppression.unmailable(db.session, "reader@example.com")


# --- provider webhooks ------------------------------------------------------------------------


def post_generic(client, payload: object, secret: str = SECRET):  # type: ignore[no-untyped-def]
    body = json.dumps(payload).encode()
    return client.post(
        "/hooks/bounces/generic",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Newsletter-Signature": webhooks.sign(body, secret),
        },
    )


def test_the_signed_json_webhook_records_events_once(client, db, sent):
    payload = {"events": [{"type": "complaint", "email": "Reader@example.com", "id": "e-1"}]}
    answer = post_generic(client, payload)
    assert answer.status_code == 200 and answer.json["events"] == {"complaint": 1}
    assert suppression.reason(db.session, "reader@example.com") == SuppressionReason.COMPLAINED
    again = post_generic(client, payload)
    assert again.status_code == 200 and again.json["events"] == {"replay": 1}
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 1


def test_a_webhook_with_a_bad_signature_is_refused_and_stores_nothing(client, db, sent):
    payload = {"events": [{"type": "hard", "email": "reader@example.com", "id": "e-2"}]}
    answer = post_generic(client, payload, secret="not-the-secret")
    assert answer.status_code == 403
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0
    assert not suppression.is_suppressed(db.session, "reader@example.com")


def test_a_webhook_that_is_not_configured_is_not_there(app, client, sent):
    app.config["BOUNCE_WEBHOOK_SECRET"] = None
    assert client.post("/hooks/bounces/generic", data=b"{}").status_code == 404
    assert client.post("/hooks/bounces/ses", data=b"{}").status_code == 404
    assert client.post("/hooks/bounces/nobody", data=b"{}").status_code == 404


def test_postmark_needs_its_credentials(client, db, sent):
    record = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "ID": 42,
        "Email": "reader@example.com",
        "Details": "smtp;550 5.1.1 The email account does not exist",
    }
    body = json.dumps(record).encode()
    wrong = base64.b64encode(b"newsletter:guess").decode()
    refused = client.post(
        "/hooks/bounces/postmark", data=body, headers={"Authorization": f"Basic {wrong}"}
    )
    assert refused.status_code == 403
    right = base64.b64encode(f"newsletter:{SECRET}".encode()).decode()
    taken = client.post(
        "/hooks/bounces/postmark", data=body, headers={"Authorization": f"Basic {right}"}
    )
    assert taken.status_code == 200 and taken.json["events"] == {"hard": 1}
    assert suppression.unmailable(db.session, "reader@example.com")


TOPIC = "arn:aws:sns:eu-central-1:123456789012:newsletter-bounces"
CERT_URL = "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-test.pem"


@pytest.fixture
def sns(app, monkeypatch):  # type: ignore[no-untyped-def]
    """SES through SNS, signed with a key of the test's own whose certificate SNS would serve."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    app.config["SES_TOPIC_ARNS"] = [TOPIC]
    verifier = webhooks.SnsVerifier(lambda url: pem, topics=[TOPIC])
    monkeypatch.setattr(hooks, "_verifier", lambda topics: verifier)

    def sign(message: dict[str, str]) -> bytes:
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        if message["Type"] != "Notification":
            names = [
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        text = "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()
        signature = key.sign(text, padding.PKCS1v15(), hashes.SHA256())
        signed = {
            **message,
            "SignatureVersion": "2",
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": CERT_URL,
        }
        return json.dumps(signed).encode()

    return sign


def ses_bounce(address: str) -> dict[str, str]:
    ses = {
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": "feedback-1",
            "bounceType": "Permanent",
            "bouncedRecipients": [{"emailAddress": address, "status": "5.1.1"}],
            "timestamp": "2026-12-05T06:14:07.000Z",
        },
        "mail": {"messageId": "ses-1", "destination": [address]},
    }
    return {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": "2026-12-05T06:14:08.000Z",
    }


def test_ses_through_sns_records_a_signed_bounce(client, db, sent, sns):
    body = sns(ses_bounce("reader@example.com"))
    answer = client.post(
        "/hooks/bounces/ses", data=body, headers={"x-amz-sns-message-type": "Notification"}
    )
    assert answer.status_code == 200, answer.json
    assert suppression.unmailable(db.session, "reader@example.com")


def test_ses_with_a_tampered_message_is_refused(client, db, sent, sns):
    body = sns(ses_bounce("reader@example.com")).replace(b"reader@", b"other@")
    answer = client.post("/hooks/bounces/ses", data=body)
    assert answer.status_code == 403
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0
    assert not suppression.is_suppressed(db.session, "other@example.com")


def test_the_pipe_says_try_again_later_when_the_database_is_away(sent, tmp_path):
    import os
    import subprocess
    import sys

    _, delivery = sent
    data = returned("gmail-hard.eml", envelope=verp(delivery))
    # As the mail server's pipe runs it, with a database that cannot be opened.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_SECRET_KEY": "test-secret-key",
        "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path}/nowhere/newsletter.db",
        "NEWSLETTER_BOUNCE_ADDRESS": BOUNCES,
    }
    command = [str(Path(sys.executable).with_name("newsletter")), "bounces", "ingest", "-"]
    result = subprocess.run(command, input=data, env=env, capture_output=True, timeout=60)
    assert result.returncode == 75, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert b"cannot record returned mail now" in result.stderr


def written_to_unsubscribe(sender: str, subject: bytes) -> bytes:
    """A mail a person wrote to the plain unsubscribe address, with no tag."""
    data = (CORPUS / "unsubscribe-mailto.eml").read_bytes()
    data = re.sub(rb"unsubscribe\+[a-z0-9]+@", b"unsubscribe@", data)
    data = data.replace(b"Subject: unsubscribe", b"Subject: " + subject)
    return re.sub(rb"lesia\.ukrainka@example\.net", sender.encode(), data, flags=re.I)


def test_a_mail_written_to_the_unsubscribe_address_gets_the_reader_the_leave_link(
    client, db, daily, sent
):
    """Its From could be anyone's: the link goes to the address we have, once a day."""
    reader, _ = sent
    data = written_to_unsubscribe("reader@example.com", b"unsubscribe daily")

    assert ingest_mail(db, data) == "leave-link"
    assert ingest_mail(db, data + b"\nAgain.\n") == "unchanged"
    assert ingest_mail(db, written_to_unsubscribe("reader@example.com", b"stop")) == "unmatched"

    assert status_of(db, reader) == {SubscriptionStatus.CONFIRMED}
    (mail,) = Mailbox().deliver()
    assert mail["To"] == "reader@example.com"
    assert mail["Subject"] == "Your link to leave Daily Briefing"
    assert "If you did not ask, ignore this mail" in text_part(mail)
    (link,) = links(mail, "/unsubscribe/")
    assert client.post(link).status_code == 200
    assert status_of(db, reader) == {SubscriptionStatus.UNSUBSCRIBED}


def test_sns_asks_to_confirm_the_subscription_and_we_do(client, db, sent, sns, monkeypatch):
    visited: list[str] = []
    monkeypatch.setattr(hooks, "_confirm_subscription", visited.append)
    url = "https://sns.eu-central-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc"
    body = sns(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "sns-2",
            "Token": "abc",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe.",
            "SubscribeURL": url,
            "Timestamp": "2026-12-05T06:14:08.000Z",
        }
    )
    answer = client.post(
        "/hooks/bounces/ses",
        data=body,
        headers={"x-amz-sns-message-type": "SubscriptionConfirmation"},
    )
    assert answer.status_code == 200 and visited == [url]
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0


def test_the_editor_sees_what_came_back_on_the_digest_and_the_dashboard(client, db, daily, sent):
    from factories import make_admin, sign_in

    _, delivery = sent
    ingest_mail(db, returned("postfix-hard.eml", envelope=verp(delivery)))
    make_admin()
    sign_in(client)
    page = client.get(f"/admin/digests/{delivery.digest_id}").get_data(as_text=True)
    assert "What came back" in page
    assert "Hard bounces</dt><dd>1" in page
    # One of two mails bounced: far above the 2 % line.
    assert "50.00 %" in page and "clean the list" in page
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "Delivery, last 30 days" in dashboard and "too high" in dashboard


def test_the_bounce_rate_counts_each_digest_mail_that_came_back_once(db, daily, sent):
    from newsletter.bounces import figures
    from newsletter.models import utcnow

    reader, delivery = sent
    mail = ingest.Target("reader@example.com", reader.id, daily.id, delivery.digest_id, delivery.id)
    welcome = ingest.Target("other@example.com", None, daily.id)  # not a digest mail
    for n, (target, kind) in enumerate(
        [(mail, "soft"), (mail, "soft"), (mail, "hard"), (welcome, "hard")]
    ):
        ingest.record(
            db.session, ingest.Returned(target, kind, "test", event_id=str(n)), ingest.Rules()
        )
    db.session.commit()

    [daily_figures] = figures.last_days(db.session, utcnow()).values()
    assert (daily_figures.sent, daily_figures.hard, daily_figures.soft) == (2, 2, 2)
    assert daily_figures.bounced == 1 and daily_figures.bounce_rate == 0.5


def test_erasing_a_reader_keeps_their_bounces_counted_without_the_servers_words(db, sent):
    from newsletter import subscribers

    reader, delivery = sent
    data = returned("postfix-hard.eml", envelope=verp(delivery), address="reader@example.com")
    ingest_mail(db, data)
    assert "reader@example.com" in db.session.scalar(select(BounceEvent.diagnostic))

    subscribers.erase(db.session, reader, None)

    db.session.expire_all()
    event = db.session.scalars(select(BounceEvent)).one()
    assert (event.kind, event.diagnostic, event.subscriber_id) == ("hard", None, None)
    assert suppression.reason(db.session, "reader@example.com") == SuppressionReason.BOUNCED


def _postmark(client, **record: object):  # type: ignore[no-untyped-def]
    record = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "ID": 42,
        "Email": "reader@example.com",
        "Details": "smtp;550 5.1.1 The email account does not exist",
        **record,
    }
    right = base64.b64encode(f"newsletter:{SECRET}".encode()).decode()
    return client.post(
        "/hooks/bounces/postmark",
        data=json.dumps(record).encode(),
        headers={"Authorization": f"Basic {right}"},
    )


@pytest.mark.parametrize(
    "record_id", ["a\x00b", "x" * 5000, "\r\n42", 10**300], ids=["nul", "long", "break", "huge"]
)
def test_a_postmark_record_id_of_any_kind_is_kept_and_known_again(client, db, sent, record_id):
    answer = _postmark(client, ID=record_id)
    assert answer.status_code == 200 and answer.json["events"] == {"hard": 1}
    assert suppression.unmailable(db.session, "reader@example.com")
    (event_id,) = db.session.scalars(select(BounceEvent.event_id)).all()
    assert len(event_id) <= 200 and event_id.isprintable()
    # The same record again is the same event.
    assert _postmark(client, ID=record_id).json["events"] == {"replay": 1}


def test_a_generic_event_id_as_long_as_the_form_allows_is_kept(client, db, sent):
    data = json.dumps(
        {"events": [{"type": "hard", "email": "reader@example.com", "id": "e" * 200}]}
    ).encode()
    answer = client.post(
        "/hooks/bounces/generic",
        data=data,
        headers={"X-Newsletter-Signature": webhooks.sign(data, SECRET)},
    )
    assert answer.status_code == 200 and answer.json["events"] == {"hard": 1}


def test_an_address_longer_than_mail_allows_is_refused(client, db, sent):
    answer = _postmark(client, Email="reader@" + "d" * 250 + ".example")
    assert answer.status_code == 400
    assert db.session.scalar(select(func.count(BounceEvent.id))) == 0
    assert db.session.scalar(select(func.count(Suppression.id))) == 0


def test_an_outbox_mail_is_found_by_its_message_id_through_the_index(db):
    """The index holds sent mail only, so an import's queued confirmations do not write it;
    the lookup names that condition so the index serves it."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL plans tiny test tables with sequential scans")
    statements: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "outbox_message" in statement and "message_key" in statement:
            statements.append((statement, parameters))

    from sqlalchemy import event

    event.listen(db.engine, "before_cursor_execute", keep)
    try:
        assert ingest._of_message_id(db.session, "<nobody-sent-this@news.example.org>") is None
    finally:
        event.remove(db.engine, "before_cursor_execute", keep)
    (statement, parameters), *_ = statements
    plan = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
    steps = " ".join(str(row[-1]) for row in plan)
    assert "ix_outbox_message_key" in steps, steps


def test_a_returned_outbox_mail_is_found_by_its_message_id_once_sent(db, daily):
    reader = add_reader(db, daily, "reader@example.com")
    subscription = reader.subscriptions[0]
    outbox.enqueue(
        db.session, MailKind.WELCOME, reader.id, reader.email, {"subscriptions": [subscription.id]}
    )
    row = db.session.scalars(select(OutboxMessage)).one()
    returned = f"<{row.message_key}@news.example.org>"
    # Still queued: nothing of ours went out under that Message-ID.
    assert ingest._of_message_id(db.session, returned) is None
    row.status = OutboxStatus.SENT
    db.session.commit()
    found = ingest._of_message_id(db.session, returned)
    assert found is not None and found.outbox_message_id == row.id

"""Returned mail is classified the way a mail administrator would read it."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from newsletter.bounces.parse import DIAGNOSTIC_LENGTH, Kind, Report, parse

CORPUS = Path(__file__).parent / "data" / "bounces"
BOUNCES = "bounces@news.example.org"
UNSUBSCRIBE = "unsubscribe@news.example.org"
DAILY = "daily.news.example.org"


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def classify(data: bytes, **addresses: str | None) -> Report:
    options = {"bounce_address": BOUNCES, "unsubscribe_address": UNSUBSCRIBE, **addresses}
    return parse(data, **options)


# file, kind, recipients, status, original Message-ID, List-Id, VERP tag
SAMPLES = [
    (
        "postfix-hard.eml",
        Kind.HARD,
        ("oksana.melnyk@example.net",),
        "5.1.1",
        "5e1c9a7b3f20.42@news.example.org",
        DAILY,
        "m4xq7k2p9d3a",
    ),
    (
        "postfix-soft-delayed.eml",
        Kind.SOFT,
        ("Taras.Bondar@mail.example.org",),
        "4.2.2",
        "5e1c9a7b3f20.1187@news.example.org",
        DAILY,
        "c8v2n5r7t1wb",
    ),
    (
        "exim-hard.eml",
        Kind.HARD,
        ("mykola.koval@example.net",),
        "5.1.1",
        "5e1c9a7b3f20.77@news.example.org",
        DAILY,
        "h3j6k9m2q5sz",
    ),
    (
        "exchange-online-hard.eml",
        Kind.HARD,
        ("iryna.savchenko@contoso.example.net",),
        "5.5.0",
        "5e1c9a7b3f20.305@news.example.org",
        DAILY,
        "p7r2t5w8y3bc",
    ),
    (
        "outlook-quota-hard.eml",
        Kind.HARD,
        ("halyna@outlook.example.net",),
        "5.2.2",
        "9b7d5f3a1c08.2024@news.example.org",
        "ukraine-weekly.news.example.org",
        "e2g5j8l3n6qd",
    ),
    (
        "gmail-hard.eml",
        Kind.HARD,
        ("dmytro.lysenko@example.net",),
        "5.1.1",
        "5e1c9a7b3f20.512@news.example.org",
        DAILY,
        "a9c4e7g2i5kf",
    ),
    (
        "yahoo-hard.eml",
        Kind.HARD,
        ("vasyl.petrenko@yahoo.example.net",),
        None,
        "5e1c9a7b3f20.640@news.example.org",
        DAILY,
        "u6w9y4a7c2eg",
    ),
    (
        "qmail-hard.eml",
        Kind.HARD,
        ("sofia.hnatiuk@example.net",),
        "5.1.1",
        "5e1c9a7b3f20.733@news.example.org",
        DAILY,
        "r3t8v1x6z9bh",
    ),
    (
        "arf-yahoo-complaint.eml",
        Kind.COMPLAINT,
        ("Nadiya.Rudenko@yahoo.example.net",),
        None,
        "5e1c9a7b3f20.901@news.example.org",
        DAILY,
        "k5m8p3s6v9xj",
    ),
    (
        "arf-microsoft-jmrp.eml",
        Kind.COMPLAINT,
        ("bohdan.tkachenko@outlook.example.net",),
        None,
        "5e1c9a7b3f20.1024@news.example.org",
        DAILY,
        "f4h7k2n5q8tl",
    ),
    (
        "autoreply-out-of-office.eml",
        Kind.AUTOREPLY,
        ("olha.kravets@example.org",),
        None,
        "5e1c9a7b3f20.1101@news.example.org",
        None,
        "w2y5b8d3f6hm",
    ),
    (
        "reader-reply.eml",
        Kind.OTHER,
        ("andriy.moroz@example.net",),
        None,
        "5e1c9a7b3f20.1290@news.example.org",
        None,
        "n9p4s7u2x5zn",
    ),
    (
        "unsubscribe-mailto.eml",
        Kind.UNSUBSCRIBE,
        ("lesia.ukrainka@example.net",),
        None,
        None,
        None,
        "b6d9g4j7m2pq",
    ),
]


@pytest.mark.parametrize(
    ("name", "kind", "recipients", "status", "message_id", "list_id", "tag"),
    SAMPLES,
    ids=[sample[0].removesuffix(".eml") for sample in SAMPLES],
)
def test_sample_is_classified(
    name: str,
    kind: Kind,
    recipients: tuple[str, ...],
    status: str | None,
    message_id: str | None,
    list_id: str | None,
    tag: str | None,
) -> None:
    report = classify(read(name))
    assert report.kind is kind
    assert report.recipients == recipients
    assert report.status == status
    assert report.message_id == message_id
    assert report.list_id == list_id
    assert report.tag == tag


def test_every_sample_is_in_the_table() -> None:
    assert sorted(path.name for path in CORPUS.glob("*.eml")) == sorted(s[0] for s in SAMPLES)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("postfix-hard.eml", "550 5.1.1 <oksana.melnyk@example.net>: Recipient address rejected"),
        ("postfix-soft-delayed.eml", "452 4.2.2 <Taras.Bondar@mail.example.org>: Mailbox full"),
        ("exim-hard.eml", "550 5.1.1 <mykola.koval@example.net>: No such user here"),
        ("exchange-online-hard.eml", "550 5.5.0 Requested action not taken: mailbox unavailable"),
        ("outlook-quota-hard.eml", "554 5.2.2 mailbox full;"),
        ("gmail-hard.eml", "The email account that you tried to reach does not exist."),
        ("yahoo-hard.eml", "554 delivery error: dd This user doesn't have a yahoo.com account"),
        ("qmail-hard.eml", "Sorry, no mailbox here by that name. (#5.1.1)"),
        ("arf-yahoo-complaint.eml", "abuse report from Yahoo!-Mail-Feedback/2.0"),
        ("autoreply-out-of-office.eml", "Automatic reply: Daily News: 3 December"),
        ("reader-reply.eml", "Re: Daily News: 3 December"),
        ("unsubscribe-mailto.eml", "unsubscribe"),
    ],
    ids=lambda value: value.removesuffix(".eml") if value.endswith(".eml") else "",
)
def test_diagnostic_says_why_on_one_line(name: str, words: str) -> None:
    diagnostic = classify(read(name)).diagnostic
    assert words in diagnostic
    assert len(diagnostic) <= DIAGNOSTIC_LENGTH
    assert not re.search(r"[\x00-\x1f\x7f]", diagnostic)


def test_complaints_keep_the_feedback_type() -> None:
    assert classify(read("arf-yahoo-complaint.eml")).feedback_type == "abuse"
    assert classify(read("postfix-hard.eml")).feedback_type is None


def test_mailbox_full_with_a_permanent_code_is_hard() -> None:
    """Outlook says "mailbox full" with 5.2.2: the code decides, not the words."""
    report = classify(read("outlook-quota-hard.eml"))
    assert "mailbox full" in report.diagnostic
    assert (report.kind, report.status) == (Kind.HARD, "5.2.2")


def test_tag_in_capitals_is_kept_as_found() -> None:
    """Some servers uppercase the whole address they return mail to."""
    data = read("postfix-hard.eml").replace(
        b"bounces+m4xq7k2p9d3a@news.example.org", b"BOUNCES+M4XQ7K2P9D3A@NEWS.EXAMPLE.ORG"
    )
    report = classify(data)
    assert (report.kind, report.tag) == (Kind.HARD, "M4XQ7K2P9D3A")


@pytest.mark.parametrize(
    "bounce_address",
    ["returns@news.example.org", "bounces@other.example.net", "bounces+x@", None],
    ids=["other-local-part", "other-domain", "broken", "none"],
)
def test_report_for_another_bounce_address_has_no_tag(bounce_address: str | None) -> None:
    report = classify(read("postfix-hard.eml"), bounce_address=bounce_address)
    assert report.kind is Kind.HARD
    assert report.recipients == ("oksana.melnyk@example.net",)
    assert report.tag is None


def test_bounce_address_with_a_plus_of_its_own() -> None:
    data = read("postfix-hard.eml").replace(b"bounces+", b"news+bounces+")
    assert classify(data, bounce_address="news+bounces@news.example.org").tag == "m4xq7k2p9d3a"
    assert classify(data, bounce_address="news@news.example.org").tag == "bounces+m4xq7k2p9d3a"


def test_tag_from_a_later_header_when_the_first_has_none() -> None:
    """Delivered-To lost the tag to an alias; X-Original-To still has it."""
    data = read("qmail-hard.eml").replace(
        b"Delivered-To: bounces@mail.news.example.org", b"Delivered-To: bounces@news.example.org"
    )
    assert classify(data).tag == "r3t8v1x6z9bh"


def test_feedback_report_to_a_fixed_address_takes_the_tag_from_our_envelope_sender() -> None:
    """Feedback loops mail one registered address; the report quotes our envelope sender."""
    data = read("arf-yahoo-complaint.eml")
    assert b"bounces+" not in data.split(b"\n\n", 1)[0]
    assert classify(data).tag == "k5m8p3s6v9xj"


def message(headers: str, body: str = "Hello.\n") -> bytes:
    return (headers.strip() + "\n\n" + body).encode()


def test_unsubscribe_without_a_tag_keeps_the_subject() -> None:
    data = message(
        """
From: Reader <reader@example.net>
To: Unsubscribe <Unsubscribe@News.Example.ORG>
Subject: Unsubscribe me from Daily News
""",
        "",
    )
    report = classify(data)
    assert report.kind is Kind.UNSUBSCRIBE
    assert report.tag is None
    assert report.recipients == ("reader@example.net",)
    assert report.diagnostic == "Unsubscribe me from Daily News"


def test_unsubscribe_subject_in_raw_utf8_is_read() -> None:
    data = (
        "From: reader@example.net\nTo: unsubscribe+daily@news.example.org\n"
        "Subject: Відписатися від розсилки\n\n"
    ).encode()
    report = classify(data)
    assert (report.kind, report.tag) == (Kind.UNSUBSCRIBE, "daily")
    assert report.diagnostic == "Відписатися від розсилки"


def test_mail_to_the_unsubscribe_address_is_not_unsubscribe_when_it_is_not_configured() -> None:
    report = classify(read("unsubscribe-mailto.eml"), unsubscribe_address=None)
    assert report.kind is Kind.OTHER
    assert report.tag is None


@pytest.mark.parametrize(
    "headers",
    [
        "Subject: Out of Office: Daily News",
        "Subject: Abwesenheitsnotiz: Daily News",
        "Subject: =?utf-8?b?0JDQstGC0L7QstGW0LTQv9C+0LLRltC00Yw=?=: Daily News",
        "Subject: Re: Daily News\nX-Autoreply: yes",
        "Subject: Re: Daily News\nPrecedence: auto_reply",
        "Subject: Re: Daily News\nAuto-Submitted: auto-replied (vacation)",
    ],
    ids=["out-of-office", "german", "ukrainian-encoded", "x-autoreply", "precedence", "rfc3834"],
)
def test_auto_replies(headers: str) -> None:
    data = message(f"From: Reader <reader@example.net>\nTo: {BOUNCES}\n{headers}")
    report = classify(data)
    assert report.kind is Kind.AUTOREPLY
    assert report.recipients == ("reader@example.net",)


def test_a_person_writing_back_is_other() -> None:
    data = message(
        f"From: reader@example.net\nTo: {BOUNCES}\nSubject: Re: Daily News\n"
        "Auto-Submitted: no\nIn-Reply-To: <abc123.42@news.example.org>"
    )
    report = classify(data)
    assert (report.kind, report.message_id) == (Kind.OTHER, "abc123.42@news.example.org")


def dsn(recipient_fields: str, *, report_type: str = "delivery-status") -> bytes:
    """A minimal RFC 3464 report with the given per-recipient fields (or an ARF report)."""
    per_message = (
        "Reporting-MTA: dns; mx.example.net\n\n" if report_type == "delivery-status" else ""
    )
    return message(
        f"""
From: MAILER-DAEMON@mx.example.net
To: bounces+t1@news.example.org
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type={report_type}; boundary="b"
""",
        f"""--b
Content-Type: text/plain

Report.

--b
Content-Type: message/{report_type}

{per_message}{recipient_fields.strip()}

--b
Content-Type: text/rfc822-headers

Message-ID: <abc123.7@news.example.org>
List-Id: <daily.news.example.org>

--b--
""",
    )


RECIPIENT = "Final-Recipient: rfc822; a@example.net\n"


@pytest.mark.parametrize(
    ("fields", "kind", "status"),
    [
        ("Action: failed\nStatus: 5.1.1", Kind.HARD, "5.1.1"),
        ("Action: failed\nStatus: 4.4.7", Kind.SOFT, "4.4.7"),
        ("Action: delayed\nStatus: 4.4.1", Kind.SOFT, "4.4.1"),
        ("Action: failed\nDiagnostic-Code: smtp; 550 No", Kind.HARD, None),
        ("Action: failed\nDiagnostic-Code: smtp; 421 4.7.0 Try later", Kind.SOFT, "4.7.0"),
        ("Status: 5.7.1", Kind.HARD, "5.7.1"),
        ("Action: delivered\nStatus: 2.0.0", Kind.OTHER, None),
    ],
    ids=[
        "failed-5xx",
        "failed-4xx-expired",
        "delayed",
        "no-status",
        "code-in-diagnostic",
        "no-action",
        "delivered",
    ],
)
def test_delivery_status_codes_decide(fields: str, kind: Kind, status: str | None) -> None:
    report = classify(dsn(RECIPIENT + fields))
    assert (report.kind, report.status) == (kind, status)
    if kind is not Kind.OTHER:
        assert report.recipients == ("a@example.net",)
        assert (report.message_id, report.list_id, report.tag) == (
            "abc123.7@news.example.org",
            DAILY,
            "t1",
        )


def test_hard_recipients_win_over_delayed_ones() -> None:
    report = classify(
        dsn(
            "Final-Recipient: rfc822; late@example.net\nAction: delayed\nStatus: 4.2.2\n\n"
            "Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1"
        )
    )
    assert (report.kind, report.recipients, report.status) == (
        Kind.HARD,
        ("gone@example.net",),
        "5.1.1",
    )


def test_dmarc_failure_report_is_not_a_complaint() -> None:
    data = dsn(
        "Feedback-Type: auth-failure\nUser-Agent: Example-DMARC/1.0\nVersion: 1\n"
        "Original-Rcpt-To: <a@example.net>",
        report_type="feedback-report",
    )
    report = classify(data)
    assert (report.kind, report.feedback_type) == (Kind.OTHER, "auth-failure")


def test_feedback_report_with_only_the_headers_of_the_original() -> None:
    """RFC 5965 allows text/rfc822-headers; the recipient is then the original's To."""
    data = dsn(
        "Feedback-Type: abuse\nUser-Agent: Example-FBL/1.0\nVersion: 1",
        report_type="feedback-report",
    )
    data = data.replace(
        b"Message-ID: <abc123.7", b"To: Reader <Reader@Example.NET>\nMessage-ID: <abc123.7"
    )
    report = classify(data)
    assert (report.kind, report.recipients, report.message_id, report.list_id, report.tag) == (
        Kind.COMPLAINT,
        ("Reader@example.net",),
        "abc123.7@news.example.org",
        DAILY,
        "t1",
    )


def test_nothing_from_a_reader_reaches_a_line_break() -> None:
    data = dsn(
        "Final-Recipient: rfc822; a@example.net\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 \x1b[31mgone\x07\x0b\x0c " + "x" * 900
    )
    report = classify(data)
    assert report.kind is Kind.HARD
    assert report.diagnostic.startswith("550 5.1.1 [31mgone x")
    assert len(report.diagnostic) == DIAGNOSTIC_LENGTH
    encoded = message(
        f"From: r@example.net\nTo: {UNSUBSCRIBE}\nSubject: =?utf-8?q?stop=0D=0ABcc:_x@example.net?="
    )
    assert classify(encoded).diagnostic == "stop Bcc: x@example.net"


def test_garbage_is_other() -> None:
    noise = random.Random(7).randbytes(20_000)
    for data in (b"", b"\x00", b"\xff\xfe" * 500, noise, b"From: \n\n", b"\n\n\n"):
        report = classify(data)
        assert report.kind is Kind.OTHER
        assert report.recipients == ()


@pytest.mark.parametrize("name", [sample[0] for sample in SAMPLES], ids=lambda n: n[:-4])
def test_truncated_samples_never_raise(name: str) -> None:
    data = read(name)
    for size in range(0, len(data), max(1, len(data) // 40)):
        report = classify(data[:size])
        assert isinstance(report.kind, Kind)
        assert all("@" in address for address in report.recipients)


def test_broken_mime_never_raises() -> None:
    broken = [
        message("Content-Type: multipart/report; boundary=", "--\n--\n"),
        message('Content-Type: multipart/report; report-type=delivery-status; boundary="b"', "x"),
        dsn("Final-Recipient: rfc822;\nAction: failed\nStatus: 5.1.1"),
        dsn("Final-Recipient: rfc822; <>\nAction: failed\nStatus: 9.9.9"),
        message("Content-Type: text/plain; charset=no-such-charset\nFrom: MAILER-DAEMON@x", "\xff"),
        message("Content-Type: message/rfc822", ""),
        message("Content-Transfer-Encoding: base64\nFrom: postmaster@x", "!!!not base64"),
        b"Content-Type: multipart/mixed; boundary=a\n\n"
        + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 3000,
    ]
    for data in broken:
        assert isinstance(classify(data).kind, Kind)

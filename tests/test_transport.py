"""Transports: SMTP against a real server (URLs, TLS, AUTH, refusals, reuse), raw bytes, files."""

from __future__ import annotations

import gc
import itertools
import ssl
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest
from flask import Flask

from newsletter import create_app
from newsletter.extensions import db
from newsletter.mail import compose
from newsletter.mail.transport import (
    END_OF_DATA,
    ConnectionFailure,
    DeliveryError,
    FileTransport,
    MemoryTransport,
    PermanentFailure,
    SMTPTransport,
    TemporaryFailure,
    dot_stuffed,
    envelope,
    serialise,
)

from factories import make_config
from smtp_server import (
    CREDENTIALS,
    DROP,
    HOST,
    USERNAME,
    SMTPServer,
    free_port,
    running_smtp,
)

MakeMail = Callable[..., EmailMessage]


@pytest.fixture(scope="module")
def mail_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app to build mails with; these tests use no database."""
    app = create_app(make_config("sqlite://", tmp_path_factory.mktemp("mail-app")))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def make_mail(mail_app: Flask) -> MakeMail:
    """Build a mail as the app does (compose.build), numbered so each is told apart."""
    numbers = itertools.count(1)

    def make(to: str = "reader@example.com", subject: str | None = None) -> EmailMessage:
        n = next(numbers)
        with mail_app.app_context():
            return compose.build(
                to=to,
                from_="Daily Desk <daily@news.example.org>",
                subject=subject or f"Issue {n}",
                text=f"Plain text {n}\n",
                html=f"<p>HTML {n}</p>\n",
                message_key=f"key{n}",
            )

    return make


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def smtp(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """Every test here runs against a server without PIPELINING and one with it (RFC 2920)."""
    with running_smtp(pipelining=request.param) as server:
        yield server


@pytest.fixture
def transport(smtp: SMTPServer) -> Iterator[SMTPTransport]:
    """A transport to the plain server; closed whatever the test does."""
    opened = SMTPTransport(HOST, smtp.port, timeout=5)
    yield opened
    opened.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., SMTPTransport]]:
    """SMTPTransport.from_url, with every transport made closed at the end."""
    made: list[SMTPTransport] = []

    def from_url(url: str, **options: object) -> SMTPTransport:
        made.append(SMTPTransport.from_url(url, timeout=5, **options))
        return made[-1]

    yield from_url
    for transport in made:
        transport.close()
    # A socket leaked by a failed connection warns when collected: make that happen here.
    gc.collect()


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.org", ("mail.example.org", 25, None, None, False, False)),
        (
            "smtp://user:secret@mail.example.org:2525",
            ("mail.example.org", 2525, "user", "secret", False, False),
        ),
        ("smtps://mail.example.org", ("mail.example.org", 465, None, None, True, False)),
        ("smtps://u:p@mail.example.org:4650", ("mail.example.org", 4650, "u", "p", True, False)),
        (
            "smtp://u:p@mail.example.org:587?starttls=1",
            ("mail.example.org", 587, "u", "p", False, True),
        ),
        (
            "smtp://mail.example.org?starttls=true",
            ("mail.example.org", 25, None, None, False, True),
        ),
        ("smtp://mail.example.org?starttls=0", ("mail.example.org", 25, None, None, False, False)),
        (
            "smtp://news%40example.org:p%40ss%3Aw%2Frd%20%25%23@mail.example.org:587",
            ("mail.example.org", 587, "news@example.org", "p@ss:w/rd %#", False, False),
        ),
        ("smtp://[::1]:2525", ("::1", 2525, None, None, False, False)),
    ],
    ids=[
        "bare",
        "user-pass-port",
        "smtps-default-465",
        "smtps-port",
        "starttls-1",
        "starttls-true",
        "starttls-0",
        "percent-encoded",
        "ipv6",
    ],
)
def test_from_url_reads_host_port_credentials_and_tls(url, expected):
    transport = SMTPTransport.from_url(url)
    got = (
        transport.host,
        transport.port,
        transport.username,
        transport.password,
        transport.implicit_tls,
        transport.starttls,
    )
    assert got == expected


def test_from_url_passes_options_to_the_transport(client_tls):
    transport = SMTPTransport.from_url("smtp://mail.example.org", timeout=3, ssl_context=client_tls)
    assert transport.timeout == 3
    assert transport.ssl_context is client_tls


@pytest.mark.parametrize(
    "url",
    ["http://mail.example.org", "smtp+tls://mail.example.org", "mail.example.org:25", ""],
    ids=["http", "smtp+tls", "no-scheme", "empty"],
)
def test_from_url_refuses_other_schemes(url):
    with pytest.raises(ValueError, match="unsupported SMTP URL scheme"):
        SMTPTransport.from_url(url)


# --- Plain SMTP ---------------------------------------------------------------------------------


def test_message_arrives_with_envelope_parts_and_ids(smtp, transport, make_mail):
    sent = make_mail(subject="Your morning briefing")
    transport.send(sent)

    [received] = smtp.received
    assert received.mail_from == "daily@news.example.org"
    assert received.rcpt_tos == ["reader@example.com"]
    assert received.tls is False and received.login is None
    message = received.message
    assert message["Subject"] == "Your morning briefing"
    assert message["From"] == "Daily Desk <daily@news.example.org>"
    assert message["To"] == "reader@example.com"
    assert message["Message-ID"] == sent["Message-ID"] == "<key1@news.example.org>"
    assert message["Date"] == sent["Date"]
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    parts = [(p.get_content_type(), p.get_content()) for p in message.iter_parts()]
    assert parts == [("text/plain", "Plain text 1\n"), ("text/html", "<p>HTML 1</p>\n")]


def test_one_connection_carries_many_messages_until_closed(smtp, transport, make_mail):
    for _ in range(3):
        transport.send(make_mail())
    assert len(smtp.received) == 3
    assert smtp.connections == 1

    transport.close()
    assert smtp.handler.quits == 1
    transport.close()  # closing twice is harmless

    transport.send(make_mail())
    assert len(smtp.received) == 4
    assert smtp.connections == 2


def test_close_without_sending_opens_nothing(smtp):
    SMTPTransport(HOST, smtp.port, timeout=5).close()
    assert smtp.connections == 0


# --- Refusals and dropped connections ----------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply", "failure"),
    [
        ("MAIL", "451 4.3.0 Sender check deferred", TemporaryFailure),
        ("MAIL", "553 5.1.8 Sender address rejected", PermanentFailure),
        ("RCPT", "451 4.2.0 Mailbox busy, try later", TemporaryFailure),
        ("RCPT", "550 5.1.1 No such user here", PermanentFailure),
        ("DATA", "451 4.3.0 Queue full", TemporaryFailure),
        ("DATA", "554 5.7.1 Message rejected as spam", PermanentFailure),
    ],
    ids=["mail-451", "mail-553", "rcpt-451", "rcpt-550", "data-451", "data-554"],
)
def test_refusal_maps_to_its_kind_and_the_connection_carries_the_next_message(
    smtp, transport, make_mail, command, reply, failure
):
    smtp.handler.refuse(command, reply)
    with pytest.raises(DeliveryError) as caught:
        transport.send(make_mail(subject="refused"))
    assert type(caught.value) is failure
    assert caught.value.code == int(reply[:3])
    assert caught.value.permanent is (failure is PermanentFailure)
    assert reply[4:].split(" ", 1)[1] in str(caught.value)  # the server's words, for last_error
    assert smtp.received == []

    transport.send(make_mail(subject="next"))
    assert [r.message["Subject"] for r in smtp.received] == ["next"]
    assert smtp.connections == 1
    assert smtp.handler.resets >= 1


def test_421_closes_the_connection_and_the_next_message_opens_another(smtp, transport, make_mail):
    smtp.handler.refuse("RCPT", "421 4.3.2 Shutting down")
    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_mail())
    assert caught.value.code == 421

    transport.send(make_mail(subject="next"))
    assert [r.message["Subject"] for r in smtp.received] == ["next"]
    assert smtp.connections == 2


@pytest.mark.parametrize("command", ["MAIL", "DATA"], ids=["at-mail", "at-data"])
def test_kept_open_connection_closed_by_the_server_is_reopened_once(
    smtp, transport, make_mail, command
):
    transport.send(make_mail(subject="first"))
    smtp.handler.refuse(command, DROP)
    transport.send(make_mail(subject="second"))
    assert [r.message["Subject"] for r in smtp.received] == ["first", "second"]
    assert smtp.connections == 2


@pytest.mark.parametrize("command", ["MAIL", "DATA"], ids=["at-mail", "at-data"])
def test_dropped_fresh_connection_is_temporary_and_the_next_message_reconnects(
    smtp, transport, make_mail, command
):
    transport.send(make_mail(subject="first"))
    smtp.handler.refuse(command, DROP, DROP)
    with pytest.raises(TemporaryFailure, match="closed by the server|ConnectionResetError"):
        transport.send(make_mail(subject="dropped"))

    transport.send(make_mail(subject="after"))
    assert [r.message["Subject"] for r in smtp.received] == ["first", "after"]
    assert smtp.connections == 3


def test_closed_port_is_a_temporary_failure(make_mail):
    transport = SMTPTransport(HOST, free_port(), timeout=5)
    with pytest.raises(TemporaryFailure, match="ConnectionRefusedError"):
        transport.send(make_mail())
    transport.close()


# --- AUTH -------------------------------------------------------------------------------------


def test_login_with_percent_encoded_credentials(smtp_auth, connect, make_mail):
    transport = connect(f"smtp://{CREDENTIALS}@{HOST}:{smtp_auth.port}")
    transport.send(make_mail())
    transport.send(make_mail())
    assert [r.login for r in smtp_auth.received] == [USERNAME, USERNAME]
    assert smtp_auth.connections == 1


def test_wrong_password_is_temporary_so_the_mail_waits_for_the_fix(smtp_auth, connect, make_mail):
    # A 535 is about our configuration, not about the message: failing it for good would
    # throw away every queued mail while an operator fixes a password.
    transport = connect(f"smtp://{USERNAME}:wrong@{HOST}:{smtp_auth.port}")
    with pytest.raises(TemporaryFailure) as caught:
        transport.send(make_mail())
    assert caught.value.code == 535
    assert "SMTPAuthenticationError" in str(caught.value)
    assert smtp_auth.received == []


def test_credentials_for_a_server_without_auth_are_a_temporary_failure(smtp, connect, make_mail):
    transport = connect(f"smtp://{CREDENTIALS}@{HOST}:{smtp.port}")
    with pytest.raises(TemporaryFailure, match="SMTPNotSupportedError"):
        transport.send(make_mail())


# --- TLS --------------------------------------------------------------------------------------


def test_starttls_then_login_then_mail(smtp_starttls, connect, client_tls, make_mail):
    url = f"smtp://{CREDENTIALS}@{HOST}:{smtp_starttls.port}?starttls=1"
    transport = connect(url, ssl_context=client_tls)
    transport.send(make_mail())
    transport.send(make_mail())
    assert [(r.tls, r.login) for r in smtp_starttls.received] == [(True, USERNAME)] * 2
    assert smtp_starttls.connections == 1


def test_smtps_speaks_tls_from_the_start(smtps, connect, client_tls, make_mail):
    transport = connect(f"smtps://{CREDENTIALS}@{HOST}:{smtps.port}", ssl_context=client_tls)
    transport.send(make_mail())
    transport.send(make_mail())
    assert [(r.tls, r.login) for r in smtps.received] == [(True, USERNAME)] * 2
    assert smtps.connections == 1


@pytest.mark.parametrize("server", ["smtp_starttls", "smtps"])
def test_untrusted_certificate_is_refused_as_temporary(request, server, connect, make_mail):
    running: SMTPServer = request.getfixturevalue(server)
    scheme, query = ("smtps", "") if server == "smtps" else ("smtp", "?starttls=1")
    # No ssl_context: the system's trust store, which does not know the test certificate.
    transport = connect(f"{scheme}://{CREDENTIALS}@{HOST}:{running.port}{query}")
    with pytest.raises(TemporaryFailure, match="SSLCertVerificationError"):
        transport.send(make_mail())
    assert running.received == []


def test_certificate_must_name_the_host(smtps, connect, certificate, make_mail):
    # The certificate is for 127.0.0.1; a context that trusts it still checks the name.
    context = ssl.create_default_context(cafile=str(certificate.cert))
    transport = connect(f"smtps://localhost:{smtps.port}", ssl_context=context)
    with pytest.raises(TemporaryFailure, match="SSLCertVerificationError"):
        transport.send(make_mail())


# --- Raw messages -----------------------------------------------------------------------------


def keep_raw(smtp: SMTPServer) -> list[bytes]:
    """The bytes of each message the server accepts, as they came after DATA."""
    kept: list[bytes] = []
    handle_data = smtp.handler.handle_DATA

    async def keeping(server, session, envelope):  # type: ignore[no-untyped-def]
        reply = await handle_data(server, session, envelope)
        if reply.startswith("250"):
            kept.append(envelope.content)
        return reply

    # aiosmtpd looks its hooks up on each new connection, so no connection has the old one.
    smtp.handler.handle_DATA = keeping  # type: ignore[method-assign]
    return kept


def raw_mail(subject: str = "Raw", to: str = "reader@example.com") -> bytes:
    """A small serialised message with CRLF line ends."""
    return (
        f"From: Daily Desk <daily@news.example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Message-ID: <raw1@news.example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n.leading dot\r\n"
    ).encode()


def test_send_raw_delivers_the_bytes_with_the_given_envelope(smtp, transport):
    kept = keep_raw(smtp)
    data = raw_mail()
    transport.send_raw("bounces@news.example.org", ["a@example.com", "b@example.com"], data)

    [received] = smtp.received
    assert received.mail_from == "bounces@news.example.org"
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]
    assert kept == [data]  # byte for byte, the leading dot unstuffed again


@pytest.mark.parametrize(
    ("command", "reply", "failure"),
    [
        ("MAIL", "451 4.3.0 Sender check deferred", TemporaryFailure),
        ("RCPT", "550 5.1.1 No such user here", PermanentFailure),
        ("DATA", "451 4.3.0 Queue full", TemporaryFailure),
        ("DATA", "554 5.7.1 Message rejected as spam", PermanentFailure),
    ],
    ids=["mail-451", "rcpt-550", "data-451", "data-554"],
)
def test_send_raw_maps_refusals_as_send_does(smtp, transport, command, reply, failure):
    smtp.handler.refuse(command, reply)
    with pytest.raises(DeliveryError) as caught:
        transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("refused"))
    assert type(caught.value) is failure
    assert caught.value.code == int(reply[:3])
    assert smtp.received == []

    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("next"))
    assert [r.message["Subject"] for r in smtp.received] == ["next"]
    assert smtp.connections == 1


def test_send_raw_reopens_a_kept_open_connection_the_server_dropped(smtp, transport):
    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("first"))
    smtp.handler.refuse("DATA", DROP)
    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("second"))
    assert [r.message["Subject"] for r in smtp.received] == ["first", "second"]
    assert smtp.connections == 2


def test_send_raw_on_a_fresh_connection_that_drops_is_temporary(smtp, transport):
    smtp.handler.refuse("MAIL", DROP)
    with pytest.raises(TemporaryFailure):
        transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail())
    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("after"))
    assert [r.message["Subject"] for r in smtp.received] == ["after"]


def test_before_data_runs_once_the_envelope_is_taken_and_before_the_message(smtp, transport):
    seen: list[int] = []
    transport.send_raw(
        "daily@news.example.org",
        ["reader@example.com"],
        raw_mail("first"),
        before_data=lambda: seen.append(len(smtp.received)),
    )
    assert seen == [0]
    assert [r.message["Subject"] for r in smtp.received] == ["first"]


def test_what_before_data_raises_ends_the_session_and_sends_nothing(smtp, transport):
    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("first"))

    def fails() -> None:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        transport.send_raw(
            "daily@news.example.org", ["reader@example.com"], raw_mail("lost"), before_data=fails
        )
    transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail("after"))
    assert [r.message["Subject"] for r in smtp.received] == ["first", "after"]
    # The session in the middle of a message was dropped, a new one carried the next.
    assert smtp.connections == 2


def test_send_raw_to_a_closed_port_is_a_connection_failure():
    transport = SMTPTransport(HOST, free_port(), timeout=5)
    with pytest.raises(ConnectionFailure, match="ConnectionRefusedError"):
        transport.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail())
    transport.close()


def test_send_puts_crlf_bytes_on_the_wire_with_the_from_and_to_as_envelope(
    smtp, transport, make_mail
):
    kept = keep_raw(smtp)
    transport.send(make_mail(to="reader@bücher.example"))

    [received] = smtp.received
    assert received.mail_from == "daily@news.example.org"
    assert received.rcpt_tos == ["reader@xn--bcher-kva.example"]
    [data] = kept
    assert data.count(b"\n") == data.count(b"\r\n")
    assert data.startswith(b"Subject: Issue 1\r\n")


def test_serialise_and_envelope_agree_with_the_message(make_mail):
    message = make_mail(subject="Wire")
    data = serialise(message)
    assert data.count(b"\n") == data.count(b"\r\n") > 0
    assert b"\r\nFrom: Daily Desk <daily@news.example.org>\r\n" in data
    assert envelope(message) == ("daily@news.example.org", ["reader@example.com"])


def test_a_message_without_a_from_cannot_be_sent(make_mail):
    message = make_mail()
    del message["From"]
    with pytest.raises(PermanentFailure, match="From"):
        MemoryTransport().send(message)


def test_memory_transport_keeps_what_it_sent_raw_and_parsed(make_mail):
    memory = MemoryTransport()
    sent = make_mail(subject="Kept")
    memory.send(sent)

    [raw] = memory.raw
    [message] = memory.messages
    assert raw == serialise(sent)
    assert memory.envelopes == [("daily@news.example.org", ["reader@example.com"])]
    assert message["Subject"] == "Kept" and message["Message-ID"] == sent["Message-ID"]
    assert message.get_body(preferencelist=("plain",)).get_content() == "Plain text 1\n"
    assert message.as_bytes() == raw


def test_file_transport_writes_the_raw_bytes(tmp_path, make_mail):
    files = FileTransport(tmp_path / "outbox")
    sent = make_mail()
    files.send(sent)
    files.send_raw("daily@news.example.org", ["reader@example.com"], raw_mail())

    paths = sorted((tmp_path / "outbox").glob("*.eml"))
    assert [p.name.split("-", 1)[1] for p in paths] == ["key1.eml", "raw1.eml"]
    assert paths[0].read_bytes() == serialise(sent)
    assert paths[1].read_bytes() == raw_mail()


def test_pipelining_is_used_when_offered_and_dots_are_stuffed(smtp, transport):
    kept = keep_raw(smtp)
    data = raw_mail() + b".\r\n..two dots\r\n"
    transport.send_raw("daily@news.example.org", ["reader@example.com"], data)
    assert transport._smtp is not None
    assert transport._smtp.has_extn("pipelining") == smtp.handler.pipelining
    assert kept == [data]


def test_one_refused_recipient_of_two_still_lets_the_other_have_it(smtp, transport):
    smtp.handler.refuse("RCPT", "550 5.1.1 No such user here")
    with pytest.raises(PermanentFailure) as caught:
        transport.send_raw(
            "daily@news.example.org", ["gone@example.com", "b@example.com"], raw_mail()
        )
    assert caught.value.recipient_refused
    assert [r.rcpt_tos for r in smtp.received] == [["b@example.com"]]


def test_the_next_envelope_sent_ahead_carries_the_next_mail(smtp, transport):
    """The next message's envelope goes with this one's body; both arrive, on one connection."""
    kept = keep_raw(smtp)
    first, second = raw_mail("First", "a@example.com"), raw_mail("Second", "b@example.com")
    transport.send_raw(
        "bounces@news.example.org",
        ["a@example.com"],
        first,
        then=("bounces@news.example.org", ["b@example.com"]),
    )
    transport.send_raw("bounces@news.example.org", ["b@example.com"], second)

    assert [r.rcpt_tos for r in smtp.received] == [["a@example.com"], ["b@example.com"]]
    assert kept == [first, second]
    assert smtp.connections == 1 and smtp.handler.resets == 0


@pytest.mark.parametrize("after", ["another mail", "close"])
def test_an_envelope_sent_ahead_for_a_mail_that_does_not_follow_delivers_nothing(
    smtp, transport, after
):
    """The reader whose envelope went ahead gets nothing, not even an empty message."""
    transport.send_raw(
        "bounces@news.example.org",
        ["a@example.com"],
        raw_mail("First", "a@example.com"),
        then=("bounces@news.example.org", ["gone@example.com"]),
    )
    if after == "close":
        transport.close()
    else:
        transport.send_raw("bounces@news.example.org", ["c@example.com"], raw_mail("Other"))

    wanted = [["a@example.com"]] + ([] if after == "close" else [["c@example.com"]])
    assert [r.rcpt_tos for r in smtp.received] == wanted


def test_a_refused_body_keeps_the_envelope_sent_ahead(smtp, transport):
    """A message refused after its body fails alone; the next one, whose envelope went with
    it, still arrives, without an RSET that would have undone that envelope."""
    smtp.handler.refuse("DATA", "554 5.7.1 Message rejected")
    with pytest.raises(PermanentFailure):
        transport.send_raw(
            "bounces@news.example.org",
            ["a@example.com"],
            raw_mail("First", "a@example.com"),
            then=("bounces@news.example.org", ["b@example.com"]),
        )
    transport.send_raw("bounces@news.example.org", ["b@example.com"], raw_mail("Second"))

    assert [r.rcpt_tos for r in smtp.received] == [["b@example.com"]]
    assert smtp.connections == 1


def test_a_message_stuffed_by_the_caller_arrives_as_written(smtp, transport):
    """A caller may hand the message already as it goes after DATA; it is not stuffed twice,
    also where the server takes no pipelining and smtplib stuffs it itself."""
    kept = keep_raw(smtp)
    data = raw_mail() + b"..two dots\r\n"
    transport.send_raw(
        "daily@news.example.org",
        ["reader@example.com"],
        dot_stuffed(b".first line\r\n" + data) + END_OF_DATA,
        stuffed=True,
    )
    assert kept == [b".first line\r\n" + data]

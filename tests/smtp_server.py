"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, with TLS, AUTH and scripted refusals.

conftest.py loads this module as a pytest plugin, so its fixtures reach every test module.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
USERNAME = "news@example.org"
# Characters that must be percent-encoded in an SMTP URL.
PASSWORD = "p@ss:w/rd %#"
CREDENTIALS = f"{quote(USERNAME, safe='')}:{quote(PASSWORD, safe='')}"
# A scripted reply that closes the connection instead of answering.
DROP = "drop"


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


class Handler:
    """The server's handler: keeps what it accepted, counts connections, answers as scripted."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.received: list[Received] = []
        self.connections = 0
        self.resets = 0
        self.quits = 0
        self._replies: dict[str, list[str]] = {}
        # EHLO comes twice on a STARTTLS connection; count each connection once.
        self._greeted: list[SMTP] = []

    def refuse(self, command: str, *replies: str) -> None:
        """Answer the next MAIL, RCPT or DATA commands with these replies (or DROP)."""
        self._replies.setdefault(command, []).extend(replies)

    async def _scripted(self, server: SMTP, command: str) -> str | None:
        replies = self._replies.get(command)
        if not replies:
            return None
        reply = replies.pop(0)
        if reply == DROP:
            assert server.transport is not None
            server.transport.close()
            # connection_lost cancels this session's task, which ends the wait.
            await asyncio.get_running_loop().create_future()
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if not any(seen is server for seen in self._greeted):
            self._greeted.append(server)
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands one line at a time, so pipelined ones work; say so.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if reply := await self._scripted(server, "MAIL"):
            return reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if reply := await self._scripted(server, "RCPT"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if reply := await self._scripted(server, "DATA"):
            return reply
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        assert server.transport is not None
        # Line ends as a mail program shows them, not as SMTP carries them (CRLF).
        content = envelope.content.replace(b"\r\n", b"\n")
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=session.auth_data if session.authenticated else None,
            )
        )
        return "250 2.0.0 Accepted"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.resets += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accept USERNAME with PASSWORD, nothing else."""
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    login = auth_data.login.decode()
    if (login, auth_data.password.decode()) != (USERNAME, PASSWORD):
        return AuthResult(success=False, handled=False)
    return AuthResult(success=True, auth_data=login)


@dataclass
class SMTPServer:
    """A running server and what it has seen."""

    handler: Handler
    port: int

    @property
    def url(self) -> str:
        return f"smtp://{HOST}:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def connections(self) -> int:
        return self.handler.connections


def free_port() -> int:
    """A port nothing listens on (until someone binds it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_smtp(
    port: int | None = None, pipelining: bool = False, **options: Any
) -> Iterator[SMTPServer]:
    """Run aiosmtpd in a thread for the duration of the block; options go to aiosmtpd."""
    handler = Handler(pipelining)
    port = port or free_port()
    # server_hostname spares a DNS lookup (getfqdn) on every connection.
    controller = Controller(
        handler, hostname=HOST, port=port, server_hostname="mail.test", ready_timeout=5, **options
    )
    controller.start()
    try:
        yield SMTPServer(handler, port)
    finally:
        controller.stop()


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made once per run."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    made = Certificate(folder / "cert.pem", folder / "key.pem")
    options = (
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
        f" -subj /CN={HOST} -addext subjectAltName=IP:{HOST}"
    )
    subprocess.run(
        ["openssl", *options.split(), "-keyout", str(made.key), "-out", str(made.cert)],
        check=True,
        capture_output=True,
    )
    return made


@pytest.fixture(scope="session")
def server_tls(certificate: Certificate) -> ssl.SSLContext:
    """The server side of TLS, for STARTTLS and for implicit TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


@pytest.fixture(scope="session")
def client_tls(certificate: Certificate) -> ssl.SSLContext:
    """A client context that trusts the test certificate (and still checks the host name)."""
    return ssl.create_default_context(cafile=str(certificate.cert))


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    """Plain SMTP, no AUTH, no TLS."""
    with running_smtp() as server:
        yield server


@pytest.fixture
def smtp_pipelining() -> Iterator[SMTPServer]:
    """A server that offers PIPELINING (RFC 2920), as Postfix and most relays do."""
    with running_smtp(pipelining=True) as server:
        yield server


@pytest.fixture
def smtp_auth() -> Iterator[SMTPServer]:
    """Plain SMTP that offers AUTH without TLS (as some relays on a private network do)."""
    with running_smtp(authenticator=authenticator, auth_require_tls=False) as server:
        yield server


@pytest.fixture
def smtp_starttls(server_tls: ssl.SSLContext) -> Iterator[SMTPServer]:
    """A submission server: STARTTLS first, then AUTH, before any mail."""
    with running_smtp(
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    ) as server:
        yield server


@pytest.fixture
def smtps(server_tls: ssl.SSLContext) -> Iterator[SMTPServer]:
    """TLS from the first byte (port 465 style), with AUTH."""
    # aiosmtpd only counts STARTTLS as TLS for AUTH, hence auth_require_tls=False here.
    with running_smtp(
        ssl_context=server_tls, authenticator=authenticator, auth_require_tls=False
    ) as server:
        yield server

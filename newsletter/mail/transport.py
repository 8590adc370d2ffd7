"""How a finished message leaves: SMTP, .eml files, or memory (tests)."""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

from newsletter.mail.compose import POLICY, wire_address

if TYPE_CHECKING:
    # Not at run time: processes that never sign (the import's checker) skip dkimpy.
    from newsletter.mail.dkim import Signer


class DeliveryError(Exception):
    """The message was not accepted."""

    permanent = False
    recipient_refused = False
    sender_refused = False

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError):
    """Try again later: a 4xx reply, a refused or dropped connection."""


class ConnectionFailure(TemporaryFailure):
    """The server could not be reached or would not let us in; no message was offered."""


class _Disconnected(TemporaryFailure):
    """The connection went away in the middle of a message."""


class PermanentFailure(DeliveryError):
    """Do not try again: a 5xx reply."""

    permanent = True


# An SMTP envelope: the sender and the recipients.
Envelope = tuple[str, Sequence[str]]


class Transport(Protocol):
    def send(self, message: EmailMessage, sender: str | None = None) -> None: ...

    def send_raw(self, sender: str, recipients: Sequence[str], data: bytes) -> None: ...

    def close(self) -> None: ...


_BARE_LF = re.compile(rb"(?<!\r)\n")


def serialise(message: Message) -> bytes:
    """The message as it goes on the wire: RFC 5322 bytes with CRLF line ends."""
    data = message.as_bytes(policy=POLICY)
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    return data


def envelope(message: Message) -> tuple[str, list[str]]:
    """The SMTP envelope of a message: its From address and its To and Cc addresses."""
    senders = [addr for _, addr in getaddresses([str(v) for v in message.get_all("From", [])])]
    recipients = [
        wire_address(addr)
        for field in ("To", "Cc")
        for _, addr in getaddresses([str(v) for v in message.get_all(field, [])])
        if addr
    ]
    if len(senders) != 1 or not senders[0]:
        raise PermanentFailure("the message needs exactly one From address")
    if not recipients:
        raise PermanentFailure("the message has no recipient")
    return wire_address(senders[0]), recipients


class _Sender(ABC):
    """`send` for every transport: serialise, sign when there is a signer, then `send_raw`."""

    signer: Signer | None = None

    def send(self, message: EmailMessage, sender: str | None = None) -> None:
        """Send a message; the envelope sender is `sender` (a VERP address), else its From."""
        from_header, recipients = envelope(message)
        sender = sender or from_header
        data = serialise(message)
        if self.signer is not None:
            from newsletter.mail.dkim import SigningError

            try:
                data = self.signer.sign(data) + data
            except SigningError as exc:
                raise PermanentFailure(f"cannot DKIM-sign: {exc}") from exc
        self.send_raw(sender, recipients, data)

    @abstractmethod
    def send_raw(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        """Send finished bytes (CRLF line ends) with this envelope."""


class MemoryTransport(_Sender):
    """Keeps messages in lists, parsed and as sent; for tests."""

    def __init__(self, *, signer: Signer | None = None) -> None:
        self.signer = signer
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    def send_raw(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        self.raw.append(data)
        self.envelopes.append((sender, list(recipients)))
        # Parsed with LF line ends, so text parts read as they were written, and with the policy
        # the message was built with, so as_bytes() gives back what went on the wire.
        parsed = message_from_bytes(data.replace(b"\r\n", b"\n"), policy=POLICY)
        self.messages.append(cast(EmailMessage, parsed))

    def close(self) -> None:
        pass


class FileTransport(_Sender):
    """Writes each message as an .eml file, for development without a mail server."""

    def __init__(self, directory: str | Path, *, signer: Signer | None = None) -> None:
        self.directory = Path(directory)
        self.signer = signer
        self._counter = 0
        self._lock = threading.Lock()

    def send_raw(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._counter += 1
            counter = self._counter
        key = _message_key(data) or str(counter)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = self.directory / f"{stamp}-{key}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers of the folder never see half a file

    def close(self) -> None:
        pass


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^@>\r\n]*)", re.IGNORECASE | re.MULTILINE)
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]")


def _message_key(data: bytes) -> str:
    """The local part of the Message-ID, to name a file by; empty when there is none."""
    end = data.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(data, 0, end if end >= 0 else len(data))
    if match is None:
        return ""
    return _SAFE_KEY.sub("_", match.group(1).decode("ascii", "replace"))[:32]


class SMTPTransport(_Sender):
    """One SMTP connection, opened on first use and kept open across messages."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool = False,
        starttls: bool = False,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.implicit_tls, self.starttls = implicit_tls, starttls
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.signer = signer
        self._smtp: smtplib.SMTP | None = None
        # The envelope sent ahead with the last message's body, its replies not read yet.
        self._ahead: tuple[str, tuple[str, ...]] | None = None

    @classmethod
    def from_url(cls, url: str, **options: object) -> SMTPTransport:
        """smtp://user:pass@host:port, smtps://… (TLS from the start), ?starttls=1."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError(f"unsupported SMTP URL scheme: {parts.scheme!r}")
        query = parse_qs(parts.query)
        implicit = parts.scheme == "smtps"
        return cls(
            parts.hostname or "localhost",
            parts.port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            starttls=query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
            **options,  # type: ignore[arg-type]
        )

    def _connect(self) -> smtplib.SMTP:
        context = self.ssl_context or ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()  # a half-opened session would leak its socket
            raise
        return smtp

    def send_raw(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        before_data: Callable[[], None] | None = None,
        then: Envelope | None = None,
        stuffed: bool = False,
    ) -> None:
        """Send finished bytes; `before_data` is called once the server has taken the envelope,
        just before the message itself goes (what it raises ends the session and goes up).

        With `stuffed`, `data` is already what goes after DATA: dot-stuffed (`dot_stuffed`)
        and ended by END_OF_DATA, made so by a caller that stuffs most of it once for many
        messages.

        `then` is the envelope of the message meant to go next on this connection: with
        PIPELINING its commands go out with this message's body (RFC 2920 lets a group begin
        with a message's content), so the next message waits for one reply, not two. Should
        the next message be another after all, the connection is dropped, which ends the
        transaction left open without a message: nothing reaches that recipient.
        """
        reused = self._smtp is not None
        try:
            self._deliver(sender, recipients, data, before_data, then, stuffed)
        except _Disconnected:
            if not reused:
                raise
            # The server closed the kept-open connection while it idled: one fresh try.
            self._deliver(sender, recipients, data, before_data, then, stuffed)

    def _open(self) -> smtplib.SMTP:
        try:
            return self._connect()
        except (smtplib.SMTPException, OSError) as exc:
            # Nothing was said about a message yet: a wrong password (535), a failed STARTTLS
            # or a refusing greeting is for the operator to fix, so the mail waits.
            code = getattr(exc, "smtp_code", None)
            raise ConnectionFailure(f"{type(exc).__name__}: {exc}", code) from exc

    def _deliver(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        before_data: Callable[[], None] | None,
        then: Envelope | None,
        stuffed: bool,
    ) -> None:
        if self._ahead is not None and self._ahead != (sender, tuple(recipients)):
            self._drop()
        if self._smtp is None:
            self._smtp = self._open()
        options: list[str] = []
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            # As send_message does; smtplib refuses if the server does not offer SMTPUTF8.
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        try:
            if not options and self._smtp.has_extn("pipelining"):
                smtp, sent = self._smtp, self._ahead is not None
                self._ahead = None
                if not sent:
                    _send_envelope(smtp, sender, recipients)
                # Made ready while the server answers the envelope: a copy or two of the message.
                body = data if stuffed else _data_section(data)
                refused = _envelope_replies(smtp, sender, recipients)
                if before_data is not None:
                    before_data()
                following = _next_commands(then)
                smtp.send(body + following)
                if then is not None and following:
                    self._ahead = (then[0], tuple(then[1]))
                _message_reply(smtp)
            else:
                if before_data is not None:
                    before_data()
                if stuffed:
                    data = _unstuffed(data)  # sendmail stuffs it again
                refused = self._smtp.sendmail(sender, list(recipients), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            raise _refused(exc.recipients) from exc
        except smtplib.SMTPSenderRefused as exc:
            self._reset()
            failure = _failure(exc.smtp_code, _text(exc.smtp_error))
            # The server will not take mail from us at all: not this reader's doing.
            failure.sender_refused = True
            raise failure from exc
        except smtplib.SMTPDataError as exc:
            self._reset()
            raise _failure(exc.smtp_code, _text(exc.smtp_error)) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise _failure(exc.smtp_code, _text(exc.smtp_error)) from exc
        except smtplib.SMTPNotSupportedError as exc:
            # The server cannot carry this message at all (e.g. it needs SMTPUTF8).
            self._reset()
            raise PermanentFailure(f"{type(exc).__name__}: {exc}") from exc
        except smtplib.SMTPServerDisconnected as exc:
            self.close()
            raise _Disconnected(f"connection closed by the server: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Not the server's doing (what before_data raised, an interrupt): the session may be
            # in the middle of a message, so it is dropped without a word.
            self._drop()
            raise
        if refused:
            raise _refused(refused)

    def _reset(self) -> None:
        """After a refusal the connection is still good; RSET so it can carry the next one."""
        if self._ahead is not None:
            # The message was refused after its body, which ended its transaction; the next
            # one's envelope went with that body, and an RSET now would undo it.
            return
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        if self._ahead is not None:
            # A QUIT now could be read as the text of the message whose envelope went ahead.
            self._drop()
            return
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def _drop(self) -> None:
        """Close the connection without a word: an open transaction ends with no message."""
        smtp, self._smtp, self._ahead = self._smtp, None, None
        if smtp is not None:
            smtp.close()


def _send_envelope(smtp: smtplib.SMTP, sender: str, recipients: Sequence[str]) -> None:
    """MAIL, RCPT and DATA in one write, their replies read after (RFC 2920).

    Fewer round trips a message: on a kept-open connection to a busy relay, the waits for
    replies are most of the time a message takes.
    """
    smtp.send("".join(f"{line}\r\n" for line in _commands(sender, recipients)))


def _envelope_replies(
    smtp: smtplib.SMTP, sender: str, recipients: Sequence[str]
) -> dict[str, tuple[int, bytes]]:
    """Read the replies to a pipelined envelope; raises what smtplib's sendmail raises, so
    errors read the same; returns the recipients refused among several."""
    mail_code, mail_reply = _reply(smtp)
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in recipients:
        code, reply = _reply(smtp)
        if code not in (250, 251):
            refused[recipient] = (code, reply)
    data_code, data_reply = _reply(smtp)
    nothing_to_send = mail_code != 250 or len(refused) == len(recipients)
    if data_code == 354 and nothing_to_send:
        # The server took DATA although nobody can receive: end the empty message.
        smtp.send(".\r\n")
        _reply(smtp)
    if mail_code != 250:
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if len(refused) == len(recipients):
        raise smtplib.SMTPRecipientsRefused(refused)
    if data_code != 354:
        raise smtplib.SMTPDataError(data_code, data_reply)
    return refused


def _message_reply(smtp: smtplib.SMTP) -> None:
    """Read the server's answer to a message's body; raises unless it was accepted."""
    code, reply = _reply(smtp)
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)


def _next_commands(then: Envelope | None) -> bytes:
    """The pipelined envelope of the next message, or nothing when it cannot go ahead (it
    needs SMTPUTF8, or is no envelope at all: its own send will say why)."""
    if then is None:
        return b""
    sender, recipients = then
    if not (recipients and sender.isascii() and all(r.isascii() for r in recipients)):
        return b""
    try:
        return "".join(f"{line}\r\n" for line in _commands(sender, recipients)).encode("ascii")
    except PermanentFailure:
        return b""


# What ends a message after DATA: a line of one dot.
END_OF_DATA = b".\r\n"


def dot_stuffed(lines: bytes) -> bytes:
    """Whole lines (CRLF) as they go after DATA: one that starts with a dot gets a second
    one (RFC 5321 4.5.2), so no line of a message can end it early."""
    # Looked for first: a search is a small part of what replace costs on lines with none.
    if b"\r\n." in lines:
        lines = lines.replace(b"\r\n.", b"\r\n..")
    return b"." + lines if lines.startswith(b".") else lines


def _unstuffed(section: bytes) -> bytes:
    """The message of a DATA section again (`dot_stuffed` undone, END_OF_DATA taken off)."""
    data = section.removesuffix(END_OF_DATA).replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


def _data_section(data: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line ends, dot-stuffed, ended by a lone dot."""
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    body = dot_stuffed(data)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + END_OF_DATA


def _reply(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    code, reply = smtp.getreply()
    if code == 421:
        # The server is closing the connection: no further reply will come.
        smtp.close()
        raise smtplib.SMTPResponseException(code, reply)
    return code, reply


def _commands(sender: str, recipients: Sequence[str]) -> list[str]:
    for address in (sender, *recipients):
        if any(c in address for c in "\r\n<>"):
            raise PermanentFailure(f"not an address for the envelope: {address!r}")
    return [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _refused(recipients: dict[str, tuple[int, bytes]]) -> DeliveryError:
    code, reply = min(recipients.values())
    failure = _failure(code, _text(reply))
    # The server refused the address itself (RCPT): a 5xx here is a hard bounce.
    failure.recipient_refused = True
    return failure


def _failure(code: int, text: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentFailure(f"{code} {text}", code)
    return TemporaryFailure(f"{code} {text}", code)


def from_config(
    smtp_url: str | None, outbox_dir: str, *, signer: Signer | None = None
) -> Transport:
    """The transport configuration asks for: SMTP when a URL is set, else .eml files."""
    if smtp_url:
        return SMTPTransport.from_url(smtp_url, signer=signer)
    return FileTransport(outbox_dir, signer=signer)

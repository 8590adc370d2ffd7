"""How a finished message leaves: SMTP, .eml files, or memory (tests)."""

from __future__ import annotations

import smtplib
import ssl
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit


class DeliveryError(Exception):
    """The message was not accepted."""

    permanent = False

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


class Transport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


class MemoryTransport:
    """Keeps messages in a list; for tests."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


class FileTransport:
    """Writes each message as an .eml file, for development without a mail server."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._counter = 0
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._counter += 1
            counter = self._counter
        key = str(message["Message-ID"] or "").strip("<>").split("@")[0][:32] or str(counter)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = self.directory / f"{stamp}-{key}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(message.as_bytes())
        tmp.replace(path)  # readers of the folder never see half a file

    def close(self) -> None:
        pass


class SMTPTransport:
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
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.implicit_tls, self.starttls = implicit_tls, starttls
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._smtp: smtplib.SMTP | None = None

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

    def send(self, message: EmailMessage) -> None:
        reused = self._smtp is not None
        try:
            self._deliver(message)
        except _Disconnected:
            if not reused:
                raise
            # The server closed the kept-open connection while it idled: one fresh try.
            self._deliver(message)

    def _open(self) -> smtplib.SMTP:
        try:
            return self._connect()
        except (smtplib.SMTPException, OSError) as exc:
            # Nothing was said about a message yet: a wrong password (535), a failed STARTTLS
            # or a refusing greeting is for the operator to fix, so the mail waits.
            code = getattr(exc, "smtp_code", None)
            raise ConnectionFailure(f"{type(exc).__name__}: {exc}", code) from exc

    def _deliver(self, message: EmailMessage) -> None:
        if self._smtp is None:
            self._smtp = self._open()
        try:
            refused = self._smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            raise _refused(exc.recipients) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
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
        if refused:
            raise _refused(refused)

    def _reset(self) -> None:
        """After a refusal the connection is still good; RSET so it can carry the next one."""
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _refused(recipients: dict[str, tuple[int, bytes]]) -> DeliveryError:
    code, reply = min(recipients.values())
    return _failure(code, _text(reply))


def _failure(code: int, text: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentFailure(f"{code} {text}", code)
    return TemporaryFailure(f"{code} {text}", code)


def from_config(smtp_url: str | None, outbox_dir: str) -> Transport:
    """The transport configuration asks for: SMTP when a URL is set, else .eml files."""
    if smtp_url:
        return SMTPTransport.from_url(smtp_url)
    return FileTransport(outbox_dir)

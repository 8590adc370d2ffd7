"""Where returned mail comes in: an MTA's pipe, an mbox file, a Maildir, an IMAP mailbox.

Each source yields `Incoming` messages one at a time, as bytes, and forgets each before reading
the next, so memory stays the same however many messages wait. `Incoming.handled()` records,
where the source can, that a message was dealt with, so the next run does not deal with it again:
a Maildir message moves to cur/ with the Seen flag, an IMAP message gets \\Seen. A message read but
not marked stays where it was and comes again next time.
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import re
import ssl
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from newsletter.errors import UserError

_UID = re.compile(rb"\d+")


class SourceError(UserError):
    """The mail cannot be read from there."""

    message = "The returned mail could not be read."


def _nothing() -> None:
    """Nothing to record: the source keeps no state of its own."""


@dataclass(frozen=True)
class Incoming:
    """One message as it came in, and how to tell its source it was dealt with."""

    data: bytes
    name: str
    _handled: Callable[[], None] = field(default=_nothing, repr=False)

    def handled(self) -> None:
        """Record at the source that this message needs no more work."""
        self._handled()


class Source(ABC):
    """A place returned mail is read from; iterate it, then close it (or use `with`)."""

    @abstractmethod
    def __iter__(self) -> Iterator[Incoming]:
        """The messages waiting, one at a time."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the connection, if the source holds one."""

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class Stream(Source):
    """A single message on a binary stream, as an MTA's pipe transport hands it over.

    Nothing to mark: the MTA counts the message delivered when the command exits with 0.
    """

    def __init__(self, stream: BinaryIO, name: str = "stdin") -> None:
        self.stream = stream
        self.name = name

    def __iter__(self) -> Iterator[Incoming]:
        data = self.stream.read()
        if data:
            yield Incoming(data, self.name)

    def close(self) -> None:
        """The stream is its owner's to close."""


class Mbox(Source):
    """An mbox file, read from start to end one message at a time.

    An mbox is read as a batch (an export, an archive): it is not changed, so marking a message
    handled records nothing, and a second run reads every message again. Lines the writer
    escaped (">From ") are left as they are, as the `mailbox` module reads them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"There is no mbox file at {self.path}.")

    def __iter__(self) -> Iterator[Incoming]:
        with self.path.open("rb") as file:
            lines: list[bytes] = []
            number = 0
            started = False
            for line in file:
                if line.startswith(b"From "):
                    if started:
                        number += 1
                        yield Incoming(_mbox_message(lines), f"{self.path.name}:{number}")
                    lines = []
                    started = True
                elif started:
                    lines.append(line)
            if started:
                yield Incoming(_mbox_message(lines), f"{self.path.name}:{number + 1}")

    def close(self) -> None:
        """The file is open only while it is being read."""


def _mbox_message(lines: list[bytes]) -> bytes:
    """A message's lines without the blank line the mbox writer put after it."""
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(lines)


class Maildir(Source):
    """A Maildir: new messages, and those in cur/ not yet Seen; handled ones go to cur/ as Seen.

    Its folders are listed as they are read (os.scandir), not into a table of every message
    first as `mailbox.Maildir` does, so a folder of a million messages costs no more memory
    than one of ten. Names and flags follow the Maildir rules the `mailbox` module writes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            mailbox.Maildir(self.path, create=False)
        except mailbox.NoSuchMailboxError:
            raise SourceError(f"There is no Maildir at {self.path}.") from None
        if not all((self.path / folder).is_dir() for folder in ("new", "cur", "tmp")):
            raise SourceError(f"{self.path} is not a Maildir (it needs new/, cur/ and tmp/).")

    def __iter__(self) -> Iterator[Incoming]:
        cur = os.path.join(self.path, "cur")
        for folder in ("new", "cur"):
            with os.scandir(os.path.join(self.path, folder)) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    if folder == "cur" and "S" in _flags(entry.name):
                        continue
                    try:
                        with open(entry.path, "rb") as file:
                            data = file.read()
                    except FileNotFoundError:
                        # Another reader took it between the listing and now.
                        continue
                    seen = _Seen(entry.path, cur, entry.name)
                    yield Incoming(data, f"{folder}/{entry.name}", seen)

    def close(self) -> None:
        """Each message file is open only while it is read."""


def _flags(name: str) -> str:
    """The flags of a Maildir file name ("…:2,FS" has F and S)."""
    info = name.rpartition(mailbox.Maildir.colon)[2] if mailbox.Maildir.colon in name else ""
    return info[2:] if info.startswith("2,") else ""


@dataclass(frozen=True)
class _Seen:
    """Move one Maildir message to cur/ with the Seen flag added to those it has."""

    # Plain strings, not Path objects: joined once per message, for a cheap rename.
    path: str
    cur: str
    name: str

    def __call__(self) -> None:
        colon = mailbox.Maildir.colon
        unique = self.name.partition(colon)[0] if colon in self.name else self.name
        flags = "".join(sorted(set(_flags(self.name)) | {"S"}))
        try:
            os.rename(self.path, f"{self.cur}{os.sep}{unique}{colon}2,{flags}")
        except FileNotFoundError:
            # Another reader handled it first.
            pass


class Imap(Source):
    """An IMAP mailbox: unseen messages are read without being marked; handled ones get \\Seen.

    `imap://user:pass@host:port/MAILBOX` (port 143, `?starttls=1` to upgrade) or `imaps://…`
    (TLS from the start, port 993); the user and password percent-encoded, the mailbox INBOX
    when the path is empty.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        folder: str = "INBOX",
        *,
        implicit_tls: bool = False,
        starttls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not folder.isascii():
            raise SourceError(f"The IMAP mailbox name must be ASCII: {folder!r}.")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.folder = folder
        self.implicit_tls = implicit_tls
        self.starttls = starttls
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._imap: imaplib.IMAP4 | None = None

    @classmethod
    def from_url(cls, url: str, **options: object) -> Imap:
        """imap://user:pass@host:port/MAILBOX, imaps://…, ?starttls=1."""
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps"):
            raise SourceError(f"An IMAP URL starts with imap:// or imaps://, not {parts.scheme}:.")
        if not parts.hostname or not parts.username:
            raise SourceError("An IMAP URL needs a user and a host: imap://user:pass@host/INBOX.")
        implicit = parts.scheme == "imaps"
        query = parse_qs(parts.query)
        return cls(
            parts.hostname,
            parts.port or (993 if implicit else 143),
            unquote(parts.username),
            unquote(parts.password or ""),
            unquote(parts.path.lstrip("/")) or "INBOX",
            implicit_tls=implicit,
            starttls=query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
            **options,  # type: ignore[arg-type]
        )

    def _connect(self) -> imaplib.IMAP4:
        context = self.ssl_context or ssl.create_default_context()
        where = f"{self.host}:{self.port}"
        try:
            imap: imaplib.IMAP4
            if self.implicit_tls:
                imap = imaplib.IMAP4_SSL(
                    self.host, self.port, ssl_context=context, timeout=self.timeout
                )
            else:
                imap = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise SourceError(f"Cannot reach the IMAP server {where}: {exc}") from exc
        try:
            if self.starttls:
                imap.starttls(context)
            imap.login(self.username, self.password)
            status, reply = imap.select(_quoted(self.folder))
            if status != "OK":
                raise SourceError(
                    f"The IMAP server {where} has no mailbox {self.folder!r}: {_said(reply)}"
                )
        except (OSError, imaplib.IMAP4.error) as exc:
            imap.shutdown()
            raise SourceError(f"The IMAP server {where} refused us: {exc}") from exc
        except BaseException:
            imap.shutdown()
            raise
        return imap

    def __iter__(self) -> Iterator[Incoming]:
        imap = self._imap = self._imap or self._connect()
        try:
            status, reply = imap.uid("SEARCH", "UNSEEN")
            if status != "OK":
                raise SourceError(f"The IMAP search failed: {_said(reply)}")
            found = reply[0] if reply and isinstance(reply[0], bytes) else b""
            # The answer is one line of numbers; read it number by number rather than as a list.
            for match in _UID.finditer(found):
                uid = match.group().decode()
                status, reply = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                data = _body(reply) if status == "OK" else None
                if data is None:
                    # Expunged by someone else since the search.
                    continue
                yield Incoming(data, f"imap:{self.folder}:{uid}", _Flag(imap, uid))
        except (OSError, imaplib.IMAP4.error) as exc:
            self.close()
            raise SourceError(f"The IMAP connection failed: {exc}") from exc

    def close(self) -> None:
        imap, self._imap = self._imap, None
        if imap is None:
            return
        try:
            imap.close()
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            imap.shutdown()


@dataclass(frozen=True)
class _Flag:
    """Set \\Seen on one message, by UID."""

    imap: imaplib.IMAP4
    uid: str

    def __call__(self) -> None:
        try:
            status, reply = self.imap.uid("STORE", self.uid, "+FLAGS.SILENT", r"(\Seen)")
        except (OSError, imaplib.IMAP4.error) as exc:
            raise SourceError(f"The IMAP server did not mark message {self.uid}: {exc}") from exc
        if status != "OK":
            raise SourceError(f"The IMAP server did not mark message {self.uid}: {_said(reply)}")


def _body(reply: list[object]) -> bytes | None:
    """The message of a FETCH BODY[] reply: the literal that follows the response line."""
    for item in reply:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
            return item[1]
    return None


def _quoted(name: str) -> str:
    """A mailbox name as an IMAP quoted string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _said(reply: list[object]) -> str:
    """What the server said, for a message to a person."""
    return " ".join(
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in reply
    )


def open_source(
    location: str, *, stdin: BinaryIO | None = None, ssl_context: ssl.SSLContext | None = None
) -> Source:
    """The source a location names: "-" for standard input, an IMAP URL, a Maildir, an mbox."""
    if location == "-":
        return Stream(stdin or sys.stdin.buffer)
    if location.startswith(("imap://", "imaps://")):
        return Imap.from_url(location, ssl_context=ssl_context)
    path = Path(location)
    if path.is_dir():
        return Maildir(path)
    if path.is_file():
        return Mbox(path)
    raise SourceError(f"There is no mbox file or Maildir at {location}.")

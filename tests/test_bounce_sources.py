"""Returned mail is read from a pipe, an mbox, a Maildir and a real IMAP server (Dovecot)."""

from __future__ import annotations

import io
import mailbox
import os
from pathlib import Path

import pytest

from newsletter.bounces.parse import Kind, parse
from newsletter.bounces.sources import (
    Imap,
    Maildir,
    Mbox,
    SourceError,
    Stream,
    open_source,
)

from dovecot_server import HOST, USER, Dovecot, append, unseen
from smtp_server import free_port

CORPUS = Path(__file__).parent / "data" / "bounces"


def sample(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


HARD = sample("postfix-hard.eml")
SOFT = sample("postfix-soft-delayed.eml")
COMPLAINT = sample("arf-yahoo-complaint.eml")
REPLY = sample("reader-reply.eml")


def kinds(datas: list[bytes]) -> list[Kind]:
    return [parse(data, bounce_address=USER).kind for data in datas]


def test_stream_gives_the_one_message_on_it() -> None:
    with Stream(io.BytesIO(HARD)) as source:
        messages = list(source)
    assert [m.data for m in messages] == [HARD]
    messages[0].handled()
    assert list(Stream(io.BytesIO(b""))) == []


def test_open_source_reads_a_dash_as_standard_input() -> None:
    source = open_source("-", stdin=io.BytesIO(SOFT))
    assert isinstance(source, Stream)
    assert [m.data for m in source] == [SOFT]


def test_mbox_gives_each_message_once_whole(tmp_path: Path) -> None:
    path = tmp_path / "returned.mbox"
    box = mailbox.mbox(path)
    # A body line starting with "From " is escaped by the writer and must not split a message.
    tricky = REPLY.replace(b"Andriy\n", b"From the reader, Andriy\n")
    for data in (HARD, tricky, COMPLAINT):
        box.add(data)
    box.close()
    with open_source(str(path)) as source:
        assert isinstance(source, Mbox)
        messages = list(source)
    assert kinds([m.data for m in messages]) == [Kind.HARD, Kind.OTHER, Kind.COMPLAINT]
    assert b">From the reader, Andriy" in messages[1].data
    assert messages[0].data.rstrip(b"\n") == HARD.rstrip(b"\n")
    assert [m.name for m in messages] == ["returned.mbox:1", "returned.mbox:2", "returned.mbox:3"]


def test_mbox_that_is_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no mbox file"):
        Mbox(tmp_path / "nothing.mbox")
    (tmp_path / "empty.mbox").write_bytes(b"")
    assert list(Mbox(tmp_path / "empty.mbox")) == []


def make_maildir(path: Path) -> mailbox.Maildir:
    return mailbox.Maildir(path, create=True)


def test_maildir_handles_new_and_unseen_messages_once(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir")
    box.add(HARD)
    box.add(SOFT)
    seen = mailbox.MaildirMessage(COMPLAINT)
    seen.set_subdir("cur")
    seen.set_flags("S")
    box.add(seen)
    flagged = mailbox.MaildirMessage(REPLY)
    flagged.set_subdir("cur")
    flagged.set_flags("F")
    box.add(flagged)

    with open_source(str(tmp_path / "Maildir")) as source:
        assert isinstance(source, Maildir)
        first = list(source)
    # The one already Seen is not read; the flagged one in cur/ is.
    assert sorted(kinds([m.data for m in first])) == sorted([Kind.HARD, Kind.SOFT, Kind.OTHER])
    for message in first:
        if parse(message.data).kind is not Kind.SOFT:
            message.handled()

    again = list(Maildir(tmp_path / "Maildir"))
    assert kinds([m.data for m in again]) == [Kind.SOFT]
    assert again[0].name.startswith("new/")
    again[0].handled()
    assert list(Maildir(tmp_path / "Maildir")) == []

    # Every message is now in cur/ with S, and keeps the flags it had.
    box = mailbox.Maildir(tmp_path / "Maildir", create=False)
    flags = sorted(message.get_flags() for message in box)
    assert flags == ["FS", "S", "S", "S"]
    assert all(message.get_subdir() == "cur" for message in box)
    assert not os.listdir(tmp_path / "Maildir" / "new")


def test_maildir_message_handled_by_someone_else_meanwhile(tmp_path: Path) -> None:
    box = make_maildir(tmp_path / "Maildir")
    key = box.add(HARD)
    messages = iter(Maildir(tmp_path / "Maildir"))
    message = next(messages)
    box.remove(key)
    message.handled()
    assert list(messages) == []


def test_maildir_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no Maildir"):
        Maildir(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="needs new/, cur/ and tmp/"):
        Maildir(tmp_path / "plain")
    with pytest.raises(SourceError, match="no mbox file or Maildir"):
        open_source(str(tmp_path / "missing"))


def test_imap_reads_unseen_messages_and_marks_only_those_handled(
    dovecot: Dovecot, folder: str
) -> None:
    append(dovecot, folder, HARD)
    append(dovecot, folder, COMPLAINT, r"(\Seen)")
    append(dovecot, folder, SOFT)
    append(dovecot, folder, REPLY)

    with open_source(dovecot.url(folder)) as source:
        assert isinstance(source, Imap)
        messages = list(source)
        assert kinds([m.data for m in messages]) == [Kind.HARD, Kind.SOFT, Kind.OTHER]
        # Reading is not handling: nothing is marked until the caller says so.
        assert unseen(dovecot, folder) == 3
        messages[0].handled()
        messages[2].handled()
    assert unseen(dovecot, folder) == 1

    with Imap.from_url(dovecot.url(folder)) as source:
        again = list(source)
    assert kinds([m.data for m in again]) == [Kind.SOFT]
    assert again[0].data.replace(b"\r\n", b"\n") == SOFT


def test_imaps_with_the_servers_certificate(dovecot: Dovecot, folder: str) -> None:
    append(dovecot, folder, HARD)
    url = dovecot.url(folder, scheme="imaps")
    with Imap.from_url(url, ssl_context=dovecot.client_tls) as source:
        messages = list(source)
        messages[0].handled()
    assert kinds([m.data for m in messages]) == [Kind.HARD]
    assert unseen(dovecot, folder) == 0
    with pytest.raises(SourceError, match="Cannot reach|refused"):
        # Our default context does not trust a self-signed certificate.
        list(Imap.from_url(url))


def test_imap_starttls(dovecot: Dovecot, folder: str) -> None:
    append(dovecot, folder, SOFT)
    url = dovecot.url(folder) + "?starttls=1"
    with Imap.from_url(url, ssl_context=dovecot.client_tls) as source:
        assert kinds([m.data for m in source]) == [Kind.SOFT]


def test_imap_refusals_are_clear(dovecot: Dovecot) -> None:
    with pytest.raises(SourceError, match="has no mailbox 'Nowhere'"):
        list(Imap.from_url(dovecot.url("Nowhere")))
    # Last: Dovecot slows down the next logins from an address that failed one.
    with pytest.raises(SourceError, match="refused us"):
        list(Imap.from_url(dovecot.url(password="wrong")))
    with pytest.raises(SourceError, match="Cannot reach"):
        list(Imap.from_url(f"imap://u:p@{HOST}:{free_port()}/INBOX", timeout=2))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("pop3://u:p@host/INBOX", "starts with imap://"),
        ("imap://host/INBOX", "needs a user and a host"),
        ("imap://u:p@host/Boîte", "must be ASCII"),
    ],
    ids=["scheme", "no-user", "non-ascii-mailbox"],
)
def test_imap_url_mistakes(url: str, words: str) -> None:
    with pytest.raises(SourceError, match=words):
        Imap.from_url(url)


def test_imap_url_defaults() -> None:
    plain = Imap.from_url("imap://reader%40example.org:s%3Acret@mail.example.org")
    assert (plain.host, plain.port, plain.username, plain.password, plain.folder) == (
        "mail.example.org",
        143,
        "reader@example.org",
        "s:cret",
        "INBOX",
    )
    assert not plain.implicit_tls and not plain.starttls
    tls = Imap.from_url("imaps://u:p@mail.example.org/Returned%20mail")
    assert (tls.port, tls.folder, tls.implicit_tls) == (993, "Returned mail", True)

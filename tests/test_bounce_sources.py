"""Returned mail is read from a pipe, an mbox, a Maildir and a real IMAP server (Dovecot)."""

from __future__ import annotations

import datetime
import grp
import imaplib
import io
import ipaddress
import mailbox
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from newsletter.bounces.parse import Kind, parse
from newsletter.bounces.sources import (
    Imap,
    Maildir,
    Mbox,
    SourceError,
    Stream,
    open_source,
)

from smtp_server import free_port

CORPUS = Path(__file__).parent / "data" / "bounces"
DOVECOT = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
USER = "bounces@news.example.org"
# Characters that must be percent-encoded in a URL (a passwd-file forbids ":").
PASSWORD = "p@ss/w rd#?&"


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


@dataclass(frozen=True)
class Dovecot:
    port: int
    tls_port: int
    client_tls: ssl.SSLContext

    def url(self, folder: str = "INBOX", *, scheme: str = "imap", password: str = PASSWORD) -> str:
        port = self.tls_port if scheme == "imaps" else self.port
        credentials = f"{quote(USER, safe='')}:{quote(password, safe='')}"
        return f"{scheme}://{credentials}@{HOST}:{port}/{quote(folder)}"

    def connect(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4(HOST, self.port, timeout=10)
        imap.login(USER, PASSWORD)
        return imap


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, for Dovecot's IMAPS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    address = x509.IPAddress(ipaddress.ip_address(HOST))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([address]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def dovecot_config(folder: Path, port: int, tls_port: int, cert: Path, key: Path) -> Path:
    """A Dovecot of our own: its own folders, one passwd-file user, Maildir in the folder."""
    me = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        # Dovecot serves no mail as root: the mail belongs to nobody, and Dovecot's own
        # processes run as the users Debian's package made for them.
        mail_user = pwd.getpwnam("nobody")
        users = ""
    else:
        mail_user = me
        users = (
            f"default_internal_user = {me.pw_name}\n"
            f"default_internal_group = {grp.getgrgid(me.pw_gid).gr_name}\n"
            f"default_login_user = {me.pw_name}\n"
        )
    home = folder / "home"
    home.mkdir()
    os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
    passwd = folder / "passwd"
    passwd.write_text(
        f"{USER}:{{PLAIN}}{PASSWORD}:{mail_user.pw_uid}:{mail_user.pw_gid}::{home}::\n"
    )
    config = folder / "dovecot.conf"
    config.write_text(
        f"""
base_dir = {folder}/run
state_dir = {folder}/state
instance_name = newsletter-test-{port}
protocols = imap
listen = {HOST}
{users}first_valid_uid = {min(mail_user.pw_uid, 500)}
log_path = {folder}/dovecot.log
info_log_path = {folder}/dovecot.log
mail_location = maildir:~/Maildir
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
"""
    )
    return config


def wait_for(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    output = log.read_text() if log.exists() else ""
    raise RuntimeError(f"Dovecot did not start:\n{output}")


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """A real Dovecot on 127.0.0.1, in a folder of its own, stopped at the end of the module."""
    if not DOVECOT.exists():
        pytest.skip("Dovecot is not installed: apt-get install dovecot-imapd")
    # Under /tmp rather than pytest's private folder: Dovecot's unprivileged processes must
    # reach their sockets and the mail user its home.
    folder = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    folder.chmod(0o755)
    server = None
    try:
        cert, key = make_certificate(folder)
        port, tls_port = free_port(), free_port()
        config = dovecot_config(folder, port, tls_port, cert, key)
        server = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for(port, server, folder / "dovecot.log")
        wait_for(tls_port, server, folder / "dovecot.log")
        yield Dovecot(port, tls_port, ssl.create_default_context(cafile=str(cert)))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def folder(dovecot: Dovecot, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty mailbox of its own for each test."""
    name = "Bounces " + request.node.name.replace("[", "-").replace("]", "")
    imap = dovecot.connect()
    assert imap.create(f'"{name}"')[0] == "OK"
    imap.logout()
    yield name
    imap = dovecot.connect()
    imap.delete(f'"{name}"')
    imap.logout()


def append(dovecot: Dovecot, folder: str, data: bytes, flags: str = "") -> None:
    imap = dovecot.connect()
    status, reply = imap.append(f'"{folder}"', flags or None, None, data.replace(b"\n", b"\r\n"))
    assert status == "OK", reply
    imap.logout()


def unseen(dovecot: Dovecot, folder: str) -> int:
    imap = dovecot.connect()
    imap.select(f'"{folder}"', readonly=True)
    count = len(imap.uid("SEARCH", "UNSEEN")[1][0].split())
    imap.logout()
    return count


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

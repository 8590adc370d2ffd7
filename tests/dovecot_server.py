"""A real Dovecot IMAP server from Debian on 127.0.0.1, for the tests that read returned mail."""

from __future__ import annotations

import datetime
import grp
import imaplib
import ipaddress
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

from smtp_server import free_port

DOVECOT = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
USER = "bounces@news.example.org"
# Characters that must be percent-encoded in a URL (a passwd-file forbids ":").
PASSWORD = "p@ss/w rd#?&"


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

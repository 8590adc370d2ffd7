"""DKIM: signatures dkimpy verifies, keys, settings, the CLI, and signed mail from the worker."""

from __future__ import annotations

import base64
import random
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import dkim as dkimpy
import pytest
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dkim.canonicalization import Relaxed
from dkim.util import parse_tag_value

from newsletter import create_app
from newsletter.cli import dkim_group, worker
from newsletter.config import ConfigError
from newsletter.mail import compose, transport
from newsletter.mail.dkim import (
    DKIMConfigError,
    Signer,
    SigningError,
    generate,
    relaxed_body,
    txt_strings,
)
from newsletter.mail.transport import FileTransport, MemoryTransport
from newsletter.worker import build as build_worker

from factories import links, make_config, signup
from smtp_server import SMTPServer

DOMAIN = "news.example.org"


@dataclass(frozen=True)
class Key:
    """A generated key, its file, and the DNS record that publishes it."""

    algorithm: str
    selector: str
    pem: bytes
    path: Path
    dns_name: str
    txt: str

    def config(self) -> dict[str, object]:
        return {
            "DKIM_PRIVATE_KEY": str(self.path),
            "DKIM_SELECTOR": self.selector,
            "DKIM_DOMAIN": DOMAIN,
        }

    def signer(self) -> Signer:
        return Signer.from_pem(self.pem, self.selector, DOMAIN)


def dns_for(*records: tuple[str, str]) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy answering these (name, TXT value) pairs and nothing else."""
    table = {f"{name}.".encode(): value.encode() for name, value in records}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return table.get(name)

    return lookup


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Key:
    """An RSA-2048 key, then an Ed25519 key, each written to a file."""
    selector = f"test-{request.param}"
    pem, name, txt = generate(selector, DOMAIN, request.param)
    path = tmp_path_factory.mktemp("dkim") / f"{selector}.pem"
    path.write_bytes(pem)
    return Key(request.param, selector, pem, path, name, txt)


def verify(data: bytes, key: Key) -> bool:
    return bool(dkimpy.verify(data, dnsfunc=dns_for((key.dns_name, key.txt))))


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A list mail of some 20 KB as the app sends it, with the RFC 8058 headers."""
    app = create_app(make_config("sqlite://", tmp_path_factory.mktemp("mail-app")))
    with app.app_context():
        message = compose.build(
            to="reader@example.com",
            from_="Daily Desk <daily@news.example.org>",
            subject="Welcome to Daily Briefing",
            text="Hello  reader \n" + "A line of the welcome text.\n" * 400,
            html="<p>Hello reader</p>\n" + "<p>A line of the welcome text.</p>\n" * 300,
            message_key="key1",
            reply_to="desk@news.example.org",
            headers={
                "List-Id": "Daily Briefing <daily.news.example.org>",
                "List-Unsubscribe": "<https://news.example.org/unsubscribe/" + "t" * 120 + ">",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
    return transport.serialise(message)


def signature_tags(data: bytes) -> dict[bytes, bytes]:
    """The tags of the first DKIM-Signature header of a message."""
    headers, _ = dkimpy.rfc822_parse(data)
    [value] = [v for name, v in headers if name.lower() == b"dkim-signature"][:1]
    return parse_tag_value(value)


def signed_names(data: bytes) -> list[bytes]:
    return re.split(rb"\s*:\s*", signature_tags(data)[b"h"])


# --- Signatures -------------------------------------------------------------------------------


def test_signed_mail_verifies_and_covers_the_list_headers(key, mail):
    signed = key.signer().sign(mail) + mail

    assert verify(signed, key)
    tags = signature_tags(signed)
    assert tags[b"a"] == f"{key.algorithm}-sha256".encode()
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"]) == (DOMAIN.encode(), key.selector.encode())
    names = set(signed_names(signed))
    assert {b"list-unsubscribe", b"list-unsubscribe-post"} <= names
    assert names == {
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"reply-to",
        b"list-id",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        b"mime-version",
        b"content-type",
    }


def test_header_lines_stay_short(key, mail):
    header = key.signer().sign(mail)
    assert header.startswith(b"DKIM-Signature: v=1; ") and header.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_only_the_headers_present_are_signed(key, mail):
    without = re.sub(rb"Reply-To: [^\r]*\r\n", b"", mail)
    signed = key.signer().sign(without) + without
    assert verify(signed, key)
    assert b"reply-to" not in signed_names(signed)


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)

    return change


@pytest.mark.parametrize(
    "tamper",
    [
        _replace(b"Subject: Welcome to Daily", b"Subject: Welcome to Nightly"),
        _replace(b"unsubscribe/ttt", b"unsubscribe/evil"),
        _replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"),
        _replace(b"A line of the welcome text.", b"A line of the altered text."),
        lambda data: data + b"Appended\r\n",
        # Oversigning: a second List-Unsubscribe added on the way is not taken as signed.
        _replace(b"\r\nList-Id:", b"\r\nList-Unsubscribe: <https://evil.example/>\r\nList-Id:"),
    ],
    ids=["subject", "list-unsubscribe", "list-unsubscribe-post", "body", "appended", "added"],
)
def test_any_change_to_a_signed_part_breaks_the_signature(key, mail, tamper):
    signed = key.signer().sign(mail) + mail
    assert not verify(tamper(signed), key)


def test_what_relaxed_canonicalisation_allows_still_verifies(key, mail):
    signed = key.signer().sign(mail) + mail
    # A relay that re-folds a header, pads white space and adds blank lines at the end.
    relayed = signed.replace(b"Subject: Welcome to", b"Subject:  Welcome\r\n\tto") + b"\r\n\r\n"
    assert verify(relayed, key)


def test_body_hash_is_the_one_dkimpy_computes(mail):
    pem, name, txt = generate("compare", DOMAIN, "rsa")
    theirs = dkimpy.sign(
        mail, b"compare", DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed")
    )
    ours = Signer.from_pem(pem, "compare", DOMAIN).sign(mail)
    assert parse_tag_value(ours[15:])[b"bh"] == parse_tag_value(theirs[15:])[b"bh"]
    assert dkimpy.verify(ours + mail, dnsfunc=dns_for((name, txt)))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"a\r\n",
        b"a  b   c \r\n  \r\n",
        b"a  b\t\tc \r\n",
        b" \t \r\n\r\n",
        b"end  ",
    ],
    ids=["empty", "crlf", "blank-lines", "plain", "spaces", "tabs", "white-lines", "no-crlf"],
)
def test_relaxed_body_is_what_dkimpy_makes(body):
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("tabs", [False, True], ids=["spaces", "tabs"])
def test_relaxed_body_agrees_with_dkimpy_on_many_bodies(tabs):
    pick = random.Random(8463).choice
    pieces = [b"a", b"b", b" ", b"  ", b"\r\n", b"\r\n\r\n", b"\n", b"."] + [b"\t"] * tabs
    for _ in range(5000):
        body = b"".join(pick(pieces) for _ in range(pick(range(14))))
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_a_body_hashed_once_signs_many_header_blocks(key, mail):
    signer = key.signer()
    head, _, body = mail.partition(b"\r\n\r\n")
    body_hash = signer.body_hash(body)
    for reader in ("one@example.com", "two@example.com"):
        headers = head.replace(b"To: reader@example.com", f"To: {reader}".encode())
        data = headers + b"\r\n\r\n" + body
        assert verify(signer.sign_with_body_hash(headers, body_hash) + data, key)


def test_a_message_without_from_cannot_be_signed(key, mail):
    without = re.sub(rb"From: [^\r]*\r\n", b"", mail)
    with pytest.raises(SigningError, match="From"):
        key.signer().sign(without)


def test_transports_with_a_signer_send_signed_mail(key, mail, tmp_path):
    built = message_from_bytes(mail, policy=compose.POLICY)

    memory = MemoryTransport(signer=key.signer())
    memory.send(built)
    [raw] = memory.raw
    assert raw.startswith(b"DKIM-Signature: ") and verify(raw, key)
    assert memory.messages[0]["DKIM-Signature"] is not None

    files = FileTransport(tmp_path, signer=key.signer())
    files.send(built)
    [path] = tmp_path.glob("*.eml")
    assert verify(path.read_bytes(), key)


# --- Keys and configuration -------------------------------------------------------------------


def test_generated_records_publish_the_public_key(key):
    assert key.dns_name == f"{key.selector}._domainkey.{DOMAIN}"
    tags = parse_tag_value(key.txt.encode())
    assert tags[b"v"] == b"DKIM1" and tags[b"k"] == key.algorithm.encode()
    public = base64.b64decode(tags[b"p"])
    private = serialization.load_pem_private_key(key.pem, password=None)
    if key.algorithm == "rsa":
        assert private.key_size == 2048  # type: ignore[union-attr]
        assert serialization.load_der_public_key(public) == private.public_key()
    else:
        assert public == private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )


def test_txt_values_are_cut_into_dns_strings():
    assert txt_strings("x" * 600) == ["x" * 255, "x" * 255, "x" * 90]
    assert txt_strings("short") == ["short"]


def test_no_settings_means_no_signer():
    assert Signer.from_config({}) is None
    assert Signer.from_config({"DKIM_PRIVATE_KEY": "", "DKIM_SELECTOR": None}) is None


@pytest.fixture(scope="module")
def bad_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that are not usable DKIM keys."""
    folder = tmp_path_factory.mktemp("bad-keys")
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files = {"ec": ec_key, "garbage": b"not a key\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(content)
    paths["missing"] = folder / "missing.pem"
    return paths


@pytest.mark.parametrize(
    ("key_file", "selector", "domain", "message"),
    [
        ("", "s1", "", "missing: NEWSLETTER_DKIM_PRIVATE_KEY, NEWSLETTER_DKIM_DOMAIN"),
        ("valid", "s1", "", "missing: NEWSLETTER_DKIM_DOMAIN"),
        ("missing", "s1", DOMAIN, "cannot read .*missing.pem"),
        ("garbage", "s1", DOMAIN, "not an unencrypted PEM private key"),
        ("ec", "s1", DOMAIN, r"EC \(secp256r1\) key cannot sign DKIM; use RSA"),
        ("valid", "s 1", DOMAIN, "invalid DKIM selector"),
    ],
    ids=["selector-only", "no-domain", "unreadable", "garbage", "ec-key", "bad-selector"],
)
def test_unusable_settings_stop_the_app_with_a_clear_message(
    key_file, selector, domain, message, bad_keys, key, tmp_path
):
    files = {**bad_keys, "valid": key.path, "": ""}
    config = {
        "DKIM_PRIVATE_KEY": str(files[key_file]),
        "DKIM_SELECTOR": selector,
        "DKIM_DOMAIN": domain,
    }

    with pytest.raises(DKIMConfigError, match=message):
        Signer.from_config(config)
    with pytest.raises(ConfigError, match=message):
        create_app(make_config("sqlite://", tmp_path / "instance", **config))


def test_a_complete_configuration_starts_the_app(key, tmp_path):
    app = create_app(make_config("sqlite://", tmp_path / "instance", **key.config()))
    signer = Signer.from_config(app.config)
    assert signer is not None and signer.algorithm == f"{key.algorithm}-sha256"


# --- `newsletter dkim generate` ---------------------------------------------------------------


@pytest.fixture
def run_dkim(runner) -> Callable[..., Result]:  # type: ignore[no-untyped-def]
    return lambda *args: runner.invoke(dkim_group, ["generate", *args])


def published(output: str) -> tuple[str, str]:
    """The record's name and value as the command printed them (the value's strings joined)."""
    name = re.search(r"name:\s+(\S+)", output)
    value = re.search(r"value:\s+(.+)", output)
    assert name and value, output
    strings = re.findall(r'"([^"]*)"', value.group(1))
    assert strings and all(len(s) <= 255 for s in strings)
    return name.group(1), "".join(strings)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate_writes_a_private_key_and_prints_what_to_publish(app, run_dkim, mail, algorithm):
    result = run_dkim("--selector", "news1", "--domain", DOMAIN, "--algorithm", algorithm)

    assert result.exit_code == 0, result.output
    path = Path(app.instance_path) / "dkim-news1.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    name, value = published(result.output)
    assert name == f"news1._domainkey.{DOMAIN}"
    assert f"k={algorithm};" in value
    if algorithm == "rsa":
        assert len(re.findall(r'"[^"]*"', result.output)) == 2  # one string cannot hold it
    assert f"NEWSLETTER_DKIM_PRIVATE_KEY={path}\n" in result.output
    assert "NEWSLETTER_DKIM_SELECTOR=news1\n" in result.output
    assert f"NEWSLETTER_DKIM_DOMAIN={DOMAIN}\n" in result.output

    signer = Signer.from_config(
        {"DKIM_PRIVATE_KEY": str(path), "DKIM_SELECTOR": "news1", "DKIM_DOMAIN": DOMAIN}
    )
    assert signer is not None
    assert dkimpy.verify(signer.sign(mail) + mail, dnsfunc=dns_for((name, value)))


def test_generate_refuses_to_overwrite_a_key_without_force(run_dkim, tmp_path):
    out = tmp_path / "keys" / "s1.pem"
    assert run_dkim("--selector", "s1", "--domain", DOMAIN, "--out", str(out)).exit_code == 0
    first = out.read_bytes()

    refused = run_dkim("--selector", "s1", "--domain", DOMAIN, "--out", str(out))
    assert refused.exit_code == 1
    assert "exists; use --force" in refused.output
    assert out.read_bytes() == first

    forced = run_dkim("--selector", "s1", "--domain", DOMAIN, "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != first
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["s1.pem"]  # no temporary file left


def test_generate_refuses_a_bad_domain(run_dkim, tmp_path):
    result = run_dkim("--selector", "s1", "--domain", "not a domain", "--out", str(tmp_path / "k"))
    assert result.exit_code == 2
    assert "invalid DKIM domain" in result.output
    assert not (tmp_path / "k").exists()


# --- Mail from the worker ---------------------------------------------------------------------


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, object]:
    """Parametrize with "signing": the app sends to the test SMTP server and signs with `key`."""
    if getattr(request, "param", None) != "signing":
        return {}
    smtp: SMTPServer = request.getfixturevalue("smtp")
    key: Key = request.getfixturevalue("key")
    return {"SMTP_URL": smtp.url, **key.config()}


@pytest.fixture
def kept(smtp: SMTPServer) -> list[bytes]:
    """The bytes of each message the server accepts, as they came after DATA."""
    found: list[bytes] = []
    handle_data = smtp.handler.handle_DATA

    async def keeping(server, session, envelope):  # type: ignore[no-untyped-def]
        reply = await handle_data(server, session, envelope)
        if reply.startswith("250"):
            found.append(envelope.content)
        return reply

    # aiosmtpd looks its hooks up on each new connection, after this.
    smtp.handler.handle_DATA = keeping  # type: ignore[method-assign]
    return found


@pytest.fixture
def run_worker(runner) -> Iterator[Callable[..., Result]]:  # type: ignore[no-untyped-def]
    """Invoke `newsletter worker`; puts back the signal handlers the command installs."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield lambda *args: runner.invoke(worker, list(args))
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("app_config", ["signing"], indirect=True)
def test_worker_sends_the_confirmation_dkim_signed(
    client, newsletters, smtp, kept, key, run_worker
):
    signup(client, "reader@example.com", "daily")

    result = run_worker("--drain")

    assert result.exit_code == 0, result.output
    [data] = kept
    assert data.startswith(b"DKIM-Signature: ")
    assert verify(data, key)
    assert smtp.received[0].message["Subject"].startswith("Please confirm")


@pytest.mark.parametrize("app_config", ["signing"], indirect=True)
def test_welcome_mail_is_signed_over_its_list_headers(
    app, client, db, newsletters, smtp, kept, key
):
    cfg = app.config
    mailer = transport.from_config(
        cfg["SMTP_URL"], cfg["OUTBOX_DIR"], signer=Signer.from_config(cfg)
    )
    signup(client, "reader@example.com", "daily")
    build_worker(cfg, lambda: db.session, mail=mailer, kinds=["outbox"]).run(drain=True)
    [confirm] = links(smtp.received[0].message, "/confirm/")
    client.post(confirm)

    build_worker(cfg, lambda: db.session, mail=mailer, kinds=["outbox"]).run(drain=True)

    welcome = kept[-1]
    assert smtp.received[-1].message["Subject"] == "Welcome to Daily Briefing"
    assert verify(welcome, key)
    assert {b"list-unsubscribe", b"list-unsubscribe-post"} <= set(signed_names(welcome))


@pytest.mark.parametrize(
    ("address", "domain", "expected"),
    [
        ("news@example.org", "example.org", True),
        ("news@mail.example.org", "example.org", True),
        ("news@example.org", "mail.example.org", True),
        ("news@EXAMPLE.org", "example.org.", True),
        ("news@example.com", "example.org", False),
        ("news@badexample.org", "example.org", False),
    ],
)
def test_dmarc_alignment_of_from_and_signing_domain(address, domain, expected):
    from newsletter.mail.dkim import aligned

    assert aligned(address, domain) is expected

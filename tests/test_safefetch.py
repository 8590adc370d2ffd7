"""Outbound fetches: public addresses only, checked after each lookup and redirect, one deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from newsletter import safefetch
from newsletter.cli import cli
from newsletter.digests import feeds

from factories import make_newsletter

RSS = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>
<item><title>A story</title><link>https://news.example.org/a</link></item></channel></rss>"""


class Server:
    """A raw local HTTP server: each connection gets `reply(path)` bytes, `pace` s apart."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.routes: dict[str, tuple[bytes, float]] = {}
        self.closed_early = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def route(self, path: str, raw: bytes, pace: float = 0.0) -> str:
        self.routes[path] = (raw, pace)
        return self.url + path

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            path = request.split(b" ", 2)[1].decode()
            raw, pace = self.routes.get(path, (b"HTTP/1.1 404 Not Found\r\n\r\n", 0.0))
            try:
                if not pace:
                    conn.sendall(raw)
                    return
                for byte in raw:
                    if self._stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(pace)
            except OSError:
                self.closed_early.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


def ok(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def redirect(location: str) -> bytes:
    return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    try:
        yield server
    finally:
        server.stop()


LOCAL = safefetch.Internal.parse(["127.0.0.1"])
# 127.0.0.1 allowed as a name typed in a feed's address, not as an address any name may have.
LOCAL_NAME_ONLY = safefetch.Internal(frozenset({"127.0.0.1"}), ())


def fetch(url: str, internal: safefetch.Internal = LOCAL, deadline: float = 10.0) -> bytes:
    return safefetch.get(
        url, headers={}, max_bytes=1_000_000, deadline=deadline, internal=internal
    ).body


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/feed",
        "http://localhost/feed",
        "http://10.0.0.8/feed",
        "http://172.16.5.4/feed",
        "http://192.168.1.1/feed",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/feed",
        "http://0.0.0.0/feed",
        "http://[::1]/feed",
        "http://[fd00:ec2::254]/feed",
        "http://[::ffff:127.0.0.1]/feed",
        "http://[fe80::1]/feed",
    ],
    ids=[
        "loopback",
        "localhost",
        "10/8",
        "172.16/12",
        "192.168/16",
        "metadata",
        "shared-cgnat",
        "unspecified",
        "ipv6-loopback",
        "ipv6-metadata",
        "ipv4-mapped",
        "ipv6-link-local",
    ],
)
def test_local_and_private_addresses_are_refused_before_connecting(url):
    with pytest.raises(safefetch.FetchError) as refused:
        fetch(url, safefetch.Internal.parse([]))
    assert "private or local network" in refused.value.message
    assert "NEWSLETTER_FEED_INTERNAL_HOSTS" in refused.value.message


def test_an_allowed_internal_host_is_fetched(server):
    url = server.route("/feed", ok(RSS))
    assert fetch(url) == RSS
    assert fetch(url.replace("127.0.0.1", "localhost"), safefetch.Internal.parse(["localhost"]))


def test_a_redirect_to_a_private_address_is_refused(server):
    url = server.route("/feed", redirect("http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(safefetch.FetchError) as refused:
        fetch(url)
    assert "169.254.169.254" in refused.value.message


def test_a_redirect_to_a_host_that_is_not_allowed_is_refused(server):
    # The first hop is an allowed address; the name it sends us to resolves to one that is not.
    target = server.route("/real", ok(RSS)).replace("127.0.0.1", "localhost")
    url = server.route("/feed", redirect(target))
    with pytest.raises(safefetch.FetchError) as refused:
        fetch(url, LOCAL_NAME_ONLY)
    assert "localhost is on a private or local network" in refused.value.message


def test_redirects_are_followed_and_checked_each_time(server):
    final = server.route("/final", ok(RSS))
    url = server.route("/first", redirect("/second"))
    server.route("/second", redirect(final))
    fetched = safefetch.get(url, headers={}, max_bytes=10_000, deadline=10, internal=LOCAL)
    assert fetched.body == RSS and fetched.url == final


def test_too_many_redirects_are_refused(server):
    url = server.route("/loop", redirect("/loop"))
    with pytest.raises(safefetch.FetchError, match="redirects"):
        fetch(url)


def test_a_body_that_trickles_is_cut_off_at_the_deadline(server):
    # A byte a second: every read gets something, so only a deadline for the whole fetch ends it.
    url = server.route("/slow", ok(RSS), pace=1.0)
    with pytest.raises(safefetch.FetchError) as cut:
        fetch(url, deadline=2)
    assert "took longer than 2 s" in cut.value.message


def test_a_trickling_feed_pull_is_recorded_as_too_slow(app, db, server, monkeypatch):
    monkeypatch.setattr(feeds, "TIMEOUT", 2)
    app.config["FEED_INTERNAL_HOSTS"] = ["127.0.0.1"]
    daily = make_newsletter("daily", feed_url=server.route("/slow.rss", ok(RSS), pace=1.0))
    assert feeds.pull(db.session, daily) == 0
    assert "took longer than 2 s" in daily.feed_error


def test_a_feed_pull_is_refused_on_the_local_network(app, db, server):
    daily = make_newsletter("daily", feed_url=server.route("/feed.rss", ok(RSS)))
    assert feeds.pull(db.session, daily) == 0
    assert "127.0.0.1 is on a private or local network" in daily.feed_error


def test_items_import_refuses_a_local_url(app, db, server):
    make_newsletter("daily")
    url = server.route("/feed.rss", ok(RSS))
    result = app.test_cli_runner().invoke(cli, ["items", "import", url, "--newsletter", "daily"])
    assert result.exit_code == 1
    assert "private or local network" in result.output

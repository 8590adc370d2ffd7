"""Feeds: reading RSS and Atom, importing their items, pulling a newsletter's feed, the CLI."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.cli import cli
from newsletter.digests import feeds
from newsletter.models import Item, utcnow

DATA = Path(__file__).parent / "data"
RSS = DATA / "news.rss"
ATOM = DATA / "news.atom"


def count_items(db) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count()).select_from(Item))


class FeedServer:
    """A local web server answering each path with the (status, type, body) set for it."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                requests.append((self.path, self.headers.get("User-Agent", "")))
                status, kind, body = routes.get(self.path, (404, "text/plain", b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, body: bytes, kind: str = "application/rss+xml") -> str:
        self.routes[path] = (200, kind, body)
        return self.url + path


@pytest.fixture
def app_config() -> dict[str, object]:
    # The test feeds are served on this machine, which production fetches refuse.
    return {"FEED_INTERNAL_HOSTS": ["127.0.0.1"]}


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join()


# Reading


def test_rss_entries_become_items():
    before = utcnow()
    found = feeds.parse(RSS)
    assert [e["title"] for e in found] == [
        "2 drones shot down over Moscow, Smolensk oblasts, Russia claims",
        "How Russia\u2019s homegrown Lancet drone became so feared in Ukraine",
        "No date on this one",
    ]
    first, second, undated = found
    assert first["url"] == "https://news.example/news/2-drones-shot-down"
    assert first["guid"] == "news-1001"
    assert first["published_at"] == datetime(2023, 11, 11, 1, 52, tzinfo=UTC)
    # Tags and scripts are gone; paragraphs stay apart; entities are decoded once.
    assert first["summary"] == "Russian air defense units intercepted two drones.\n\nTom & Jerry"
    # No guid: the link stands in.
    assert second["guid"] == "https://news.example/news/lancet-drone"
    assert second["published_at"] == datetime(2023, 11, 10, 18, 0, tzinfo=UTC)
    assert second["summary"] == "Plain text summary."
    assert undated["published_at"] >= before and undated["published_at"].tzinfo is not None


def test_atom_entries_become_items():
    found = feeds.parse(ATOM.read_bytes())
    assert [(e["title"], e["url"], e["guid"]) for e in found] == [
        (
            "Update: Russian attacks against Ukraine kill 5, injure 38 over past day.",
            "https://news.example/news/russian-attacks-kill-5",
            "tag:news.example,2023-11-11:attacks",
        ),
        (
            "Moldova's Sandu advances to presidential run-off",
            "https://news.example/news/moldova-sandu",
            "tag:news.example,2023-11-11:moldova",
        ),
    ]
    attacks, moldova = found
    # Published wins over updated; updated stands in when there is no published.
    assert attacks["published_at"] == datetime(2023, 11, 11, 10, 35, tzinfo=UTC)
    assert moldova["published_at"] == datetime(2023, 11, 11, 2, 18, tzinfo=UTC)
    assert attacks["summary"] == "Ukrainian air defenses shot down 59 of 116 drones."
    assert moldova["summary"] == "The people of Moldova have spoken."


@pytest.mark.parametrize(
    "source",
    [b"this is not a feed at all", b"<rss><channel><item><title>broken", b"<html><body>Hi</body>"],
    ids=["text", "truncated", "html-page"],
)
def test_what_is_not_a_feed_is_a_clear_error(source):
    with pytest.raises(feeds.FeedError, match="This is not an RSS or Atom feed"):
        feeds.parse(source)


def test_a_missing_file_and_other_schemes_are_clear_errors(tmp_path):
    with pytest.raises(feeds.FeedError, match="Cannot read the file"):
        feeds.parse(str(tmp_path / "missing.xml"))
    for source in ("file:///etc/passwd", "ftp://news.example/feed.xml"):
        with pytest.raises(feeds.FeedError, match="Only http and https"):
            feeds.parse(source)


def test_an_empty_feed_has_no_items():
    empty = b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title></channel></rss>'
    assert feeds.parse(empty) == []


# Importing


def test_import_adds_items_once(app, db, newsletters):
    daily = newsletters[0]
    assert feeds.import_feed(db.session, RSS, daily) == (3, 0)
    assert feeds.import_feed(db.session, RSS, daily) == (0, 3)
    assert count_items(db) == 3
    stored = db.session.scalars(select(Item).order_by(Item.published_at)).all()
    assert {i.source for i in stored} == {"feed"}
    assert all([n.slug for n in i.newsletters] == ["daily"] for i in stored)
    # The same stories for another list: tagged, not copied.
    assert feeds.import_feed(db.session, RSS, newsletters[2]) == (0, 3)
    db.session.expire_all()
    story = db.session.scalars(select(Item).where(Item.guid == "news-1001")).one()
    assert sorted(n.slug for n in story.newsletters) == ["culture", "daily"]


# Pulling a newsletter's feed


def test_pull_fetches_the_feed_over_http(app, db, newsletters, feed_server):
    daily = newsletters[0]
    daily.feed_url = feed_server.serve("/feed.atom", ATOM.read_bytes(), "application/atom+xml")
    daily.feed_error = "an old failure"
    db.session.commit()
    assert feeds.pull(db.session, daily) == 2
    assert feed_server.requests[0][1] == feeds.USER_AGENT
    db.session.expire_all()
    assert daily.feed_error is None
    assert utcnow() - daily.feed_checked_at < timedelta(minutes=1)
    assert sorted(i.guid for i in db.session.scalars(select(Item))) == [
        "tag:news.example,2023-11-11:attacks",
        "tag:news.example,2023-11-11:moldova",
    ]
    assert feeds.pull(db.session, daily) == 0
    assert count_items(db) == 2


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/missing.xml", None, "The feed's server answered 404"),
        ("/garbage.xml", b"\x00\x01 not xml at all", "This is not an RSS or Atom feed"),
    ],
    ids=["404", "garbage"],
)
def test_a_failing_feed_is_recorded_not_raised(
    app, db, newsletters, feed_server, path, body, message
):
    daily = newsletters[0]
    daily.feed_url = feed_server.serve(path, body) if body else feed_server.url + path
    db.session.commit()
    assert feeds.pull(db.session, daily) == 0
    db.session.expire_all()
    assert message in daily.feed_error
    assert daily.feed_checked_at is not None
    assert count_items(db) == 0


def test_an_unreachable_or_huge_feed_is_recorded(app, db, newsletters, feed_server, monkeypatch):
    daily = newsletters[0]
    monkeypatch.setattr(feeds, "MAX_BYTES", 100)
    daily.feed_url = feed_server.serve("/big.xml", RSS.read_bytes())
    db.session.commit()
    feeds.pull(db.session, daily)
    assert "larger than" in daily.feed_error
    daily.feed_url = "http://127.0.0.1:9/feed.xml"  # the discard port: nobody listens
    db.session.commit()
    assert feeds.pull(db.session, daily) == 0
    assert "could not be fetched" in daily.feed_error


def test_admin_pulls_the_feed_from_the_newsletter_page(
    app, client, db, editor, newsletters, feed_server
):
    from factories import csrf_token, sign_in

    daily = newsletters[0]
    daily.feed_url = feed_server.serve("/feed.rss", RSS.read_bytes())
    db.session.commit()
    sign_in(client, "writer@news.example.org")
    path = f"/admin/newsletters/{daily.id}"
    response = client.post(f"{path}/pull-feed", data={"csrf_token": csrf_token(client, path)})
    assert response.status_code == 302
    assert "3 new items from the feed." in client.get(path).get_data(as_text=True)
    assert count_items(db) == 3


# The command line


def test_cli_imports_a_file_then_adds_nothing(app, db, newsletters):
    runner = app.test_cli_runner()
    first = runner.invoke(cli, ["items", "import", str(RSS), "--newsletter", "daily"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "3 added, 0 already there"
    again = runner.invoke(cli, ["items", "import", str(RSS), "--newsletter", "daily"])
    assert again.output.strip() == "0 added, 3 already there"
    assert count_items(db) == 3


def test_cli_imports_a_url(app, db, newsletters, feed_server):
    url = feed_server.serve("/feed.atom", ATOM.read_bytes(), "application/atom+xml")
    result = app.test_cli_runner().invoke(cli, ["items", "import", url, "--newsletter", "culture"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2 added, 0 already there"


def test_cli_refuses_unknown_lists_and_bad_feeds(app, db, newsletters, tmp_path):
    runner = app.test_cli_runner()
    unknown = runner.invoke(cli, ["items", "import", str(RSS), "--newsletter", "nope"])
    assert unknown.exit_code == 2 and "no open newsletter with slug 'nope'" in unknown.output
    bad = tmp_path / "bad.xml"
    bad.write_text("not a feed")
    broken = runner.invoke(cli, ["items", "import", str(bad), "--newsletter", "daily"])
    assert broken.exit_code == 1 and "This is not an RSS or Atom feed" in broken.output
    assert count_items(db) == 0

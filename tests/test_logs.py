"""Production logs: JSON lines, a request id on each, no reader's token or address."""

from __future__ import annotations

import json
import logging
import secrets

import pytest
from flask import request

from newsletter import create_app, logs
from newsletter.extensions import db
from newsletter.models import Subscriber

from factories import links, make_newsletter

log = logging.getLogger("newsletter.tests")
READER = "jane.reader@example.org"


@pytest.fixture
def production_app(tmp_path):  # type: ignore[no-untyped-def]
    app = create_app(
        {
            "ENV": "production",
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'logs.db'}",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "BASE_URL": "https://news.example.org",
        }
    )

    # What a careless module might write: every request's full address, at INFO.
    @app.before_request
    def _careless() -> None:
        log.info("handling %s %s for %s", request.method, request.url, request.form.get("email"))

    with app.app_context():
        db.create_all()
        make_newsletter("daily")
        yield app
        db.session.remove()
        db.engine.dispose()


def test_sign_up_and_confirm_leave_no_token_or_address_in_the_logs(production_app, capsys):
    from factories import Mailbox

    client = production_app.test_client()
    capsys.readouterr()
    reply = client.post("/subscribe", data={"email": READER, "newsletter": "daily"})
    assert reply.status_code == 200
    [mail] = Mailbox().deliver()
    [confirm] = links(mail, "/confirm/")
    token = confirm.removeprefix("/confirm/")
    page = client.get(confirm)
    done = client.post(confirm)
    assert done.status_code == 200
    subscriber = db.session.query(Subscriber).one()
    log.info("reader %s confirmed", subscriber.email)
    try:
        raise ValueError(f"cannot mail {READER} at https://news.example.org{confirm}")
    except ValueError:
        log.exception("a failure that quotes its data")

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) >= 5
    text = "\n".join(lines)
    assert token not in text and token[:24] not in text
    assert READER not in text and "jane.reader" not in text
    assert "j***@example.org" in text
    assert f"/confirm/{token[:8]}\u2026" in text
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    during = {
        r["request_id"] for r in records if r["message"].startswith("handling ") and r["request_id"]
    }
    assert during == {
        reply.headers["X-Request-ID"],
        page.headers["X-Request-ID"],
        done.headers["X-Request-ID"],
    }


def test_a_request_id_from_an_untrusted_client_is_replaced(production_app):
    client = production_app.test_client()
    response = client.get("/healthz", headers={"X-Request-ID": "chosen-by-the-client"})
    assert response.headers["X-Request-ID"] != "chosen-by-the-client"
    assert len(response.headers["X-Request-ID"]) == 32


def test_a_request_id_from_a_trusted_proxy_is_kept(tmp_path):
    app = create_app(
        {
            "ENV": "testing",
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "k",
            "TRUSTED_PROXIES": 1,
        }
    )
    client = app.test_client()
    kept = client.get("/healthz", headers={"X-Request-ID": "edge-7f3a9c"})
    assert kept.headers["X-Request-ID"] == "edge-7f3a9c"
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id\u00e9"})
    assert odd.headers["X-Request-ID"] != "bad id\u00e9"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("GET /confirm/eyJzIjoxLCJrIjoiYWJj.ZmFrZQ.sig123", "GET /confirm/eyJzIjox\u2026"),
        ("POST /unsubscribe/abcdefghijklmnop 200", "POST /unsubscribe/abcdefgh\u2026 200"),
        ("/preferences/short", "/preferences/short"),
        (
            "bounce to bounces+c2lnbmVkLXZlcnAtdGFn@news.example.org",
            "bounce to b***@news.example.org",
        ),
        ("reader Émile.Zola@exemple.fr left", "reader É***@exemple.fr left"),
        ("login password=hunter2hunter2 ok", "login password=*** ok"),
    ],
    ids=["confirm", "unsubscribe", "short-token", "verp", "unicode-address", "password"],
)
def test_mask(raw, masked):
    assert logs.mask(raw) == masked

"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask_migrate import stamp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from newsletter import create_app, heartbeats
from newsletter.models import OutboxMessage, Subscription, WorkerHeartbeat, utcnow

from factories import links, signup

TOKEN = "metrics-token-for-the-tests-0123456789"


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"METRICS_TOKEN": TOKEN}


@pytest.fixture(autouse=True)
def _unstamped(app, db):  # type: ignore[no-untyped-def]
    """The test database is shared and built from the models: no Alembic mark before or after."""
    db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
    db.session.commit()
    yield
    db.session.rollback()
    db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
    db.session.commit()


# The age of the oldest mail waiting in the outbox, as Prometheus reads it.
OLDEST_QUEUED = "newsletter_outbox_oldest_age_seconds"


def scrape(client) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """The metric families of one scrape, by name, parsed as Prometheus does."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """The sample `name` whose labels include `labels` (0 when there is none)."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def test_healthz_says_the_process_is_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "alive"}


def _ready_database(app, db) -> None:  # type: ignore[no-untyped-def]
    stamp()  # the tables came from the models: mark them as at the scripts' head
    heartbeats.beat(db.session, "worker-host:1234")


def test_readyz_is_ready_when_every_check_passes(app, client, db):
    _ready_database(app, db)
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ready"
    assert set(response.json["checks"]) == {"database", "migrations", "outbox", "workers"}
    assert all(check["ok"] for check in response.json["checks"].values())
    assert response.json["checks"]["workers"]["workers"] == 1


def test_readyz_names_missing_migrations(app, client, db):
    heartbeats.beat(db.session, "worker-host:1234")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["failing"] == ["migrations"]
    assert "newsletter db upgrade" in response.json["checks"]["migrations"]["detail"]


def test_readyz_fails_when_no_worker_beat_lately(app, client, db):
    _ready_database(app, db)
    db.session.execute(update(WorkerHeartbeat).values(seen_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["failing"] == ["workers"]
    assert response.json["checks"]["workers"]["detail"] == "no worker seen in the last 60 s"


def test_readyz_fails_when_mail_waits_too_long(app, client, db, newsletters):
    _ready_database(app, db)
    signup(client, "reader@example.com", "daily")
    db.session.execute(
        update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(minutes=30))
    )
    db.session.commit()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["failing"] == ["outbox"]
    outbox = response.json["checks"]["outbox"]
    assert outbox["detail"].startswith("a mail has waited")
    assert outbox["ok"] is False
    assert outbox["detail"].endswith(f"(limit {app.config['READY_OUTBOX_MAX_AGE']} s)")


@pytest.mark.parametrize(
    "url",
    ["sqlite:////nonexistent-folder/newsletter.db", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
    ids=["sqlite-nowhere", "postgresql-closed-port"],
)
def test_readyz_fails_when_the_database_is_down(tmp_path, url):
    app = create_app(
        {"ENV": "testing", "INSTANCE_PATH": str(tmp_path), "DATABASE_URL": url, "SECRET_KEY": "k"}
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["failing"] == ["database"]
    assert response.json["checks"]["database"]["ok"] is False
    assert response.json["checks"]["workers"]["ok"] is None
    # The liveness probe does not depend on it.
    assert app.test_client().get("/healthz").status_code == 200


def test_heartbeats_update_one_row_per_worker(app, db):
    assert heartbeats.beat(db.session, "a:1")
    assert heartbeats.beat(db.session, "a:1")
    assert not heartbeats.beat(db.session, "a:1", every=60)
    heartbeats.beat(db.session, "b:2")
    assert [w.name for w in heartbeats.recent(db.session, timedelta(minutes=1))] == ["b:2", "a:1"]


def test_metrics_need_the_bearer_token(client):
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_are_not_served_in_production_without_a_token(tmp_path):
    app = create_app(
        {
            "ENV": "production",
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "s" + "0123456789abcdefghijklmnopqrstuvwxyz",
            "BASE_URL": "https://news.example.org",
        }
    )
    assert app.test_client().get("/metrics").status_code == 404


def test_metrics_count_what_readers_do(app, client, db, mailbox, newsletters):
    before = scrape(client)
    signup(client, "reader@example.com", "daily", "culture")
    [mail] = mailbox.deliver()
    [confirm] = links(mail, "/confirm/")
    assert client.post(confirm).status_code == 200
    families = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(families, name, **labels) - value(before, name, **labels)

    assert grew("newsletter_signups_total", newsletter="daily") == 1
    assert grew("newsletter_signups_total", newsletter="culture") == 1
    assert grew("newsletter_confirmations_total", newsletter="daily") == 1
    assert grew("newsletter_mails_queued_total", kind="confirmation") == 1
    assert grew("newsletter_mails_sent_total", kind="confirmation", result="sent") == 1
    assert value(families, "newsletter_subscriptions", newsletter="daily", status="confirmed") == 1
    assert value(families, "newsletter_database_up") == 1
    # One welcome mail, naming both lists, waits in the outbox.
    assert value(families, "newsletter_outbox_queued") == 1
    assert grew("newsletter_mails_queued_total", kind="welcome") == 1
    assert OLDEST_QUEUED in families
    assert (
        grew(
            "newsletter_request_duration_seconds_count", endpoint="public.subscribe", method="POST"
        )
        == 1
    )


def test_every_metric_is_declared_with_its_kind_and_labels(client, newsletters):
    from newsletter import metrics

    metrics.BOUNCES.labels("hard")
    metrics.MAILS_SENT.labels("digest", "sent")
    client.get("/healthz")
    families = scrape(client)
    expected = {
        "newsletter_signups": "counter",
        "newsletter_confirmations": "counter",
        "newsletter_unsubscribes": "counter",
        "newsletter_mails_queued": "counter",
        "newsletter_mails_sent": "counter",
        "newsletter_digest_messages_sent": "counter",
        "newsletter_bounces": "counter",
        "newsletter_complaints": "counter",
        "newsletter_ratelimit_fallback": "counter",
        "newsletter_request_duration_seconds": "histogram",
        "newsletter_subscriptions": "gauge",
        "newsletter_outbox_queued": "gauge",
        "newsletter_outbox_oldest_age_seconds": "gauge",
        "newsletter_workers_seen": "gauge",
        "newsletter_database_up": "gauge",
    }
    for name, kind in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
    labels = {
        sample.name: set(sample.labels)
        for family in families.values()
        for sample in family.samples
        if sample.name.startswith("newsletter_")
    }
    assert labels["newsletter_mails_sent_total"] == {"kind", "result"}
    assert labels["newsletter_bounces_total"] == {"kind"}
    (latency,) = metrics.REQUEST_SECONDS.describe()
    assert labels[f"{latency.name}_bucket"] == {"endpoint", "method", "le"}


def test_unsubscribes_count_once(app, client, db, mailbox, newsletters):
    signup(client, "reader@example.com", "daily")
    [mail] = mailbox.deliver()
    client.post(links(mail, "/confirm/")[0])
    [welcome] = mailbox.deliver()
    found = re.search(r"<https://[^/]+(/unsubscribe/[^>]+)>", welcome["List-Unsubscribe"])
    assert found is not None
    before = scrape(client)
    for _ in range(2):
        one_click = client.post(found.group(1), data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200
    after = scrape(client)
    grown = value(after, "newsletter_unsubscribes_total", newsletter="daily") - value(
        before, "newsletter_unsubscribes_total", newsletter="daily"
    )
    assert grown == 1


def test_the_worker_loop_beats(app, db, monkeypatch):
    from newsletter import worker

    monkeypatch.setattr(heartbeats, "_last_beat", {})  # no beat of this process yet
    worker.build(app.config, lambda: db.session).run(drain=True)
    [seen] = heartbeats.recent(db.session, timedelta(minutes=1))
    assert seen.name == heartbeats.worker_name()


def test_a_worker_serves_its_metrics_on_a_port_of_its_own():
    import socket
    import urllib.request

    from newsletter import metrics

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert metrics.serve({"METRICS_PORT": port, "METRICS_ADDRESS": "127.0.0.1"}) == port
    metrics.MAILS_SENT.labels("welcome", "sent").inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert value(families, "newsletter_mails_sent_total", kind="welcome", result="sent") >= 1
    # The database's figures are the web's to report: a worker's port has none.
    assert "newsletter_subscriptions" not in families


def test_digest_mails_are_counted_as_they_go(client, db, daily):
    from newsletter.digests import states
    from newsletter.mail.transport import MemoryTransport

    from factories import add_item, add_reader, send_all

    add_item(db, daily, "Story")
    add_reader(db, daily, "one@example.com")
    add_reader(db, daily, "two@example.com")
    add_reader(db, daily, "left@example.com", status="unsubscribed")
    before = scrape(client)
    digest = states.compose(db.session, daily)
    states.start(db.session, digest)
    db.session.execute(
        db.update(Subscription).where(Subscription.subscriber_id == 2).values(status="unsubscribed")
    )
    db.session.commit()
    send_all(db, MemoryTransport())
    after = scrape(client)

    def grown(**labels: str) -> float:
        name = "newsletter_mails_sent_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert grown(kind="digest", result="sent") == 1
    assert grown(kind="digest", result="skipped") == 1

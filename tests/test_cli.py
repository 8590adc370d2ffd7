"""The `newsletter` command: database set-up, demo data, subscriber export."""

from __future__ import annotations

import csv
import io
import os

import pytest
from sqlalchemy import func, select

from newsletter.cli import cli
from newsletter.models import Item, Newsletter, Subscription, SubscriptionStatus

from factories import apply_signups, signup


@pytest.fixture
def invoke(app):  # type: ignore[no-untyped-def]
    runner = app.test_cli_runner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args))

    return run


def test_seed_demo_is_idempotent(invoke, db):
    first = invoke("seed-demo")
    assert first.exit_code == 0, first.output
    assert "4 newsletters and 4 news items added" in first.output
    second = invoke("seed-demo")
    assert "0 newsletters and 0 news items added" in second.output
    names = db.session.scalars(select(Newsletter.name)).all()
    assert "Explaining Ukraine with Kate Tsurkan" in names and len(names) == 4
    assert db.session.scalar(select(func.count()).select_from(Item)) == 4


def rows(output: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(output)))


def test_export_writes_csv_with_every_subscription(invoke, client, db, newsletters):
    signup(client, "Reader@Example.com", "daily", "culture")
    result = invoke("subscribers", "export")
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    assert header.startswith("email,newsletter,status,subscribed_at,confirmed_at")
    exported = rows(result.output)
    assert [(r["email"], r["newsletter"], r["status"]) for r in exported] == [
        ("Reader@example.com", "daily", "pending"),
        ("Reader@example.com", "culture", "pending"),
    ]
    assert exported[0]["subscribed_at"].startswith("20")
    assert exported[0]["confirmed_at"] == ""


def test_export_filters_by_newsletter_and_status(invoke, client, db, newsletters):
    signup(client, "a@example.com", "daily")
    signup(client, "b@example.com", "daily", "culture")
    first = db.session.scalars(select(Subscription).order_by(Subscription.id)).first()
    first.status = SubscriptionStatus.CONFIRMED
    db.session.commit()
    daily = rows(invoke("subscribers", "export", "--newsletter", "daily").output)
    assert {r["email"] for r in daily} == {"a@example.com", "b@example.com"}
    confirmed = rows(invoke("subscribers", "export", "--status", "confirmed").output)
    assert [r["email"] for r in confirmed] == ["a@example.com"]


def test_export_from_the_command_line_is_in_the_audit_trail(invoke, client, db, newsletters):
    from newsletter.models import AuditEvent

    signup(client, "a@example.com", "daily")
    assert invoke("subscribers", "export", "--status", "pending").exit_code == 0
    [audit] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
    # No account ran it: the record names none.
    assert audit.admin_user_id is None and audit.detail == {"filter": {"status": "pending"}}


def test_export_rejects_unknown_filters(invoke, newsletters):
    unknown = invoke("subscribers", "export", "--newsletter", "nope")
    assert unknown.exit_code == 2
    assert "no newsletter with slug 'nope'" in unknown.output
    bad_status = invoke("subscribers", "export", "--status", "happy")
    assert bad_status.exit_code == 2


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_export_neutralises_formulas(invoke, client, newsletters, start):
    address = "=1+2@example.com" if start == "=" else f"{start}cmd@example.com"
    source = f'{start}HYPERLINK("http://evil.example")'
    client.post(
        "/subscribe",
        data={
            "email": address if start != "@" else "ok@example.com",
            "newsletter": "daily",
            "source": source,
        },
    )
    apply_signups()
    (row,) = rows(invoke("subscribers", "export").output)
    assert row["source"] == "'" + source
    if start != "@":
        assert row["email"] == "'" + address


def test_neutralise_leaves_ordinary_cells_alone():
    from newsletter.exports import neutralise

    assert neutralise("reader@example.com") == "reader@example.com"
    assert neutralise(None) == ""
    assert neutralise("\tTAB") == "'\tTAB"
    assert neutralise("-") == "'-"


def test_demo_items_say_where_they_came_from(invoke, db):
    assert invoke("seed-demo").exit_code == 0
    assert set(db.session.scalars(select(Item.source))) == {"demo"}


def test_a_setting_that_cannot_run_the_app_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["create-admin", "you@example.org", "--password", "x" * 12])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: NEWSLETTER_SECRET_KEY must be set in production"
    ]
    assert "Traceback" not in result.output


def test_commands_beside_a_make_run_instance_use_it_without_settings(tmp_path, monkeypatch):
    from click.testing import CliRunner

    for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    # What `make run` does first, with the environment it sets for itself.
    made = runner.invoke(
        cli,
        ["dev-instance", "--base-url", "http://127.0.0.1:5001"],
        env={"NEWSLETTER_ENV": "development"},
    )
    assert made.exit_code == 0, made.output
    # A second terminal, no variables: the README's next commands.
    assert runner.invoke(cli, ["init-db"]).exit_code == 0
    created = runner.invoke(cli, ["create-admin", "you@example.org", "--password", "x" * 12])
    assert created.exit_code == 0, created.output
    assert "Account you@example.org created (admin)." in created.output

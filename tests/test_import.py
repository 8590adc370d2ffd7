"""Subscriber import: the rules, the report, the command, the admin upload and the worker."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from newsletter import addresses
from newsletter.cli import cli
from newsletter.imports import csvfile, importer
from newsletter.imports import jobs as import_jobs
from newsletter.models import (
    AuditEvent,
    ConsentEvent,
    ImportJob,
    ImportMode,
    OutboxMessage,
    Subscriber,
    Subscription,
    Suppression,
    utcnow,
)
from newsletter.newsletters import UnknownNewsletter

from factories import csrf_token, links, sign_in, signup

NOTE = "Signed the paper list at the Kyiv book fair, 2024-05-18"


def do_import(
    db,  # type: ignore[no-untyped-def]
    text: str,
    slug: str = "daily",
    mode: ImportMode = ImportMode.CONFIRM,
    note: str | None = None,
    **options: object,
) -> tuple[ImportJob, list[dict[str, str]]]:
    """Run an import of this CSV text; return the job and the report's rows."""
    job = import_jobs.create_job(db.session, slug, "people.csv", mode, note)
    report = io.StringIO()
    importer.run(db.session, job, io.StringIO(text, newline=""), report, **options)
    report.seek(0)
    return job, list(csv.DictReader(report))


def count(db, model) -> int:  # type: ignore[no-untyped-def]
    return db.session.scalar(select(func.count()).select_from(model))


def subscription_of(db, email_key: str, slug: str = "daily") -> Subscription:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return db.session.scalars(
        select(Subscription)
        .join(Subscriber)
        .where(Subscriber.email_key == email_key, Subscription.newsletter.has(slug=slug))
    ).one()


def trail(db, subscription: Subscription) -> list[tuple[str, str | None, str | None]]:  # type: ignore[no-untyped-def]
    events = db.session.scalars(
        select(ConsentEvent)
        .where(ConsentEvent.subscription_id == subscription.id)
        .order_by(ConsentEvent.id)
    )
    return [(e.action, e.source, e.text_shown) for e in events]


# --- the rules --------------------------------------------------------------------------------


def test_good_rows_become_pending_and_get_one_confirmation_each(client, db, mailbox, newsletters):
    job, report = do_import(
        db,
        "email,name,locale,subscribed_at\n"
        "Olena@Example.com,Olena,uk,2023-02-01\n"
        "taras@example.org,Taras,,2023-03-04T10:30:00+02:00\n"
        "kate@example.net,,en-GB,\n",
    )
    assert (job.status, job.error) == ("done", None)
    assert (job.rows_read, job.added, job.unchanged, job.rejected) == (3, 3, 0, 0)
    assert job.finished_at is not None
    assert report == []

    olena = subscription_of(db, "olena@example.com")
    assert (olena.status, olena.source) == ("pending", "import")
    assert olena.subscriber.email == "Olena@example.com" and olena.subscriber.locale == "uk"
    # A date alone is midnight UTC; a time with a zone is converted to UTC.
    assert olena.subscribed_at == datetime(2023, 2, 1, tzinfo=UTC)
    taras = subscription_of(db, "taras@example.org")
    assert taras.subscribed_at == datetime(2023, 3, 4, 8, 30, tzinfo=UTC)
    assert subscription_of(db, "kate@example.net").subscriber.locale == "en-GB"
    assert trail(db, olena) == [("signup", "import", None), ("confirmation_sent", "import", None)]

    sent = mailbox.deliver()
    assert sorted(m["To"] for m in sent) == [
        "Olena@example.com",
        "kate@example.net",
        "taras@example.org",
    ]
    mail = next(m for m in sent if m["To"] == "Olena@example.com")
    (link,) = links(mail, "/confirm/")
    assert "Daily Briefing" in client.get(link).get_data(as_text=True)
    assert client.post(link).status_code == 200
    assert subscription_of(db, "olena@example.com").status == "confirmed"


def test_consented_rows_are_confirmed_with_the_note_in_their_trail(db, mailbox, newsletters):
    job, report = do_import(
        db,
        "email,subscribed_at\nreader@example.com,2024-05-18 12:00\n",
        mode=ImportMode.CONSENTED,
        note=NOTE,
    )
    assert (job.added, report) == (1, [])
    subscription = subscription_of(db, "reader@example.com")
    assert subscription.status == "confirmed"
    assert subscription.confirmed_at == datetime(2024, 5, 18, 12, tzinfo=UTC)
    assert trail(db, subscription) == [
        ("signup", "import", NOTE),
        ("confirmed", "import", NOTE),
    ]
    # People who are on the list already get no mail about it: no confirmation, no welcome.
    assert count(db, OutboxMessage) == 0
    assert mailbox.deliver() == []


def test_consented_mode_needs_a_note(db, newsletters):
    with pytest.raises(import_jobs.ConsentNoteRequired):
        import_jobs.create_job(db.session, "daily", "people.csv", ImportMode.CONSENTED, "  ")
    with pytest.raises(UnknownNewsletter):
        import_jobs.create_job(db.session, "nope", "people.csv", ImportMode.CONFIRM)
    assert count(db, ImportJob) == 0


@pytest.mark.parametrize(
    ("row", "email", "reason"),
    [
        ("not-an-address", "not-an-address", "An email address must have an @-sign."),
        ("reader@", "reader@", "There must be something after the @-sign."),
        (",uk", "", "no email address"),
        ("reader@example.com,,yesterday", "reader@example.com", "is not an ISO 8601 date"),
        ("reader@example.com,,2999-01-01", "reader@example.com", "is in the future"),
        ("reader@example.com,english language,", "reader@example.com", "is not a language tag"),
    ],
    ids=["no-at", "no-domain", "empty", "bad-date", "future-date", "bad-locale"],
)
def test_bad_rows_are_reported_with_their_row_and_reason(db, newsletters, row, email, reason):
    job, report = do_import(db, f"email,locale,subscribed_at\nok@example.com\n{row}\n")
    assert (job.status, job.rows_read, job.added, job.rejected) == ("done", 2, 1, 1)
    assert len(report) == 1
    assert report[0]["row"] == "3"
    assert report[0]["email"] == email
    assert report[0]["outcome"] == "invalid"
    assert reason in report[0]["reason"]
    assert count(db, Subscriber) == 1


def test_duplicates_within_the_file_name_the_first_row(db, newsletters):
    job, report = do_import(
        db, "email\nreader@example.com\nother@example.com\nREADER@Example.com\n", batch_size=2
    )
    assert (job.added, job.rejected) == (2, 1)
    assert report == [
        {
            "row": "4",
            "email": "READER@example.com",
            "outcome": "duplicate",
            "reason": "duplicates row 2",
        }
    ]
    assert count(db, Subscriber) == 2 and count(db, OutboxMessage) == 2


def names(db) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    """Each subscriber's address with their name, re-read from the database."""
    db.session.expire_all()
    return dict(db.session.execute(select(Subscriber.email_key, Subscriber.name)).tuples().all())


def test_names_are_kept_without_their_surrounding_spaces(db, newsletters):
    job, report = do_import(
        db,
        "EMAIL, Name ,locale\n"
        "olena@example.com,  Олена Коваленко  ,uk\n"
        "taras@example.org,,\n"
        "kate@example.net,\u00a0 ,\n"
        'ivan@example.com,"O\'Brien, Ivan",\n',
    )
    assert (job.added, job.rejected, report) == (4, 0, [])
    assert names(db) == {
        "olena@example.com": "Олена Коваленко",
        "taras@example.org": None,
        "kate@example.net": None,
        "ivan@example.com": "O'Brien, Ivan",
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("x" * 201, "name is 201 characters long; at most 200 fit"),
        ("Olena\rKovalenko", "name 'Olena\\rKovalenko' holds a control character"),
        ("Olena\nKovalenko", "name 'Olena\\nKovalenko' holds a control character"),
        ("Olena\tKovalenko", "holds a control character"),
        ("Olena\x00", "holds a control character"),
        ("Olena\u2028Kovalenko", "holds a control character"),
    ],
    ids=["too-long", "cr", "lf", "tab", "nul", "line-separator"],
)
def test_bad_names_are_reported_with_their_row_and_reason(db, newsletters, name, reason):
    cell = '"' + name.replace('"', '""') + '"'
    job, report = do_import(db, f"email,name\nok@example.com,{'y' * 200}\nbad@example.com,{cell}\n")
    assert (job.rows_read, job.added, job.rejected) == (2, 1, 1)
    assert [(r["row"], r["email"], r["outcome"]) for r in report] == [
        ("3", "bad@example.com", "invalid")
    ]
    assert reason in report[0]["reason"]
    assert names(db) == {"ok@example.com": "y" * 200}


def test_people_who_are_there_keep_their_name(client, db, newsletters):
    signup(client, "signed-up@example.com", "culture")
    text = "email,name\nreader@example.com,Reader\nsigned-up@example.com,Someone\n"
    first, _ = do_import(db, text)
    assert first.added == 2
    before = names(db)
    assert before == {"signed-up@example.com": None, "reader@example.com": "Reader"}

    again, report = do_import(db, text.replace("Reader", "Another Name"))
    assert (again.added, again.unchanged) == (0, 2)
    elsewhere, _ = do_import(db, text.replace("Reader", "Another Name"), slug="culture")
    assert (elsewhere.added, elsewhere.unchanged) == (1, 1)
    assert names(db) == before


def test_the_helper_process_carries_the_names(db, newsletters):
    text = "email,name\n" + "".join(
        f"reader{n}@example.com,Reader {n}\nbroken{n}@example.com,Bad\tName\n" for n in range(30)
    )
    job, report = do_import(db, text, batch_size=10, parallel_after=0)
    assert (job.rows_read, job.added, job.rejected) == (60, 30, 30)
    assert all("holds a control character" in r["reason"] for r in report)
    assert names(db) == {f"reader{n}@example.com": f"Reader {n}" for n in range(30)}


def test_names_are_in_the_csv_export_neutralised(db, invoke, newsletters):
    do_import(db, "email,name\nreader@example.com,=cmd|' /C calc'!A0\nother@example.com,Olena\n")
    result = invoke("subscribers", "export")
    assert result.exit_code == 0, result.output
    exported = list(csv.DictReader(io.StringIO(result.output)))
    assert result.output.startswith("email,newsletter,status,")
    assert [(r["email"], r["name"]) for r in exported] == [
        ("reader@example.com", "'=cmd|' /C calc'!A0"),
        ("other@example.com", "Olena"),
    ]


def test_the_admin_sees_exports_and_erases_the_name(client, db, admin, newsletters):
    do_import(db, "email,name\nreader@example.com,Олена <b>Коваленко</b>\n")
    person = db.session.scalars(select(Subscriber)).one()
    sign_in(client)
    page = client.get(f"/admin/subscribers/{person.id}").get_data(as_text=True)
    assert "<dt>Name</dt><dd>Олена &lt;b&gt;Коваленко&lt;/b&gt;</dd>" in page
    data = json.loads(client.get(f"/admin/subscribers/{person.id}/data.json").data)
    assert data["name"] == "Олена <b>Коваленко</b>"

    token = csrf_token(client, f"/admin/subscribers/{person.id}")
    client.post(
        f"/admin/subscribers/{person.id}/erase", data={"csrf_token": token, "confirm": "erase"}
    )
    db.session.expire_all()
    assert count(db, Subscriber) == 0
    assert db.session.scalar(select(func.count()).where(Subscriber.name.is_not(None))) == 0


@pytest.mark.parametrize("reason", ["erased", "bounced", "complained"])
def test_suppressed_addresses_do_not_come_back(db, newsletters, reason):
    key = "gone@example.com"
    db.session.add(Suppression(email_hash=addresses.address_hash(key), reason=reason))
    db.session.commit()
    job, report = do_import(db, "email\nGone@Example.com\nstays@example.com\n")
    assert (job.added, job.unchanged, job.rejected) == (1, 0, 1)
    assert report == [
        {
            "row": "2",
            "email": "Gone@example.com",
            "outcome": "suppressed",
            "reason": f"suppressed: {reason}",
        }
    ]
    assert db.session.scalars(select(Subscriber.email_key)).all() == ["stays@example.com"]


def test_people_on_the_list_or_who_left_it_stay_as_they_are(client, db, mailbox, newsletters):
    signup(client, "pending@example.com", "daily")
    signup(client, "confirmed@example.com", "daily")
    signup(client, "left@example.com", "daily")
    signup(client, "bounced@example.com", "daily")
    signup(client, "elsewhere@example.com", "culture")
    mailbox.deliver()
    for key, status in [
        ("confirmed@example.com", "confirmed"),
        ("left@example.com", "unsubscribed"),
        ("bounced@example.com", "bounced"),
    ]:
        subscription_of(db, key).status = status
        db.session.commit()
    before = count(db, ConsentEvent)

    job, report = do_import(
        db,
        "email\npending@example.com\nconfirmed@example.com\nleft@example.com\n"
        "bounced@example.com\nelsewhere@example.com\n",
    )

    assert (job.rows_read, job.added, job.unchanged, job.rejected) == (5, 1, 4, 0)
    assert [(r["row"], r["outcome"], r["reason"]) for r in report] == [
        ("2", "unchanged", "already waiting for confirmation"),
        ("3", "unchanged", "already subscribed"),
        ("4", "unchanged", "unsubscribed earlier"),
        ("5", "unchanged", "bounced earlier"),
    ]
    assert subscription_of(db, "left@example.com").status == "unsubscribed"
    assert subscription_of(db, "bounced@example.com").status == "bounced"
    # A subscriber of another list joins this one, as one person.
    assert subscription_of(db, "elsewhere@example.com").status == "pending"
    assert count(db, Subscriber) == 5
    assert count(db, ConsentEvent) == before + 2
    (mail,) = mailbox.deliver()
    assert mail["To"] == "elsewhere@example.com"


def test_running_the_same_import_again_changes_nothing(db, mailbox, newsletters):
    text = "email\nreader@example.com\nother@example.com\nbroken\nreader@example.com\n"
    first, _ = do_import(db, text)
    assert (first.added, first.unchanged, first.rejected) == (2, 0, 2)
    rows = {model: count(db, model) for model in (Subscriber, Subscription, ConsentEvent)}
    mails = count(db, OutboxMessage)

    again, report = do_import(db, text)

    assert (again.rows_read, again.added, again.unchanged, again.rejected) == (4, 0, 2, 2)
    assert [(r["row"], r["outcome"]) for r in report] == [
        ("2", "unchanged"),
        ("3", "unchanged"),
        ("4", "invalid"),
        ("5", "duplicate"),
    ]
    assert {model: count(db, model) for model in rows} == rows
    assert count(db, OutboxMessage) == mails == 2
    assert len(mailbox.deliver()) == 2


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t"])
def test_the_report_neutralises_formulas(db, newsletters, start):
    cell = f'{start}HYPERLINK("http://evil.example")'
    text = 'email,subscribed_at\n"' + cell.replace('"', '""') + '",\nok@example.com,=1+1\n'
    job, report = do_import(db, text)
    assert job.rejected == 2
    assert report[0]["email"] == "'" + cell
    assert report[1]["reason"].startswith("subscribed_at '=1+1'")


def test_a_file_without_an_email_column_touches_nothing(db, newsletters):
    job, report = do_import(db, "name,address\nReader,reader@example.com\n")
    assert job.status == "failed"
    assert job.error == csvfile.MissingEmailColumn.message
    assert (job.rows_read, job.added) == (0, 0)
    assert report == [] and count(db, Subscriber) == 0


def test_bom_semicolons_header_case_and_blank_lines(db, newsletters):
    text = (
        "\ufeff Locale ; E-Mail Address ; EMAIL \n"
        "\n"
        "uk;x;reader@example.com\n"
        ";;\n"
        ";;other@example.com\n"
    )
    job, report = do_import(db, text)
    assert (job.status, job.rows_read, job.added) == ("done", 2, 2)
    assert subscription_of(db, "reader@example.com").subscriber.locale == "uk"
    assert report == []


def test_row_numbers_count_blank_lines_and_quoted_line_breaks(db, newsletters):
    text = 'email,note\n\n"a@example.com","two\nlines"\nbroken,\n'
    job, report = do_import(db, text)
    assert [(r["row"], r["email"]) for r in report] == [("4", "broken")]


def test_counters_move_after_every_batch(db, newsletters):
    seen: list[int] = []
    text = "email\n" + "".join(f"reader{n}@example.com\n" for n in range(7))
    job, _ = do_import(db, text, batch_size=3, progress=seen.append)
    assert seen == [3, 6, 7]
    assert (job.rows_read, job.added) == (7, 7)


def test_a_helper_process_checks_addresses_of_big_files_with_the_same_result(db, newsletters):
    text = "email\n" + "".join(f"reader{n}@example.com\nbroken{n}\n" for n in range(30))
    job, report = do_import(db, text, batch_size=10, parallel_after=0)
    assert (job.rows_read, job.added, job.rejected) == (60, 30, 30)
    assert [r["row"] for r in report] == [str(n) for n in range(3, 62, 2)]
    assert report[0]["reason"] == "An email address must have an @-sign."


def test_a_stop_puts_the_job_back_in_the_queue(db, newsletters):
    stop = threading.Event()
    text = "email\n" + "".join(f"reader{n}@example.com\n" for n in range(5))
    job, _ = do_import(db, text, batch_size=2, progress=lambda rows: stop.set(), stop=stop)
    assert (job.status, job.rows_read, job.added) == ("queued", 2, 2)


def test_a_file_that_is_not_utf8_fails_with_a_clear_message(db, newsletters, tmp_path):
    path = tmp_path / "people.csv"
    path.write_bytes("email\nolena@example.com\nsl\xe4vik@example.com\n".encode("latin-1"))
    job = import_jobs.create_job(db.session, "daily", path.name, ImportMode.CONFIRM)
    with import_jobs.open_source(path) as source:
        importer.run(db.session, job, source, io.StringIO())
    assert job.status == "failed"
    assert job.error == csvfile.NotUTF8.message


def test_a_file_that_is_not_csv_fails_saying_where(db, newsletters):
    # A quote left open runs on to the end of the file, until the field is too long.
    text = 'email,name\na@example.com,x\n\nb@example.com,"O\n' + "x\n" * 70_000
    job, _ = do_import(db, text)
    assert job.status == "failed"
    assert job.error == (
        "The file is not valid CSV: field larger than field limit (131072), in row 4, "
        "which starts on line 4 (a quote left open?)."
    )


def test_a_file_without_line_breaks_is_not_read_whole(db, newsletters):
    job, report = do_import(db, "email," + "x" * 10_000_000)
    assert (job.status, job.error) == ("failed", csvfile.HeaderTooLong.message)
    assert count(db, Subscriber) == 0


def test_a_database_error_keeps_no_address_in_the_job(db, newsletters):
    table = ConsentEvent.__table__.name

    def drop_events(rows: int) -> None:
        db.session.execute(text(f"ALTER TABLE {table} RENAME TO away"))
        db.session.commit()

    rows = "email\n" + "".join(f"reader{n}@example.com\n" for n in range(4))
    try:
        with pytest.raises(Exception, match="away|consent_event"):
            do_import(db, rows, batch_size=2, progress=drop_events)
    finally:
        db.session.rollback()
        db.session.execute(text(f"ALTER TABLE away RENAME TO {table}"))
        db.session.commit()
    job = db.session.scalars(select(ImportJob)).one()
    assert (job.status, job.rows_read) == ("failed", 2)
    assert job.error.startswith("The import stopped on a database error (")
    assert "@" not in job.error


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def invoke(app):  # type: ignore[no-untyped-def]
    runner = app.test_cli_runner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, list(args))

    return run


@pytest.fixture
def people(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("email,name\nreader@example.com,R\nbroken,B\nother@example.com,O\n")
    return path


def test_command_imports_prints_progress_and_a_summary(app, db, invoke, newsletters, people):
    result = invoke("subscribers", "import", str(people), "--newsletter", "daily")
    assert result.exit_code == 0, result.output
    assert "Importing people.csv" in result.output
    assert "Import 1 into daily: 3 rows, 2 added, 0 unchanged, 1 rejected." in result.output
    report = Path(app.instance_path) / "imports" / "1-report.csv"
    assert f"Report: {report}" in result.output
    assert report.read_text(encoding="utf-8-sig").splitlines() == [
        "row,email,outcome,reason",
        "3,broken,invalid,An email address must have an @-sign.",
    ]
    audit = db.session.scalars(select(AuditEvent)).one()
    assert (audit.action, audit.admin_user_id) == ("import", None)
    assert audit.detail == {
        "job": 1,
        "newsletter": "daily",
        "mode": "confirm",
        "file": "people.csv",
    }
    assert count(db, OutboxMessage) == 2

    again = invoke("subscribers", "import", str(people), "--newsletter", "daily")
    assert "3 rows, 0 added, 2 unchanged, 1 rejected." in again.output


def test_command_imports_consented_people(db, invoke, newsletters, people):
    result = invoke(
        "subscribers", "import", str(people), "--newsletter", "culture", "--confirmed",
        "--consent-note", NOTE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    subscription = subscription_of(db, "other@example.com", "culture")
    assert subscription.status == "confirmed"
    assert ("confirmed", "import", NOTE) in trail(db, subscription)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.csv", "--newsletter", "daily"], 2, "does not exist"),
        (["{people}", "--newsletter", "nope"], 2, "no newsletter with slug 'nope'"),
        (["{people}", "--newsletter", "daily", "--confirmed"], 2, "needs a consent note"),
        (["{people}"], 2, "Missing option '--newsletter'"),
        (["{headless}", "--newsletter", "daily"], 1, "Import 1 failed: The file has no email"),
    ],
    ids=["missing-file", "unknown-newsletter", "no-consent-note", "no-newsletter", "no-column"],
)
def test_command_refuses_with_a_clear_message(
    db, invoke, newsletters, people, tmp_path, args, code, message
):
    headless = tmp_path / "headless.csv"
    headless.write_text("name\nReader\n")
    args = [a.format(people=people, headless=headless) for a in args]
    result = invoke("subscribers", "import", *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert count(db, Subscriber) == 0


# --- the worker -------------------------------------------------------------------------------


def queue_upload(  # type: ignore[no-untyped-def]
    app, db, text: str, slug: str = "daily", mode: ImportMode = ImportMode.CONFIRM
) -> ImportJob:
    """Queue a job as the admin upload does."""
    return import_jobs.queue_upload(
        db.session,
        lambda path: Path(path).write_text(text),
        app.instance_path,
        slug,
        "people.csv",
        mode,
        NOTE if mode == ImportMode.CONSENTED else None,
        None,
    )


def work(app, db) -> bool:  # type: ignore[no-untyped-def]
    """Run the next import job as the worker does, in a session of its own."""
    with db.session.session_factory() as session:
        found = import_jobs.ImportRunner(app.instance_path).step(session) > 0
    db.session.expire_all()
    return found


def test_the_worker_runs_queued_jobs_one_at_a_time(app, db, newsletters):
    first = queue_upload(app, db, "email\nreader@example.com\n")
    second = queue_upload(app, db, "email\nother@example.com\n", "culture")
    upload = import_jobs.upload_path(app.instance_path, first.id)
    assert upload.exists()

    assert work(app, db) is True
    assert (first.status, first.added) == ("done", 1)
    assert second.status == "queued"
    # The upload holds readers' data: gone once imported; the report stays.
    assert not upload.exists()
    assert import_jobs.report_path(app.instance_path, first.id).exists()

    assert work(app, db) is True
    assert work(app, db) is False
    assert second.status == "done"


def test_the_worker_fails_a_job_whose_file_is_gone(app, db, newsletters):
    job = queue_upload(app, db, "email\nreader@example.com\n")
    import_jobs.upload_path(app.instance_path, job.id).unlink()
    assert work(app, db) is True
    assert job.status == "failed" and "cannot be read" in job.error


def set_heartbeat(db, job: ImportJob, ago: timedelta, **values: object) -> None:  # type: ignore[no-untyped-def]
    """Move a job's last renewal into the past, as time passing without a word from its worker.

    Its lease runs out STALE_AFTER after that. A queued job made running this way is one a
    worker claimed.
    """
    db.session.refresh(job)
    if values.get("status") == "running" and job.claim is None:
        values.update(claim="dead-worker", attempts=job.attempts + 1)
    beat = utcnow() - ago
    db.session.execute(
        update(ImportJob)
        .where(ImportJob.id == job.id)
        .values(heartbeat_at=beat, next_attempt_at=beat + import_jobs.STALE_AFTER, **values)
    )
    db.session.commit()


def report_lines(app, job: ImportJob) -> list[str]:
    path = import_jobs.report_path(app.instance_path, job.id)
    return path.read_text(encoding="utf-8-sig").splitlines()


def test_a_job_whose_worker_died_is_taken_over_and_finished(app, db, newsletters):
    rows = [f"reader{n}@example.com" for n in range(10)] + ["broken"]
    job = queue_upload(app, db, "email\n" + "\n".join(rows) + "\n")
    # A worker claimed it, wrote the first four rows and died: its job says running.
    do_import(db, "email\n" + "\n".join(rows[:4]) + "\n")
    set_heartbeat(db, job, import_jobs.STALE_AFTER + timedelta(seconds=1), status="running",
                  rows_read=4, added=4)  # fmt: skip

    assert work(app, db) is True

    assert (job.status, job.error) == ("done", None)
    assert (job.rows_read, job.added, job.unchanged, job.rejected) == (11, 6, 4, 1)
    assert job.heartbeat_at > utcnow() - timedelta(minutes=1)
    assert count(db, Subscription) == 10
    # Rewritten from the top of the file: the rows the first worker added are unchanged now.
    assert report_lines(app, job) == [
        "row,email,outcome,reason",
        *(f"{n},reader{n - 2}@example.com,unchanged,already waiting for confirmation"
          for n in range(2, 6)),
        "12,broken,invalid,An email address must have an @-sign.",
    ]  # fmt: skip
    assert not import_jobs.upload_path(app.instance_path, job.id).exists()
    assert work(app, db) is False


def test_a_running_job_whose_worker_is_alive_is_left_alone(app, db, newsletters):
    job = queue_upload(app, db, "email\nreader@example.com\n")
    set_heartbeat(db, job, import_jobs.STALE_AFTER - timedelta(seconds=10), status="running")

    assert work(app, db) is False
    assert (job.status, job.rows_read) == ("running", 0)
    assert count(db, Subscriber) == 0
    # Ten seconds on, its lease has run out: the next worker takes it over.
    set_heartbeat(db, job, import_jobs.STALE_AFTER + timedelta(seconds=1))
    assert work(app, db) is True
    assert (job.status, job.added) == ("done", 1)


def test_a_stale_job_of_the_command_line_fails_asking_to_run_it_again(app, db, newsletters):
    job = import_jobs.create_job(db.session, "daily", "people.csv", ImportMode.CONFIRM)
    # The command line runs its job at once: no worker takes it from the queue meanwhile.
    assert (job.status, work(app, db)) == ("running", False)

    set_heartbeat(db, job, timedelta(hours=1))
    assert work(app, db) is False
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == import_jobs.ABANDONED
    assert "Run the import again" in job.error


@pytest.mark.parametrize("state", ["queued", "stale"])
def test_of_two_workers_that_claim_the_same_job_at_once_one_takes_it(
    app, db, newsletters, state, monkeypatch
):
    job = queue_upload(app, db, "email\nreader@example.com\n")
    if state == "stale":
        set_heartbeat(db, job, timedelta(hours=1), status="running")
    both_ready = threading.Barrier(2, timeout=10)
    claim = import_jobs.LEASES.claim

    def claim_when_both_are_ready(*args, **kwargs):  # type: ignore[no-untyped-def]
        both_ready.wait()
        return claim(*args, **kwargs)

    monkeypatch.setattr(import_jobs.LEASES, "claim", claim_when_both_are_ready)
    claimed: list[int | None] = []
    engine = db.engine

    def claimer() -> None:
        with Session(engine) as session:
            found = import_jobs.claim_next(session, app.instance_path)
            claimed.append(found.id if found else None)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed, key=str) == [job.id, None]
    db.session.expire_all()
    assert job.status == "running"


def test_concurrent_workers_claim_each_job_once(app, db, newsletters):
    jobs = [queue_upload(app, db, "email\nreader@example.com\n") for _ in range(12)]
    for job in jobs[::2]:
        set_heartbeat(db, job, timedelta(hours=1), status="running")
    claimed: list[int] = []
    start = threading.Barrier(4)
    engine = db.engine

    def claimer() -> None:
        with Session(engine) as session:
            start.wait()
            while found := import_jobs.claim_next(session, app.instance_path):
                claimed.append(found.id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [job.id for job in jobs]


def test_a_run_whose_job_was_taken_over_leaves_it_to_the_other(app, db, newsletters):
    text = "email\n" + "".join(f"reader{n}@example.com\n" for n in range(6))
    queue_upload(app, db, text)
    slow = import_jobs.claim_next(db.session, app.instance_path)
    taken: list[ImportJob] = []

    def stall(rows: int) -> None:
        # The slow worker hangs after its first batch; another one takes the job over.
        if not taken:
            set_heartbeat(db, slow, import_jobs.STALE_AFTER + timedelta(seconds=1))
            with Session(db.engine, expire_on_commit=False) as other:
                taken.append(import_jobs.claim_next(other, app.instance_path))

    report = io.StringIO()
    source = import_jobs.open_source(import_jobs.upload_path(app.instance_path, slow.id))
    with source:
        importer.run(db.session, slow, source, report, batch_size=2, progress=stall)
    assert taken[0].id == slow.id
    # The slow run's second batch found the job no longer its own: it rolled back, went no
    # further, and left the job's counters and state to the other worker.
    db.session.expire_all()
    assert (slow.status, slow.rows_read, slow.finished_at) == ("running", 2, None)
    assert count(db, Subscriber) == 2

    assert work(app, db) is False  # the other worker holds it, alive
    set_heartbeat(db, slow, import_jobs.STALE_AFTER + timedelta(seconds=1))
    assert work(app, db) is True
    assert (slow.status, slow.rows_read, slow.added, slow.unchanged) == ("done", 6, 4, 2)


def test_a_job_whose_report_cannot_be_written_fails_instead_of_running_on(
    app, db, newsletters, monkeypatch, caplog
):
    job = queue_upload(app, db, "email\nreader@example.com\n")

    def disk_full(path):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(import_jobs, "open_report", disk_full)
    assert work(app, db) is True
    assert job.status == "failed"
    assert job.error == "The import could not start: [Errno 28] No space left on device"
    assert import_jobs.upload_path(app.instance_path, job.id).exists()
    assert list(Path(app.instance_path, "imports").glob("*.part")) == []


def test_an_upload_whose_job_is_not_saved_leaves_no_file(app, db, newsletters, monkeypatch):
    def refused() -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(db.session, "commit", refused)
    with pytest.raises(RuntimeError):
        queue_upload(app, db, "email\nreader@example.com\n")
    monkeypatch.undo()
    assert count(db, ImportJob) == 0
    assert list(Path(app.instance_path, "imports").iterdir()) == []


@pytest.fixture
def run_worker(runner) -> Iterator[Callable[..., Result]]:  # type: ignore[no-untyped-def]
    """Invoke `newsletter worker`; puts back the signal handlers the command installs."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield lambda *args: runner.invoke(cli, ["worker", *args])
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_worker_command_imports_then_sends_the_confirmations(app, db, newsletters, run_worker):
    job_id = queue_upload(app, db, "email\nreader@example.com\nother@example.com\n").id
    result = run_worker("--drain")
    assert result.exit_code == 0, result.output
    assert result.output == "Messages handled: 2; waiting for a retry: 0.\n"
    job = db.session.get(ImportJob, job_id)
    assert (job.status, job.added) == ("done", 2)
    mails = [
        message_from_bytes(path.read_bytes(), policy=policy.default)
        for path in Path(app.config["OUTBOX_DIR"]).glob("*.eml")
    ]
    assert sorted(m["To"] for m in mails) == ["other@example.com", "reader@example.com"]
    assert all(len(links(m, "/confirm/")) == 1 for m in mails)


def test_a_killed_worker_s_import_is_finished_by_the_next_worker(app, db, newsletters, run_worker):
    total, every = 50_000, 1000  # every 1000th row is not an address
    rows = "".join(
        f"broken{n},\n" if n % every == 0 else f"reader{n}@example.com,Reader {n}\n"
        for n in range(1, total + 1)
    )
    job = queue_upload(app, db, "email,name\n" + rows, mode=ImportMode.CONSENTED)
    environ = {
        **os.environ,
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "NEWSLETTER_INSTANCE_PATH": app.instance_path,
        "NEWSLETTER_SECRET_KEY": "test-secret-key",
        "NEWSLETTER_BASE_URL": app.config["BASE_URL"],
    }
    command = [str(Path(sys.executable).with_name("newsletter")), "worker", "--poll", "0.1"]
    worker = subprocess.Popen(
        command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = db.session.execute(
                select(ImportJob.status, ImportJob.rows_read).where(ImportJob.id == job.id)
            ).one()
            db.session.rollback()
            if state.status != "queued" and state.rows_read >= 5 * importer.BATCH_SIZE:
                break
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        _, errors = worker.communicate(timeout=10)
    db.session.expire_all()
    assert job.status == "running", errors.decode()
    assert 0 < job.rows_read < total
    added_before = job.added
    assert count(db, Subscriber) == added_before

    # The stale limit passes without a word from the dead worker; the next worker takes over.
    set_heartbeat(db, job, import_jobs.STALE_AFTER + timedelta(seconds=1))
    job_id = job.id
    result = run_worker("--drain")
    assert result.exit_code == 0, result.output
    job = db.session.get(ImportJob, job_id)

    invalid = total // every
    assert (job.status, job.error) == ("done", None)
    assert (job.rows_read, job.rejected) == (total, invalid)
    assert (job.added, job.unchanged) == (total - invalid - added_before, added_before)
    # Every row once: one subscriber, one subscription, one signup and one confirmation each.
    assert count(db, Subscriber) == count(db, Subscription) == total - invalid
    assert count(db, ConsentEvent) == 2 * (total - invalid)
    assert db.session.scalar(
        select(func.count()).where(Subscriber.name == "Reader " + func.substr(
            Subscriber.email_key, 7, func.length(Subscriber.email_key) - 18))
    ) == total - invalid  # fmt: skip
    lines = report_lines(app, job)
    assert lines[0] == "row,email,outcome,reason"
    assert sum(line.endswith(",unchanged,already subscribed") for line in lines) == added_before
    assert [line for line in lines if ",invalid," in line] == [
        f"{n + 1},broken{n},invalid,An email address must have an @-sign."
        for n in range(every, total + 1, every)
    ]
    assert len(lines) == 1 + invalid + added_before
    folder = Path(app.instance_path, "imports")
    assert sorted(p.name for p in folder.iterdir()) == [f"{job.id}-report.csv"]


# --- the admin area ---------------------------------------------------------------------------


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"MAX_IMPORT_BYTES": 1024 * 1024}


def post_form(client, fields: dict[str, object]):  # type: ignore[no-untyped-def]
    """Post a multipart form built in memory (the test client's own spools big ones to files)."""
    boundary, body = encode_multipart(fields)
    return client.post(
        "/admin/imports", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def csv_file(content: bytes) -> FileStorage:
    return FileStorage(io.BytesIO(content), filename="people.csv", content_type="text/csv")


def upload(client, content: bytes, **fields: str):  # type: ignore[no-untyped-def]
    """Post the upload form as a browser does, with the page's CSRF token."""
    data = {
        "csrf_token": csrf_token(client, "/admin/imports"),
        "newsletter": "daily",
        "mode": "confirm",
        "consent_note": "",
        **fields,
        "file": csv_file(content),
    }
    return post_form(client, data)


@pytest.mark.parametrize("path", ["/admin/imports", "/admin/imports/1", "/admin/imports/1/report"])
def test_import_pages_send_strangers_to_sign_in(client, admin, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_editors_may_not_import(client, db, editor, newsletters):
    sign_in(client, "writer@news.example.org")
    assert client.get("/admin/imports").status_code == 403
    job = import_jobs.create_job(db.session, "daily", "people.csv", ImportMode.CONFIRM)
    for path in (f"/admin/imports/{job.id}", f"/admin/imports/{job.id}/report"):
        assert client.get(path).status_code == 403
    token = csrf_token(client, "/admin/")
    posted = post_form(
        client,
        {"csrf_token": token, "newsletter": "daily", "mode": "confirm",
         "file": csv_file(b"email\nreader@example.com\n")},
    )  # fmt: skip
    assert posted.status_code == 403
    assert count(db, ImportJob) == 1
    assert "/admin/imports" not in client.get("/admin/").get_data(as_text=True)


def test_admin_uploads_watches_and_downloads_the_report(app, client, db, admin, newsletters):
    sign_in(client)
    page = client.get("/admin/imports").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and "Daily Briefing" in page

    response = upload(client, b"email\nreader@example.com\n=cmd|' /C calc'!A0\n")
    assert response.status_code == 302
    job = db.session.scalars(select(ImportJob)).one()
    assert response.headers["Location"] == f"/admin/imports/{job.id}"
    assert (job.status, job.filename, job.admin_user_id) == ("queued", "people.csv", admin.id)
    assert import_jobs.upload_path(app.instance_path, job.id).exists()
    audit = db.session.scalars(select(AuditEvent)).one()
    assert (audit.action, audit.admin_user_id, audit.detail["job"]) == ("import", admin.id, job.id)

    waiting = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert "people.csv is queued" in waiting
    # While it waits or runs, the page's script fetches its figures again (no reload).
    assert "<div data-import-live data-working>" in waiting
    assert '<script src="/static/import-progress.js" defer></script>' in waiting
    assert "Queued" in waiting and "<progress" in waiting
    assert "Download the report" not in waiting

    assert work(app, db)
    done = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert "<div data-import-live>" in done
    assert "Done" in done and "Download the report" in done
    assert "<dt>Added</dt><dd>1</dd>" in done and "<dt>Rejected</dt><dd>1 " in done

    report = client.get(f"/admin/imports/{job.id}/report")
    try:
        lines = report.get_data().decode("utf-8-sig").splitlines()
    finally:
        report.close()  # a test response keeps the file open until closed
    assert report.status_code == 200
    assert report.mimetype == "text/csv"
    assert report.headers["Content-Disposition"] == (
        f"attachment; filename=import-{job.id}-report.csv"
    )
    assert lines[0] == "row,email,outcome,reason"
    assert lines[1].startswith("3,'=cmd|' /C calc'!A0,invalid,")
    actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["import", "import-report"]

    listing = client.get("/admin/imports").get_data(as_text=True)
    assert f'href="/admin/imports/{job.id}"' in listing and "people.csv" in listing


def test_the_import_page_shows_when_a_running_job_last_moved(app, client, db, admin, newsletters):
    sign_in(client)
    job = queue_upload(app, db, "email\nreader@example.com\n")
    set_heartbeat(db, job, timedelta(seconds=3), status="running", rows_read=2000)
    page = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert re.search(
        r"Running</strong>: 2,000 rows read[^;<]*; last moved [34] s ago, at [\d:]{8} UTC", page
    )
    assert "seems to have stopped" not in page

    set_heartbeat(db, job, timedelta(minutes=7))
    page = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert "last moved 7 min ago" in page
    assert "Its worker seems to have stopped." in page
    assert "once it has not moved for 5 min" in page

    work(app, db)
    page = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert "Done</strong>," in page and "last moved" not in page


def test_upload_without_csrf_token_is_refused(client, db, admin, newsletters):
    sign_in(client)
    response = post_form(
        client,
        {"newsletter": "daily", "mode": "confirm", "file": csv_file(b"email\nr@example.com\n")},
    )
    assert response.status_code == 400
    assert "This form has expired or was sent from another site" in response.get_data(as_text=True)
    assert count(db, ImportJob) == 0


@pytest.mark.parametrize(
    ("fields", "content", "message"),
    [
        ({"mode": "consented"}, b"email\nr@example.com\n", "Say how and when these people"),
        ({"newsletter": "nope"}, b"email\nr@example.com\n", "Not a valid choice"),
        ({}, None, "Choose a CSV file."),
    ],
    ids=["consented-without-note", "unknown-newsletter", "no-file"],
)
def test_bad_upload_is_shown_and_nothing_queued(
    client, db, admin, newsletters, fields, content, message
):
    sign_in(client)
    if content is None:
        data = {"csrf_token": csrf_token(client, "/admin/imports"), "newsletter": "daily",
                "mode": "confirm"}  # fmt: skip
        response = post_form(client, data)
    else:
        response = upload(client, content, **fields)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert count(db, ImportJob) == 0


def test_uploads_may_be_bigger_than_other_requests_up_to_their_own_limit(
    app, client, db, admin, newsletters
):
    sign_in(client)
    rows = b"".join(b"reader%d@example.com\n" % n for n in range(20_000))
    assert 256 * 1024 < len(rows) < 1024 * 1024
    assert upload(client, b"email\n" + rows).status_code == 302
    too_big = upload(client, b"email\n" + rows * 3)
    assert too_big.status_code == 413
    assert count(db, ImportJob) == 1
    assert [p.name for p in (Path(app.instance_path) / "imports").iterdir()] == ["1.csv"]


def test_a_failed_upload_can_run_again(app, client, db, admin, newsletters):
    sign_in(client)
    upload(client, b"name\nReader\n")
    job = db.session.scalars(select(ImportJob)).one()
    work(app, db)
    page = client.get(f"/admin/imports/{job.id}").get_data(as_text=True)
    assert "The file has no email column" in page and "Run it again" in page

    import_jobs.upload_path(app.instance_path, job.id).write_text("email\nreader@example.com\n")
    token = csrf_token(client, f"/admin/imports/{job.id}")
    response = client.post(f"/admin/imports/{job.id}/retry", data={"csrf_token": token})
    assert response.status_code == 302
    db.session.expire_all()
    assert job.status == "queued"
    work(app, db)
    assert (job.status, job.added) == ("done", 1)

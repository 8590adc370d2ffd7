"""The `newsletter` command."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from flask_migrate import upgrade

from newsletter import accounts, create_app, demo, exports, imports
from newsletter.extensions import db
from newsletter.mail import outbox, transport
from newsletter.models import ImportMode, JobStatus, Newsletter, Role, SubscriptionStatus
from newsletter.subscribers import Filter


@click.group(cls=FlaskGroup, create_app=create_app, add_default_commands=True)
def cli() -> None:
    """Run and manage the newsletter service."""


@cli.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the database tables (Alembic migrations)."""
    upgrade()
    click.echo(f"Database ready: {db.engine.url.render_as_string(hide_password=True)}")


@cli.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """Load the demo newsletters and news items; running it again changes nothing."""
    added_lists, added_items = demo.load(db.session)
    click.echo(f"Demo data: {added_lists} newsletters and {added_items} news items added.")


@cli.command("worker")
@click.option("--drain", is_flag=True, help="Send everything due, then exit.")
@click.option("--batch-size", default=50, show_default=True, help="Messages claimed at once.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between looks when idle.")
@with_appcontext
def worker(drain: bool, batch_size: int, poll: float) -> None:
    """Send queued mail and run queued imports until stopped (Ctrl-C or SIGTERM: clean stop)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = current_app.config
    mailer = transport.from_config(cfg["SMTP_URL"], cfg["OUTBOX_DIR"])
    settings = outbox.WorkerSettings(batch_size=batch_size, poll_interval=poll)
    stop = threading.Event()
    outbox.stop_on_signals(stop)
    where = "SMTP" if cfg["SMTP_URL"] else cfg["OUTBOX_DIR"]
    if not drain:
        click.echo(f"Worker sending to {where}; Ctrl-C to stop.")
    instance = current_app.instance_path
    handled = outbox.run(
        lambda: db.session,
        mailer,
        settings,
        drain=drain,
        stop=stop,
        between_batches=lambda: imports.run_next_job(lambda: db.session, instance, stop),
    )
    waiting = outbox.pending_count(db.session)
    click.echo(f"Messages handled: {handled}; waiting for a retry: {waiting}.")


@cli.command("create-admin")
@click.argument("email")
@click.option(
    "--password", help="Asked for when not given (better: it stays out of the shell history)."
)
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.ADMIN.value,
    show_default=True,
    help="admin: everything; editor: newsletters, items and digests.",
)
@with_appcontext
def create_admin(email: str, password: str | None, role: str) -> None:
    """Add an account for the admin area."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = accounts.create_admin(db.session, email, password, Role(role))
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Account {user.email} created ({user.role}).")


@cli.group("subscribers")
def subscribers() -> None:
    """Subscriber lists."""


@subscribers.command("export")
@click.option("--newsletter", "slug", help="Only this newsletter (its slug).")
@click.option(
    "--status",
    type=click.Choice([s.value for s in SubscriptionStatus]),
    help="Only subscriptions in this state.",
)
@with_appcontext
def export(slug: str | None, status: str | None) -> None:
    """Write subscriptions as CSV to standard output."""
    if slug and db.session.scalar(db.select(Newsletter.id).where(Newsletter.slug == slug)) is None:
        raise click.BadParameter(f"no newsletter with slug {slug!r}", param_hint="--newsletter")
    query = exports.subscriptions_query(Filter(newsletter=slug or "", status=status or ""))
    exports.write_csv(exports.subscription_rows(db.session, query), sys.stdout)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--newsletter", "slug", required=True, help="The newsletter to add them to (slug).")
@click.option(
    "--confirmed",
    is_flag=True,
    help="They consented elsewhere: confirm them at once, no mail. Needs --consent-note.",
)
@click.option("--consent-note", help="How and when they consented; kept in each consent trail.")
@with_appcontext
def import_subscribers(file: Path, slug: str, confirmed: bool, consent_note: str | None) -> None:
    """Add the addresses of a CSV file (an email column, by its header) to a newsletter.

    Without --confirmed each new subscription is pending and gets one confirmation mail,
    sent by the worker. Running the same file again changes nothing.
    """
    mode = ImportMode.CONSENTED if confirmed else ImportMode.CONFIRM
    try:
        job = imports.create_job(db.session, slug, file.name, mode, consent_note)
    except imports.UnknownNewsletter as exc:
        raise click.BadParameter(exc.message, param_hint="--newsletter") from exc
    except imports.ConsentNoteRequired as exc:
        raise click.UsageError(f"{exc.message} (--consent-note)") from exc
    report = imports.report_path(current_app.instance_path, job.id)
    with (
        imports.open_source(file) as source,
        imports.open_report(report) as out,
        click.progressbar(
            length=max(file.stat().st_size, 1),
            label=f"Importing {file.name}",
            item_show_func=lambda rows: f"{rows:,} rows" if rows else None,
        ) as bar,
    ):

        def progress(rows: int) -> None:
            # Bytes handed to the text decoder so far: the bar moves with the file.
            bar.update(source.buffer.tell() - bar.pos, rows)

        # A `kill` ends the import as Ctrl-C does: the job is marked as stopped, not left running.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            imports.run(db.session, job, source, out, progress)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if job.status == JobStatus.DONE:
            bar.update(bar.length - bar.pos)
    if job.status != JobStatus.DONE:
        raise click.ClickException(f"Import {job.id} failed: {job.error}")
    click.echo(
        f"Import {job.id} into {job.newsletter.slug}: {job.rows_read:,} rows, "
        f"{job.added:,} added, {job.unchanged:,} unchanged, {job.rejected:,} rejected."
    )
    click.echo(f"Report: {report}")

"""The `newsletter` command."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from flask_migrate import upgrade
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from newsletter import accounts, create_app, demo, exports, frequencies, metrics, newsletters
from newsletter import subscribers as people
from newsletter.bounces import ingest, sources
from newsletter.config import DEVELOPMENT_FILE, ConfigError
from newsletter.digests import feeds, progress, states
from newsletter.digests.sender import DigestSender
from newsletter.errors import UserError
from newsletter.extensions import db
from newsletter.imports import importer, jobs
from newsletter.links import Links
from newsletter.mail import dkim, outbox
from newsletter.models import (
    Digest,
    DigestStatus,
    ImportMode,
    JobStatus,
    Newsletter,
    Role,
    SubscriptionStatus,
    utcnow,
)
from newsletter.subscribers import Filter
from newsletter.worker import Settings, build, stop_on_signals


def _create_app() -> Flask:
    """The app for a command; a setting that cannot run it is one line on stderr and exit 2."""
    try:
        return create_app()
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=True)
def cli() -> None:
    """Run and manage the newsletter service."""


@cli.command("dev-instance")
@click.option("--base-url", required=True, help="Where the development server answers.")
@with_appcontext
def dev_instance(base_url: str) -> None:
    """Record that this instance is a development one (`make run` does), so the commands run
    beside it work on it as the server does; production instances never have this file."""
    path = Path(current_app.instance_path) / DEVELOPMENT_FILE
    path.write_text(
        "# Written by `make run`: commands run beside this instance use its settings.\n"
        f'ENV = "development"\nBASE_URL = {base_url!r}\n'
    )
    click.echo(f"Development instance in {current_app.instance_path}, answering at {base_url}.")


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
@click.option("--poll", default=0.5, show_default=True, help="Seconds between looks when idle.")
@with_appcontext
def worker(drain: bool, batch_size: int, poll: float) -> None:
    """Apply signups, send mail and digests, run imports and cadences until stopped (Ctrl-C,
    SIGTERM: clean)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = current_app.config
    metrics.serve(cfg)
    settings = Settings(
        poll_interval=poll, outbox=dataclasses.replace(outbox.POLICY, batch_size=batch_size)
    )
    process = build(cfg, lambda: db.session, settings)
    stop_on_signals(process.stop)
    where = "SMTP" if cfg["SMTP_URL"] else cfg["OUTBOX_DIR"]
    if not drain:
        click.echo(f"Worker sending to {where}; Ctrl-C to stop.")
    handled = process.run(drain=drain)
    waiting = outbox.pending_count(db.session)
    if handled["signups"]:
        click.echo(f"Signups applied: {handled['signups']}.")
    click.echo(f"Messages handled: {handled['outbox']}; waiting for a retry: {waiting}.")


def _digest(digest_id: int) -> Digest:
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise click.BadParameter(f"there is no digest {digest_id}", param_hint="DIGEST_ID")
    return digest


def _newsletter(slug: str, param_hint: str = "SLUG", *, open_only: bool = False) -> Newsletter:
    try:
        return newsletters.by_slug(db.session, slug, open_only=open_only)
    except newsletters.UnknownNewsletter as exc:
        raise click.BadParameter(exc.message, param_hint=param_hint) from exc


@cli.group("digest")
def digest_group() -> None:
    """Digests of news items: send, watch, pause, resume, cancel."""


@digest_group.command("send")
@click.argument("slug")
@click.option("--subject", help="The subject line (default: the list's name and top story).")
@click.option("--intro", default="", help="A few words above the items.")
@click.option(
    "--edition",
    help="Only this edition's readers (daily, weekly, or the list's cadence); default: every "
    "confirmed reader.",
)
@click.option("--wait", is_flag=True, help="Send from here with a progress bar until done.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="With --wait: give up watching after this many seconds (the workers go on).",
)
@with_appcontext
def digest_send(
    slug: str,
    subject: str | None,
    intro: str,
    edition: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Compose a digest of the newsletter's new items and send it to every confirmed reader.

    Without --wait the workers send it. With --wait this command sends too (workers that run
    share the work), shows a progress bar, and exits 0 once every reader got it, non-zero
    with the reason when mail failed, or the digest was paused or cancelled.
    """
    newsletter = _newsletter(slug)
    if edition is not None and edition not in frequencies.editions(newsletter):
        known = ", ".join(frequencies.editions(newsletter))
        raise click.ClickException(f"{slug} has no {edition!r} edition; its editions: {known}.")
    try:
        digest = states.compose(
            db.session, newsletter, subject=subject, intro=intro, frequency=edition
        )
        readers = states.start(db.session, digest)
    except states.DigestError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"Digest {digest.id} ({digest.subject!r}): {readers:,} readers.")
    if wait:
        _send_and_watch(digest, timeout)


def _send_and_watch(digest: Digest, timeout: float | None = None) -> None:
    process = build(current_app.config, lambda: db.session)
    sender: DigestSender = process.runner("digest sending")
    stop = process.stop
    stop_on_signals(stop)
    deadline = time.monotonic() + timeout if timeout is not None else None
    timed_out = False
    redraw_at = 0.0
    with click.progressbar(length=max(digest.recipients, 1), label="Sending") as bar:
        try:
            while not stop.is_set():
                if not sender.step(db.session, stop, only=digest.id):
                    states.finish_if_done(db.session, digest.id)
                    state = progress.progress(db.session, digest)
                    if state.finished or state.status == DigestStatus.PAUSED:
                        bar.update(state.done - bar.pos)
                        break
                    # Rows waiting for a retry, or held by another worker: say why it waits.
                    reason = progress.waiting_reason(db.session, digest.id)
                    bar.label = f"Waiting ({reason[:60]})" if reason else "Sending"
                    if deadline is not None and time.monotonic() >= deadline:
                        timed_out = True
                        break
                    stop.wait(0.5)
                # Counting the ledger costs a scan of the digest's rows: twice a second is
                # enough for a bar, once a batch would slow a big digest down.
                if time.monotonic() >= redraw_at:
                    redraw_at = time.monotonic() + 0.5
                    state = progress.progress(db.session, digest)
                    bar.update(state.done - bar.pos)
        finally:
            process.transport.close()
    state = progress.progress(db.session, digest)
    summary = f"{state.sent:,} sent, {state.failed:,} failed, {state.skipped:,} skipped"
    if (stop.is_set() or timed_out) and not state.finished:
        reason = progress.waiting_reason(db.session, digest.id)
        why = f"; last refusal: {reason}" if reason else ""
        raise click.ClickException(
            f"Stopped watching digest {digest.id} ({summary}, {state.queued:,} waiting{why}); "
            "the workers go on sending it."
        )
    if state.status != DigestStatus.SENT:
        raise click.ClickException(f"Digest {digest.id} is {state.status}: {summary}.")
    if state.failed:
        raise click.ClickException(f"Digest {digest.id} done, but not for everyone: {summary}.")
    click.echo(f"Digest {digest.id} sent: {summary}.")


@digest_group.command("list")
@click.option("--newsletter", "slug", help="Only this newsletter (its slug).")
@with_appcontext
def digest_list(slug: str | None) -> None:
    """The latest digests, newest first."""
    newsletter = _newsletter(slug) if slug else None
    for digest in states.recent(db.session, newsletter, limit=30):
        state = progress.progress(db.session, digest)
        click.echo(
            f"{digest.id:>6}  {_digest_of(digest):<20} {state.status:<10} "
            f"{state.sent:>9,} sent {state.failed:>7,} failed  {digest.subject}"
        )


def _digest_of(digest: Digest) -> str:
    """What a digest is of: its list's slug, or its combined edition."""
    if digest.newsletter is None:
        return f"combined-{digest.frequency}"
    return digest.newsletter.slug


@digest_group.command("status")
@click.argument("digest_id", type=int)
@with_appcontext
def digest_status(digest_id: int) -> None:
    """Where a digest stands."""
    digest = _digest(digest_id)
    state = progress.progress(db.session, digest).as_json(utcnow())
    click.echo(f"Digest {digest.id} of {_digest_of(digest)}: {digest.subject}")
    for key, value in state.items():
        click.echo(f"  {key.replace('_', ' ')}: {value if value is not None else '-'}")


def _digest_action(
    name: str, action: Callable[[Session, Digest], Digest], done: str, help: str
) -> None:
    @digest_group.command(name, help=help)
    @click.argument("digest_id", type=int)
    @with_appcontext
    def command(digest_id: int) -> None:
        digest = _digest(digest_id)
        try:
            action(db.session, digest)
        except states.DigestError as exc:
            raise click.ClickException(exc.message) from exc
        click.echo(f"Digest {digest.id} {done}.")


_digest_action("pause", states.pause, "paused: workers put back what they hold", "Pause a digest.")
_digest_action("resume", states.resume, "resumed", "Go on sending a paused digest.")
_digest_action(
    "cancel",
    states.cancel,
    "cancelled: nothing more of it is sent",
    "Send nothing more of a digest.",
)


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
        raise click.ClickException(exc.message) from exc
    click.echo(f"Account {user.email} created ({user.role}).")


@cli.group("items")
def items_group() -> None:
    """News items, the material of digests."""


@items_group.command("import")
@click.argument("source")
@click.option("--newsletter", "slug", required=True, help="The newsletter to add them to (slug).")
@with_appcontext
def import_items(source: str, slug: str) -> None:
    """Add the items of an RSS or Atom feed (a file or an http(s) URL) to a newsletter.

    Items already there (same guid or link) are not added again.
    """
    newsletter = _newsletter(slug, "--newsletter", open_only=True)
    try:
        added, already = feeds.import_feed(db.session, source, newsletter)
    except feeds.FeedError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{added} added, {already} already there")


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
    """Write subscriptions as CSV to standard output; the export is recorded in the audit trail."""
    if slug:
        _newsletter(slug, "--newsletter")
    where = Filter(newsletter=slug or "", status=status or "")
    exports.write_csv(exports.audited_rows(db.session, where, None), sys.stdout)


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
        job = jobs.create_job(db.session, slug, file.name, mode, consent_note)
    except newsletters.UnknownNewsletter as exc:
        raise click.BadParameter(exc.message, param_hint="--newsletter") from exc
    except jobs.ConsentNoteRequired as exc:
        raise click.UsageError(f"{exc.message} (--consent-note)") from exc
    report = jobs.report_path(current_app.instance_path, job.id)
    with (
        jobs.open_source(file) as source,
        jobs.open_report(report) as out,
        click.progressbar(
            length=max(file.stat().st_size, 1),
            label=f"Importing {file.name}",
            item_show_func=lambda rows: f"{rows:,} rows" if rows else None,
        ) as bar,
    ):

        def advance(rows: int) -> None:
            # Bytes handed to the text decoder so far: the bar moves with the file.
            bar.update(source.buffer.tell() - bar.pos, rows)

        # A `kill` ends the import as Ctrl-C does: the job is marked as stopped, not left running.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            importer.run(db.session, job, source, out, advance)
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


@cli.group("dkim")
def dkim_group() -> None:
    """DKIM keys for signing outgoing mail."""


@dkim_group.command("generate")
@click.option("--selector", required=True, help="The DKIM selector, e.g. news2025.")
@click.option("--domain", required=True, help="The signing domain (d=), e.g. example.org.")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa: 2048 bits, verified everywhere; ed25519: RFC 8463, not every receiver checks it.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (mode 0600). Default: instance/dkim-SELECTOR.pem.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@with_appcontext
def dkim_generate(
    selector: str, domain: str, algorithm: str, out: Path | None, force: bool
) -> None:
    """Make a DKIM key; print the DNS record to publish and the settings to use it."""
    try:
        pem, name, value = dkim.generate(selector, domain, algorithm)
    except dkim.DKIMConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    path = (out or Path(current_app.instance_path) / f"dkim-{selector}.pem").absolute()
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; use --force to replace it")
    _write_private(path, pem)
    strings = " ".join(f'"{part}"' for part in dkim.txt_strings(value))
    click.echo(f"Private key written to {path} (mode 0600).")
    click.echo("")
    click.echo("Publish this TXT record in DNS:")
    click.echo(f"  name:  {name}")
    click.echo(f"  value: {strings}")
    click.echo("")
    click.echo("Then set, and restart the web app and the workers:")
    click.echo(f"  NEWSLETTER_DKIM_PRIVATE_KEY={path}")
    click.echo(f"  NEWSLETTER_DKIM_SELECTOR={selector}")
    click.echo(f"  NEWSLETTER_DKIM_DOMAIN={domain}")


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, replacing any file there at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600: the key is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # a umask cannot widen it, but be exact
            file.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@cli.group("bounces")
def bounces_group() -> None:
    """Returned mail and complaints: read them in, lift a suppression."""


# sysexits.h: a pipe transport (Postfix's) keeps the message and tries again later.
EX_TEMPFAIL = 75


@bounces_group.command("ingest")
@click.argument("location", default="-")
@with_appcontext
def bounces_ingest(location: str) -> None:
    """Read returned mail: "-" (one message on standard input, as an MTA's pipe transport
    hands it), an mbox file, a Maildir (handled messages move to cur/), or an IMAP URL.

    Prints what each message was. Exits 75 (try again later) when a message from standard
    input could not be recorded, so the mail server keeps it.
    """
    cfg = current_app.config
    links = Links.from_config(cfg)
    rules = ingest.Rules.from_config(cfg)
    try:
        source = sources.open_source(location)
    except sources.SourceError as exc:
        raise click.BadParameter(exc.message, param_hint="LOCATION") from exc
    try:
        with source:
            counts = ingest.ingest_source(
                db.session, source, links, rules, ingest.source_name(source)
            )
    except (sources.SourceError, OSError) as exc:
        raise click.ClickException(str(getattr(exc, "message", exc))) from exc
    except SQLAlchemyError as exc:
        # The database is away: nothing was marked handled, the mail waits where it is.
        kind = type(getattr(exc, "orig", None) or exc).__name__
        click.echo(f"Error: the database cannot record returned mail now ({kind}).", err=True)
        sys.exit(EX_TEMPFAIL)
    if location == "-" and counts.get("error"):
        click.echo("The message could not be recorded; the mail server keeps it.", err=True)
        sys.exit(EX_TEMPFAIL)
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    click.echo(f"Returned mail read: {summary or 'none'}.")


@bounces_group.command("lift")
@click.argument("email")
@click.option("--why", required=True, help="Why mail may go to it again (kept in the audit trail).")
@with_appcontext
def bounces_lift(email: str, why: str) -> None:
    """Let a bounced or complained address be mailed again; its owner signs up anew."""
    try:
        reason = people.lift_suppression(db.session, email, None, why)
    except UserError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"The suppression of {email} ({reason}) is lifted.")

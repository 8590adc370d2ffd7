"""For operators: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cache
from typing import Any

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from newsletter import heartbeats, metrics
from newsletter.extensions import csrf, db, limiter
from newsletter.models import OutboxMessage, OutboxStatus, utcnow

bp = Blueprint("ops", __name__)
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
csrf.exempt(bp)
limiter.exempt(bp)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers; nothing else is asked."""
    return jsonify({"status": "alive"})


@cache
def _script_heads(directory: str) -> tuple[str, ...]:
    """The heads of the migration scripts shipped with this code (they do not change)."""
    return tuple(sorted(ScriptDirectory(directory).get_heads()))


def _check_database() -> dict[str, Any]:
    db.session.execute(text("SELECT 1"))
    return {"ok": True}


def _check_migrations() -> dict[str, Any]:
    wanted = _script_heads(current_app.extensions["migrate"].directory)
    context = MigrationContext.configure(db.session.connection())
    current = tuple(sorted(context.get_current_heads()))
    if current == wanted:
        return {"ok": True, "revision": ",".join(current)}
    have = ",".join(current) or "none"
    return {
        "ok": False,
        "detail": f"database at {have}, code at {','.join(wanted)}: run `newsletter db upgrade`",
    }


def _check_outbox() -> dict[str, Any]:
    limit = int(current_app.config["READY_OUTBOX_MAX_AGE"])
    now = utcnow()
    due_since = db.session.scalar(
        select(func.min(OutboxMessage.next_attempt_at)).where(
            OutboxMessage.status == OutboxStatus.QUEUED, OutboxMessage.next_attempt_at <= now
        )
    )
    if due_since is None:
        return {"ok": True, "oldest_due_seconds": 0}
    if due_since.tzinfo is None:  # SQLite through a plain select: naive UTC
        due_since = due_since.replace(tzinfo=now.tzinfo)
    waited = round((now - due_since).total_seconds())
    result: dict[str, Any] = {"ok": waited <= limit, "oldest_due_seconds": waited}
    if waited > limit:
        result["detail"] = f"a mail has waited {waited} s to be sent (limit {limit} s)"
    return result


def _check_workers() -> dict[str, Any]:
    within = int(current_app.config["READY_WORKER_WITHIN"])
    seen = heartbeats.recent(db.session, timedelta(seconds=within))
    if seen:
        return {"ok": True, "workers": len(seen)}
    return {"ok": False, "workers": 0, "detail": f"no worker seen in the last {within} s"}


_CHECKS = (
    ("database", _check_database),
    ("migrations", _check_migrations),
    ("outbox", _check_outbox),
    ("workers", _check_workers),
)


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: 200 when every check passes, 503 naming the ones that fail."""
    checks: dict[str, dict[str, Any]] = {}
    failing: list[str] = []
    for name, check in _CHECKS:
        if failing and failing[0] == "database":
            checks[name] = {"ok": None, "detail": "not checked: the database cannot be reached"}
            continue
        try:
            checks[name] = check()
        except SQLAlchemyError as exc:
            db.session.rollback()
            checks[name] = {"ok": False, "detail": _database_error(exc)}
        if checks[name]["ok"] is False:
            failing.append(name)
    db.session.rollback()
    body: dict[str, Any] = {"status": "not ready" if failing else "ready", "checks": checks}
    if failing:
        body["failing"] = failing
    return jsonify(body), 503 if failing else 200


def _database_error(exc: SQLAlchemyError) -> str:
    # The driver's first line says what went wrong; the rest can name hosts and users.
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {reason[0][:200] if reason else ''}"


@bp.get("/metrics")
def prometheus_metrics() -> Response | tuple[Response, int]:
    """Prometheus text: with NEWSLETTER_METRICS_TOKEN as a bearer token, unless on a port."""
    cfg = current_app.config
    token = cfg["METRICS_TOKEN"]
    if cfg["METRICS_PORT"] or (not token and cfg["ENV"] == "production"):
        # Served on a port of its own, or not configured: nothing to see here.
        return jsonify({"ok": False, "message": "There is no page at this address."}), 404
    if token and not metrics.authorised(request.headers.get("Authorization"), str(token)):
        response = jsonify({"ok": False, "message": "A bearer token is needed for the metrics."})
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, 401
    body = metrics.exposition(database_collector(current_app))
    return Response(body, content_type=metrics.CONTENT_TYPE)


def database_collector(app: Flask) -> metrics.DatabaseCollector:
    """The scrape-time figures read through the app's own engine."""
    within = timedelta(seconds=int(app.config["READY_WORKER_WITHIN"]))
    return metrics.DatabaseCollector(lambda: db.engine, within)


def init_app(app: Flask) -> None:
    """The operators' routes and the request timing every scrape reports."""
    app.register_blueprint(bp)

    @app.before_request
    def _start_clock() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            endpoint = request.endpoint or "unmatched"
            # Labels from what the client sends would let it grow the series without end.
            method = request.method if request.method in _METHODS else "other"
            _timer(endpoint, method).observe(time.perf_counter() - started)
        return response


@cache
def _timer(endpoint: str, method: str) -> Any:
    """The histogram of one endpoint and method; looked up once, not on each request."""
    return metrics.REQUEST_SECONDS.labels(endpoint, method)

"""The production web server's settings: `gunicorn -c gunicorn.conf.py` (see docs/production.md).

Every value can be overridden on gunicorn's command line or in GUNICORN_CMD_ARGS; the ones
below read the environment first where an operator is likely to change them.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

_instance = Path(os.environ.get("NEWSLETTER_INSTANCE_PATH") or Path.cwd() / "instance")

# Counters of all web processes (and of workers given the same folder) are added up at each
# scrape; the folder must be known before any process imports prometheus_client.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_instance / "prometheus"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], mode=0o700, exist_ok=True)

wsgi_app = "newsletter:create_app()"
bind = os.environ.get("NEWSLETTER_BIND", "127.0.0.1:8000")
# The usual rule for I/O-bound apps: two per core and one more; WEB_CONCURRENCY overrides it.
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count() * 2 + 1)
# Threads let a process wait on the database for one request while it serves another, and
# keep connections from the proxy alive (gunicorn's sync worker closes each one).
worker_class = "gthread"
threads = int(os.environ.get("NEWSLETTER_WEB_THREADS") or 4)
# A request that has not finished in 30 s has its process restarted; requests in flight get
# 30 s to finish on a restart or a stop.
timeout = 30
graceful_timeout = 30
keepalive = 5
# Request lines and headers bounded as a proxy would; uploads are bounded by the app.
limit_request_line = 8190
limit_request_fields = 100

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("NEWSLETTER_LOG_LEVEL", "info")
# One JSON object per line, tokens in paths and referrers shortened (newsletter/logs.py).
logger_class = "newsletter.logs.GunicornLogger"

# The app reads the client's address from X-Forwarded-For only when NEWSLETTER_TRUSTED_PROXIES
# says so (Werkzeug's ProxyFix): gunicorn believes no forwarded header itself.
forwarded_allow_ips = ""
# No control socket: two servers on one machine (a trial beside a service) would share it.
control_socket_disable = True
proc_name = "newsletter-web"


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Before any worker: tell the app how many there are, clear old counters, check settings."""
    # The app refuses SQLite or in-memory rate limits under several processes (config.py).
    os.environ["NEWSLETTER_WEB_PROCESSES"] = str(server.cfg.workers)
    from newsletter import metrics

    metrics.clear_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    from newsletter import create_app
    from newsletter.config import ConfigError

    try:
        app = create_app()
    except ConfigError as exc:
        # One clear line, not a traceback from every worker that fails to boot.
        print(f"newsletter: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    server.newsletter_config = dict(app.config)


def when_ready(server) -> None:  # type: ignore[no-untyped-def]
    """With NEWSLETTER_METRICS_PORT, the master serves every web process's metrics there."""
    config = getattr(server, "newsletter_config", None)
    if not config or not config.get("METRICS_PORT"):
        return
    from datetime import timedelta

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from newsletter import metrics

    # Its own engine, no pool: the master forks workers and must hold no open connection.
    engine = create_engine(config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool)
    within = timedelta(seconds=int(config["READY_WORKER_WITHIN"]))
    metrics.serve(config, metrics.DatabaseCollector(lambda: engine, within), every_process=True)


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """A worker is gone: its live gauges stop counting (counters keep what it counted)."""
    from newsletter import metrics

    metrics.process_exited(worker.pid)

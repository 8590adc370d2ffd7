"""Settings: defaults, then instance/config.py, then NEWSLETTER_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from newsletter.addresses import InvalidSender, sender_address

ENV_PREFIX = "NEWSLETTER_"
ENVIRONMENTS = ("development", "testing", "production")
# In the instance folder: the settings `make run` records for the commands run beside it.
DEVELOPMENT_FILE = "development.py"

DEFAULTS: dict[str, object] = {
    "ENV": "production",
    "BASE_URL": None,
    "SECRET_KEY": None,
    "SECRET_KEY_FALLBACKS": [],
    "DATABASE_URL": None,
    "SMTP_URL": None,
    "REDIS_URL": None,
    "CONFIRM_MAX_AGE": 7 * 24 * 3600,
    "CHECK_DELIVERABILITY": False,
    "CONFIRMATIONS_PER_ADDRESS": 3,
    "CONFIRMATION_WINDOW": 24 * 3600,
    "SUBSCRIBE_RATE_LIMIT": "20 per minute;200 per hour",
    # The preferences page: every request per IP, and the changes made through one reader's
    # link (it is in every mail and travels with each forward) from anywhere.
    "PREFERENCES_RATE_LIMIT": "30 per minute;300 per day",
    "PREFERENCES_LINK_RATE_LIMIT": "10 per hour;30 per day",
    # Failed sign-ins per (account, client address); from one address whatever the account;
    # and per account from everywhere, high enough that guesses from a few places do not lock
    # its owner out (see web/admin/auth.py).
    "LOGIN_RATE_LIMIT": "5 per minute;30 per day",
    "LOGIN_ADDRESS_RATE_LIMIT": "20 per minute;200 per day",
    "LOGIN_ACCOUNT_RATE_LIMIT": "200 per hour;1000 per day",
    # How many proxies in front of the app add X-Forwarded-For (and -Proto, -Host, X-Request-ID);
    # 0: those headers are ignored, so a client cannot choose the address it is counted under.
    "TRUSTED_PROXIES": 0,
    # How many web processes share the work; gunicorn.conf.py sets it for its workers.
    "WEB_PROCESSES": 1,
    # SQLite under several web processes works but serialises every write: say so to allow it.
    "ALLOW_SQLITE_MULTIPROCESS": False,
    # /metrics: a bearer token for the app's own route, or a port of its own (then no route).
    "METRICS_TOKEN": None,
    "METRICS_PORT": None,
    "METRICS_ADDRESS": "127.0.0.1",
    # Readiness: the oldest queued mail may wait this long before /readyz fails.
    "READY_OUTBOX_MAX_AGE": 600,
    "READY_WORKER_WITHIN": 60,
    # Host names (or IP networks) whose feeds may be fetched from a private network.
    "FEED_INTERNAL_HOSTS": [],
    "UNSUBSCRIBE_MAILTO": None,
    # Returned mail: the envelope sender of every mail (VERP-tagged), and where it is read.
    "BOUNCE_ADDRESS": None,
    "BOUNCE_IMAP_URL": None,
    "BOUNCE_POLL_SECONDS": 60,
    "SOFT_BOUNCE_LIMIT": 3,
    # Provider webhooks: a shared secret for Postmark (basic auth) and the generic JSON form
    # (HMAC-SHA256); the SNS topics whose SES notifications are taken.
    "BOUNCE_WEBHOOK_SECRET": None,
    "SES_TOPIC_ARNS": [],
    "LIST_ID_DOMAIN": None,
    # Unset: newsletter@ the base URL's host (newsletter@localhost when that is an IP address).
    # The admin's site settings (/admin/settings) override both.
    "DEFAULT_FROM_ADDRESS": None,
    "DEFAULT_FROM_NAME": "Newsletter",
    # How long a process trusts its copy of the site settings (name, logo, colour, address).
    "SITE_CACHE_SECONDS": 10,
    "ALLOWED_ORIGINS": [],
    # How long a process trusts its copy of the sites admins list at /admin/sites.
    "ALLOWED_ORIGINS_CACHE_SECONDS": 10,
    # The proof of work (ALTCHA) of the newsletters that ask for it: PBKDF2 rounds per try;
    # tries (the browser makes between ALTCHA_WORK and twice as many: about a second on a
    # computer, a few on an old phone); how long a challenge may be solved and sent.
    "ALTCHA_COST": 1000,
    "ALTCHA_WORK": 4000,
    "ALTCHA_LIFETIME": 20 * 60,
    "SEND_RATE": None,
    # Breaking alerts one reader gets at most in 24 hours, across all lists.
    "ALERTS_PER_DAY": 3,
    # Subscriber CSVs uploaded in the admin area; every other request keeps the small limit.
    "MAX_IMPORT_BYTES": 200 * 1024 * 1024,
    # DKIM signing of every mail: all three, or none.
    "DKIM_PRIVATE_KEY": None,
    "DKIM_SELECTOR": None,
    "DKIM_DOMAIN": None,
}

_INTS = {
    "CONFIRM_MAX_AGE",
    "CONFIRMATIONS_PER_ADDRESS",
    "CONFIRMATION_WINDOW",
    "TRUSTED_PROXIES",
    "WEB_PROCESSES",
    "MAX_IMPORT_BYTES",
    "BOUNCE_POLL_SECONDS",
    "SOFT_BOUNCE_LIMIT",
    "READY_OUTBOX_MAX_AGE",
    "READY_WORKER_WITHIN",
    "ALLOWED_ORIGINS_CACHE_SECONDS",
    "SITE_CACHE_SECONDS",
    "ALTCHA_COST",
    "ALTCHA_WORK",
    "ALTCHA_LIFETIME",
    "ALERTS_PER_DAY",
}
_OPTIONAL_INTS = {"METRICS_PORT"}
_BOOLS = {"CHECK_DELIVERABILITY", "ALLOW_SQLITE_MULTIPROCESS"}
_LISTS = {"SECRET_KEY_FALLBACKS", "ALLOWED_ORIGINS", "SES_TOPIC_ARNS", "FEED_INTERNAL_HOSTS"}
# Addresses mail goes out with or comes back to: checked, and kept in their ASCII form.
_ADDRESSES = ("DEFAULT_FROM_ADDRESS", "BOUNCE_ADDRESS", "UNSUBSCRIBE_MAILTO")
_FLOATS = {"SEND_RATE"}


class ConfigError(RuntimeError):
    """The configuration cannot run the app."""


def _parse(name: str, raw: str) -> object:
    if name in _INTS or name in _OPTIONAL_INTS:
        if name in _OPTIONAL_INTS and not raw.strip():
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name} must be a whole number, not {raw!r}") from None
    if name in _FLOATS:
        return float(raw) if raw else None
    if name in _BOOLS:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if name in _LISTS:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def from_environ(environ: os._Environ[str] | dict[str, str]) -> dict[str, object]:
    """Read every known NEWSLETTER_* variable into a settings dict."""
    found = {}
    for name in DEFAULTS:
        raw = environ.get(ENV_PREFIX + name)
        if raw is not None:
            found[name] = _parse(name, raw)
    return found


def site_host(base_url: str) -> str | None:
    """The base URL's host when it is a name a reader knows the site by: not an IP address,
    not localhost."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    if not host or host == "localhost" or "." not in host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def default_sender(base_url: str) -> str:
    """newsletter@ the base URL's host; newsletter@localhost for a trial on an IP address."""
    return f"newsletter@{site_host(base_url) or 'localhost'}"


def _dev_secret_key(instance: Path) -> str:
    """Generate the development secret key once and keep it in the instance folder."""
    path = instance / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def private_files(instance: Path) -> None:
    """What the service writes (SQLite, uploads, reports, mails, keys) is for its user only."""
    # The process's mask: every file created from here on, by any module, is 0600 at most.
    os.umask(0o077)
    instance.mkdir(parents=True, exist_ok=True)
    instance.chmod(0o700)


def finish(app: Flask) -> None:
    """Derive the settings Flask and its extensions read, and refuse unsafe production setups."""
    cfg = app.config
    instance = Path(app.instance_path)
    if cfg["ENV"] not in ENVIRONMENTS:
        raise ConfigError(f"NEWSLETTER_ENV must be one of {', '.join(ENVIRONMENTS)}")
    for name in _LISTS:
        if isinstance(cfg[name], str):
            cfg[name] = _parse(name, cfg[name])
        if not all(isinstance(item, str) for item in cfg[name]):
            raise ConfigError(f"{name} must be a list of strings")
    production = cfg["ENV"] == "production"
    private_files(instance)
    cfg["SQLALCHEMY_DATABASE_URI"] = (
        cfg["DATABASE_URL"] or f"sqlite:///{instance / 'newsletter.db'}"
    )
    if production:
        check_production(cfg)
    if not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = _dev_secret_key(instance)
    if not cfg["BASE_URL"]:
        cfg["BASE_URL"] = "http://127.0.0.1:5000"
    cfg["BASE_URL"] = str(cfg["BASE_URL"]).rstrip("/")
    if not cfg.get("DEFAULT_FROM_ADDRESS"):
        cfg["DEFAULT_FROM_ADDRESS"] = default_sender(cfg["BASE_URL"])
    for name in _ADDRESSES:
        if cfg.get(name):
            try:
                cfg[name] = sender_address(str(cfg[name]))
            except InvalidSender as exc:
                raise ConfigError(f"NEWSLETTER_{name}: {exc.message}") from exc
    cfg["INSTANCE_PATH"] = str(instance)
    cfg.setdefault("OUTBOX_DIR", str(instance / "outbox"))
    cfg["SQLALCHEMY_ENGINE_OPTIONS"] = _engine_options(cfg["SQLALCHEMY_DATABASE_URI"])
    cfg["RATELIMIT_STORAGE_URI"] = cfg["REDIS_URL"] or "newsletter-memory://"
    # Redis away: count in this process's memory rather than refuse signups (web/limits.py
    # says so in the log and the metrics); short timeouts so a lost Redis costs no request.
    cfg["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = True
    # A request already counting on Redis when another one switched to memory fails as well:
    # it goes through unlimited (and logged) rather than as a 500. The per-address cap is in
    # the database and holds either way.
    cfg["RATELIMIT_SWALLOW_ERRORS"] = True
    cfg.setdefault(
        "RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    )
    # Retry-After and X-RateLimit-* go on the 429 answer only (web/limits.py): on every
    # other answer they cost a second look at the storage and told the client nothing.
    cfg["RATELIMIT_HEADERS_ENABLED"] = False
    cfg.setdefault("RATELIMIT_KEY_PREFIX", "newsletter")
    cfg["SESSION_COOKIE_HTTPONLY"] = True
    cfg["SESSION_COOKIE_SAMESITE"] = "Lax"
    cfg["SESSION_COOKIE_SECURE"] = production
    cfg["REMEMBER_COOKIE_HTTPONLY"] = True
    cfg["REMEMBER_COOKIE_SECURE"] = production
    cfg["WTF_CSRF_TIME_LIMIT"] = None
    # Signups are a few hundred bytes; refuse floods before they are parsed.
    if cfg.get("MAX_CONTENT_LENGTH") is None:
        cfg["MAX_CONTENT_LENGTH"] = 256 * 1024
    # A key that cannot be used must stop the start, not let mail leave unsigned.
    # Imported here: the import's row-checking helper process loads this module and has no
    # use for OpenSSL and dkimpy.
    from newsletter.mail.dkim import DKIMConfigError, Signer, aligned

    try:
        signer = Signer.from_config(cfg)
    except DKIMConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if signer is not None and not aligned(str(cfg["DEFAULT_FROM_ADDRESS"]), signer.domain):
        app.logger.warning(
            "NEWSLETTER_DEFAULT_FROM_ADDRESS %s is not at the DKIM domain %s: mail from it "
            "fails DMARC alignment at large mailbox providers",
            cfg["DEFAULT_FROM_ADDRESS"],
            signer.domain,
        )


# Values from examples and tutorials: a key anyone can read signs nothing.
_PLACEHOLDER_KEYS = {
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "secret",
    "secret-key",
    "secretkey",
    "your-secret-key",
    "your_secret_key",
    "dev",
    "development",
    "test",
    "test-secret-key",
    "replace-me",
    "please-change-me",
    "default",
    "password",
}
MIN_SECRET_KEY_LENGTH = 32


def check_production(cfg: Mapping[str, Any]) -> None:
    """Refuse a production set-up that is unsafe or cannot work, one clear line per problem."""
    key = str(cfg.get("SECRET_KEY") or "")
    if not key:
        raise ConfigError("NEWSLETTER_SECRET_KEY must be set in production")
    placeholder = ConfigError(
        "NEWSLETTER_SECRET_KEY is a placeholder: set a long random value, "
        "e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )
    if key.strip().lower() in _PLACEHOLDER_KEYS:
        raise placeholder
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"NEWSLETTER_SECRET_KEY is too short ({len(key)} characters): "
            f"use at least {MIN_SECRET_KEY_LENGTH} random ones"
        )
    if len(set(key)) < 8:  # "xxxx…", "0000…": long, but nobody's secret
        raise placeholder
    base = str(cfg.get("BASE_URL") or "")
    if not base:
        raise ConfigError("NEWSLETTER_BASE_URL must be set in production")
    if not base.lower().startswith("https://"):
        raise ConfigError(
            f"NEWSLETTER_BASE_URL must be an https:// address in production, not {base[:100]!r}"
        )
    processes = int(cfg.get("WEB_PROCESSES") or 1)
    if processes > 1:
        url = str(cfg.get("SQLALCHEMY_DATABASE_URI") or "")
        if url.startswith("sqlite") and not cfg.get("ALLOW_SQLITE_MULTIPROCESS"):
            raise ConfigError(
                f"SQLite under {processes} web processes: use PostgreSQL "
                "(NEWSLETTER_DATABASE_URL), run one process, or set "
                "NEWSLETTER_ALLOW_SQLITE_MULTIPROCESS=1"
            )
        if not cfg.get("REDIS_URL"):
            raise ConfigError(
                f"Rate limits in memory under {processes} web processes would let each process "
                "count alone: set NEWSLETTER_REDIS_URL"
            )


# How long a connection to a SQLite file waits for the file's one write lock.
SQLITE_WAIT_SECONDS = 15


def in_memory(url: str) -> bool:
    """Whether a SQLite URL names a database in memory rather than a file."""
    return url.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in url or "mode=memory" in url


def _engine_options(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        # The web app and the worker share the file: wait for the lock instead of failing.
        # The pool hands out the connection used last: its page cache is the warm one (in
        # turn, each connection would find the file changed by the others and read it again).
        options: dict[str, object] = {"connect_args": {"timeout": SQLITE_WAIT_SECONDS}}
        if not in_memory(url):
            # A file's pool only: an in-memory database has one connection (a static pool).
            options["pool_use_lifo"] = True
        return options
    # A server that does not answer must not hold a request (or /readyz) for minutes.
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}

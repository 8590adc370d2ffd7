"""Settings: defaults, then instance/config.py, then NEWSLETTER_* environment variables."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Flask

ENV_PREFIX = "NEWSLETTER_"
ENVIRONMENTS = ("development", "testing", "production")

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
    "LOGIN_RATE_LIMIT": "10 per minute;50 per day",
    "PROXY_COUNT": 0,
    "UNSUBSCRIBE_MAILTO": None,
    "LIST_ID_DOMAIN": None,
    "DEFAULT_FROM_ADDRESS": "newsletter@localhost",
    "DEFAULT_FROM_NAME": "Newsletter",
    "ALLOWED_ORIGINS": [],
    # How long a process trusts its copy of the sites admins list at /admin/sites.
    "ALLOWED_ORIGINS_CACHE_SECONDS": 10,
    "SEND_RATE": None,
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
    "PROXY_COUNT",
    "MAX_IMPORT_BYTES",
    "ALLOWED_ORIGINS_CACHE_SECONDS",
}
_BOOLS = {"CHECK_DELIVERABILITY"}
_LISTS = {"SECRET_KEY_FALLBACKS", "ALLOWED_ORIGINS"}
_FLOATS = {"SEND_RATE"}


class ConfigError(RuntimeError):
    """The configuration cannot run the app."""


def _parse(name: str, raw: str) -> object:
    if name in _INTS:
        return int(raw)
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


def _dev_secret_key(instance: Path) -> str:
    """Generate the development secret key once and keep it in the instance folder."""
    path = instance / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


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
    if not cfg["SECRET_KEY"]:
        if production:
            raise ConfigError("NEWSLETTER_SECRET_KEY must be set in production")
        cfg["SECRET_KEY"] = _dev_secret_key(instance)
    if not cfg["BASE_URL"]:
        if production:
            raise ConfigError("NEWSLETTER_BASE_URL must be set in production")
        cfg["BASE_URL"] = "http://127.0.0.1:5000"
    cfg["BASE_URL"] = str(cfg["BASE_URL"]).rstrip("/")
    cfg.setdefault("OUTBOX_DIR", str(instance / "outbox"))
    cfg["SQLALCHEMY_DATABASE_URI"] = (
        cfg["DATABASE_URL"] or f"sqlite:///{instance / 'newsletter.db'}"
    )
    cfg["SQLALCHEMY_ENGINE_OPTIONS"] = _engine_options(cfg["SQLALCHEMY_DATABASE_URI"])
    cfg["RATELIMIT_STORAGE_URI"] = cfg["REDIS_URL"] or "memory://"
    cfg["RATELIMIT_HEADERS_ENABLED"] = True
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


def _engine_options(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        # The web app and the worker share the file: wait for the lock instead of failing.
        return {"connect_args": {"timeout": 15}}
    return {"pool_pre_ping": True}

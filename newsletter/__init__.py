"""A self-hosted newsletter backend: signups, double opt-in, one-click unsubscribe, digests."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from itsdangerous import URLSafeTimedSerializer
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.middleware.proxy_fix import ProxyFix

from newsletter import config as settings
from newsletter import logs
from newsletter.extensions import csrf, db, limiter, login, migrate

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> str:
    """Where templates/ or migrations/ live: inside an installed wheel, or beside the package."""
    inside = _PACKAGE / name
    return str(inside if inside.is_dir() else _PACKAGE.parent / name)


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signer built once per set of keys: Flask
    builds it afresh when it opens a session and again when it saves one, on every request,
    also on those (a signup) that never touch the session."""

    def __init__(self) -> None:
        self._signer: tuple[object, URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        if self._signer is None or self._signer[0] != keys:
            self._signer = (keys, super().get_signing_serializer(app))
        return self._signer[1]

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if "HTTP_COOKIE" not in request.environ and self.get_signing_serializer(app) is not None:
            # No cookie at all (a signup box posting from another site): an empty session,
            # as Flask would find after parsing the cookies.
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not session and not session.modified:
            # Nothing to write or delete (a signup): Flask would first work out the cookie's
            # name, domain, path and flags.
            if session.accessed:
                response.vary.add("Cookie")
            return
        super().save_session(app, session, response)


class Fields(ImmutableMultiDict[str, str]):
    """A request's form or query fields. Werkzeug's `get` of an absent field raises and
    catches an HTTP error (BadRequestKeyError) to say so; a signup asks for half a dozen
    fields that a box may leave out."""

    def get(self, key: str, default: Any = None, type: Any = None) -> Any:  # noqa: A002
        if key not in self:
            return default
        return super().get(key, default, type)


class AppRequest(Request):
    parameter_storage_class = Fields


class App(Flask):
    """The app's Flask: it asks whether a hook or view is a coroutine function once, not
    for each hook on each request (some twenty times for a signup)."""

    request_class = AppRequest
    MAX_CHECKED = 1024  # callables made per request (after_this_request) are not kept

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session_interface = CookieSessions()
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except (KeyError, TypeError):
            pass
        found = super().ensure_sync(func)
        if len(self._sync) < self.MAX_CHECKED:
            try:
                self._sync[func] = found
            except TypeError:
                pass  # not hashable: checked each time
        return found


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Create the web app: defaults, instance config, environment, test override, extensions."""
    instance_path = os.environ.get("NEWSLETTER_INSTANCE_PATH") or str(Path.cwd() / "instance")
    if config and config.get("INSTANCE_PATH"):
        instance_path = str(config["INSTANCE_PATH"])
    app = App(
        __name__,
        instance_path=instance_path,
        instance_relative_config=True,
        template_folder=resource_dir("templates"),
    )
    app.config.from_mapping(settings.DEFAULTS)
    # Written by `make run`: the instance is a development one, so every command run beside
    # it (a second terminal's `newsletter create-admin`) works on it as the server does.
    app.config.from_pyfile(settings.DEVELOPMENT_FILE, silent=True)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_mapping(settings.from_environ(os.environ))
    if config:
        app.config.from_mapping(config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    settings.finish(app)

    if app.config["TRUSTED_PROXIES"]:
        # Only then are X-Forwarded-* believed: otherwise any client could pick its address.
        n = int(app.config["TRUSTED_PROXIES"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    logs.init_app(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=resource_dir("migrations"), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    # The signed-in account is given to the admin's templates only (web/admin/core.py).
    login.init_app(app, add_context_processor=False)
    # Imported here: the import's checker process loads this package without the models.
    from newsletter import site

    site.init_app(app)

    from newsletter.web import (
        admin,
        api,
        archive,
        bodies,
        challenge,
        cors,
        errors,
        hooks,
        language,
        limits,
        mailbox,
        ops,
        public,
        security,
    )

    bodies.init_app(app)
    language.init_app(app)
    errors.register(app)
    cors.register(app)
    challenge.init_app(app)
    security.init_app(app)
    limits.init_app(app)
    ops.init_app(app)
    app.register_blueprint(public.bp)
    app.register_blueprint(archive.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(hooks.bp)
    admin.register(app)
    if app.config["ENV"] == "development":
        app.register_blueprint(mailbox.bp)
    _sqlite_pragmas(app)
    return app


def _sqlite_pragmas(app: Flask) -> None:
    """Put SQLite in WAL mode so the web app and the worker read and write side by side."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={settings.SQLITE_WAIT_SECONDS * 1000}")
        cursor.close()

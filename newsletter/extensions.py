"""Flask extensions, created unbound and bound to an app in create_app."""

from __future__ import annotations

import time

from flask_babel import Babel, lazy_gettext
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from limits.storage import MemoryStorage
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Named constraints let Alembic alter them later, also on SQLite (batch mode).
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class SweptMemoryStorage(MemoryStorage):
    """limits' in-process storage (`newsletter-memory://`, used when no Redis is set) without
    its timer thread: that storage starts a thread 10 ms after each idle spell to drop expired
    counts, which under steady traffic cost about 1 ms per request. Here they are dropped in
    passing, at most once a second; a count past its expiry never counts anyway."""

    STORAGE_SCHEME = ["newsletter-memory"]
    SWEEP_EVERY = 1.0  # seconds

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()
        self._swept = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._swept >= self.SWEEP_EVERY:
            self._swept = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
login = LoginManager()
login.login_view = "admin.login"
login.login_message = lazy_gettext("Please sign in to see that page.")
# Flashed messages are kept in the session cookie: as text in the editor's language.
login.localize_callback = str
babel = Babel()

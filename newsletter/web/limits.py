"""Rate limits: the signup boxes' shared budget counted at little cost, and what happens when
Redis is away (counted in memory, said in the log and the metrics)."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import flask_limiter._limits
from flask import Flask, Response, current_app, request
from flask.globals import request_ctx
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.util import parse_many

from newsletter import metrics
from newsletter.extensions import limiter

log = logging.getLogger(__name__)
# Flask-Limiter parses a route's limits from their text ("20 per minute;200 per hour") on
# every request; the parsed limits of a text do not change.
_parsed = functools.lru_cache(maxsize=64)(parse_many)
flask_limiter._limits.parse_many = _parsed
WARN_EVERY = 60.0  # seconds
# Where Flask-Limiter keeps its state for a request it checked, on the request's context.
_KEPT = "_limiter_request_context"
_STORAGE_DOWN = "Rate limit storage unreachable"


class _QuietFallbackNotice(logging.Filter):
    """Flask-Limiter's own notice, once per outage; ours below says it once a minute instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_STORAGE_DOWN)


class FallbackWatch:
    """Counts requests limited in memory and warns about it at most once a minute."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every = every
        self._warned_at = float("-inf")
        self._lock = threading.Lock()

    def seen(self) -> None:
        metrics.RATELIMIT_FALLBACK.inc()
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < self.every:
                return
            self._warned_at = now
        log.warning(
            "Redis (NEWSLETTER_REDIS_URL) cannot be reached: rate limits are counted in this "
            "process's memory until it is back"
        )


View = TypeVar("View", bound=Callable[..., Any])


def shared_limit(
    text: Callable[[], str], scope: str, methods: Sequence[str] = ("POST",)
) -> Callable[[View], View]:
    """Flask-Limiter's `shared_limit` for routes that must answer fast (the signup boxes).

    Flask-Limiter resolves a route's limits on every request (exemption scopes, default,
    blueprint and meta limits) at about a tenth of a millisecond, as much as a signup's own
    INSERT. While its storage answers and the request is within its limits, the request is
    counted here instead: the same limits, under the same keys, by the limiter's own
    strategy. Anything else (a limit reached, the storage away or replaced by the in-memory
    fallback, limits switched off) goes through Flask-Limiter's check as on every other
    route, which answers the 429, switches to memory and back, and tells the log.
    """

    def decorate(view: View) -> View:
        checked = limiter.shared_limit(text, scope=scope, methods=list(methods))(view)

        @functools.wraps(view)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if request.method in methods and _counted(text(), scope):
                return view(*args, **kwargs)
            return checked(*args, **kwargs)

        return counted  # type: ignore[return-value]

    return decorate


def _counted(text: str, scope: str) -> bool:
    """Count this request against the limits of `text`; False when Flask-Limiter is to
    decide (over a limit it counts the request again, as a refused one: no harm done)."""
    if not limiter.enabled or on_fallback():
        return False
    prefix = current_app.config.get("RATELIMIT_KEY_PREFIX")
    keys = (prefix, get_remote_address(), scope) if prefix else (get_remote_address(), scope)
    strategy = limiter.limiter
    try:
        return all(strategy.hit(item, *keys) for item in sorted(_parsed(text)))
    except Exception:  # the storage failed: Flask-Limiter's check falls back to memory
        return False


def breach_headers() -> dict[str, str]:
    """Retry-After and X-RateLimit-* for the answer to a request over its limit: when the
    limit's window lets the client in again, and how many it allows."""
    broken = limiter.current_limit
    if broken is None:
        return {}
    try:
        reset_at, remaining = broken.window
    except Exception:  # the storage went away in between: say when to retry all the same
        log.warning("rate limit storage unreachable while answering 429", exc_info=True)
        return {"Retry-After": str(int(broken.limit.get_expiry()))}
    return {
        "Retry-After": str(max(1, math.ceil(reset_at - time.time()))),
        "X-RateLimit-Limit": str(broken.limit.amount),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.ceil(reset_at)),
    }


def on_fallback() -> bool:
    """Whether the limiter now counts in memory instead of its configured storage."""
    return limiter.limiter.storage is not limiter.storage


def _check_when_limits_apply(app: Flask) -> None:
    """Flask-Limiter checks every request before its view for app-wide, default and
    blueprint limits. This app sets none (its limits are on routes, checked by their
    decorators), so on every request the check found nothing, at a tenth of a millisecond;
    it now runs only while such a limit is set (RATELIMIT_DEFAULT or RATELIMIT_APPLICATION
    in the instance config, a limit on a blueprint)."""
    hooks = app.before_request_funcs.get(None, [])
    check = limiter._check_request_limit
    if check not in hooks:
        return
    manager = limiter.limit_manager

    def _check_app_limits() -> None:
        if (
            manager._default_limits
            or manager._application_limits
            or manager._blueprint_limits
            or limiter._meta_limits
        ):
            check()

    hooks[hooks.index(check)] = _check_app_limits


def _after_only_where_it_checked(app: Flask) -> None:
    """Flask-Limiter's step after each answer (its `deduct_when` counts, its headers) and at
    the end of each request (forgetting what it kept for it) have work only where it checked
    the request and so kept its state on it: they run there only. A signup counted above,
    or a page no limit applies to, skips both, which had cost as much as its validation."""
    after = app.after_request_funcs.get(None, [])
    inject = next(
        (f for f in after if getattr(f, "func", None) is Limiter._Limiter__inject_headers), None
    )
    if inject is not None:

        def _inject_headers(response: Response) -> Response:
            return inject(response) if hasattr(request_ctx, _KEPT) else response

        after[after.index(inject)] = _inject_headers
    teardown = app.teardown_request_funcs.get(None, [])
    release = limiter._Limiter__release_context
    if release in teardown:

        def _release_context(exc: BaseException | None = None) -> None:
            if hasattr(request_ctx, _KEPT):
                release(exc)

        teardown[teardown.index(release)] = _release_context


def init_app(app: Flask) -> None:
    """Watch every rate-limited request for the in-memory fallback."""
    _check_when_limits_apply(app)
    _after_only_where_it_checked(app)
    flask_limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(f, _QuietFallbackNotice) for f in flask_limiter_log.filters):
        flask_limiter_log.addFilter(_QuietFallbackNotice())
    watch = FallbackWatch()
    app.extensions["newsletter.limit_fallback"] = watch

    @app.after_request
    def _watch(response: Response) -> Response:
        if on_fallback() and limiter.current_limits:
            watch.seen()
        return response

"""Logs: one JSON object per line in production, a request id on each, no reader's secrets."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from typing import Any, TextIO

from flask import Flask, Response, g, has_request_context, request
from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

# Tokens in reader links: the first characters tell rows apart, the rest would open them.
TOKEN_SHOWN = 8
_LINK_TOKEN = re.compile(r"(/(?:confirm|unsubscribe|preferences)/)([^/?#\s\"']+)")
# Any other long opaque path segment or VERP tag (bounces+TAG@…): signed tokens are this long.
_LONG_SEGMENT = re.compile(r"(?<=[/=+])([A-Za-z0-9_\-.~]{24,})")
_EMAIL = re.compile(r"([\w.!#$%&'*+/=?^`{|}~-]+)@((?:[\w-]+\.)+[\w-]{2,})", re.UNICODE)
_SECRET_FIELD = re.compile(r"(?i)\b(password|passwd|secret|token)(\s*[=:]\s*)([^\s&,;\"']+)")
# X-Request-ID from a trusted proxy is kept when it looks like one; anything else is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"


def short_token(token: str) -> str:
    """A token cut to its first characters, enough to tell two apart in a log."""
    return token if len(token) <= TOKEN_SHOWN else token[:TOKEN_SHOWN] + "\u2026"


def mask_email(address: str) -> str:
    """j***@example.org: the domain stays readable, the person does not."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else address


def mask(text: str) -> str:
    """Text fit for a log: tokens shortened, addresses' local parts and secret values hidden."""
    if not text:
        return text
    text = _LINK_TOKEN.sub(lambda m: m.group(1) + short_token(m.group(2)), text)
    text = _LONG_SEGMENT.sub(lambda m: short_token(m.group(1)), text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + m.group(2) + "***", text)


class MaskFilter(logging.Filter):
    """The safety net: whatever a module logs, the line leaves with tokens and addresses masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class RequestIdFilter(logging.Filter):
    """Stamp each record written during a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


class Formatter(JsonFormatter):
    """python-json-logger's formatter, with tracebacks masked like messages."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}{process}{request_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def, override]
        return mask(str(super().formatException(ei)))


class _StandardError(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes, as logging's last resort does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    """A handler writing masked JSON lines to `stream` (standard error by default)."""
    handler = logging.StreamHandler(stream) if stream is not None else _StandardError()
    handler.setFormatter(Formatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(MaskFilter())
    handler._newsletter = True  # type: ignore[attr-defined]
    return handler


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records through one JSON handler on the root logger; idempotent."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_newsletter", False):
            root.removeHandler(old)
    handler = json_handler(stream)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def init_app(app: Flask) -> None:
    """JSON logs in production; a request id for every request, whatever the mode."""
    if app.config["ENV"] == "production":
        configure()
    trusted = int(app.config["TRUSTED_PROXIES"]) > 0

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "") if trusted else ""
        g.request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with its error log as JSON and one JSON object per request."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(Formatter())
            handler.addFilter(RequestIdFilter())
            handler.addFilter(MaskFilter())
        for handler in self.access_log.handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            headers = dict((name.lower(), value) for name, value in resp.headers)
            query = environ.get("QUERY_STRING") or ""
            status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
            line = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "logger": "gunicorn.access",
                "remote_addr": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"),
                "path": mask(environ.get("PATH_INFO") or ""),
                "query": mask(query) if query else None,
                "status": int(status),
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 1),
                "referer": mask(environ.get("HTTP_REFERER") or "") or None,
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "request_id": headers.get(REQUEST_ID_HEADER.lower()),
                "process": os.getpid(),
            }
            self.access_log.info(json.dumps(line, ensure_ascii=False))
        except Exception:
            self.error_log.exception("cannot write the access log line")

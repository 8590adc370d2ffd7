"""Request bodies bounded on every server, whatever their transfer encoding.

A body with a Content-Length over the limit (`MAX_CONTENT_LENGTH`; the import upload's
`MAX_IMPORT_BYTES`) is refused with 413 before anything reads it. A chunked body has no
length to check: Werkzeug's stream would stop at the limit and hand the form parser the first
part of it as if it were all, so here it is read first, up to one byte past the limit, into
a spooled file: over the limit it gets a 413 as well, within it the app reads it as if it
had been sent with its length. What a server does after the answer with a body it did not
read is bounded too: gunicorn drains at most 64 KiB and closes, and on Werkzeug's development
server (`newsletter run`, `make run`), which would read on up to 10 GB, the connection stops
taking data once the answer is out.
"""

from __future__ import annotations

import io
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

# The one path whose body may be larger: the admin's CSV upload (web/admin/imports.py).
IMPORT_PATH = "/admin/imports"
# Set in the WSGI environment when a body is over the limit, declared or chunked.
TOO_LARGE = "newsletter.body_too_large"
# A chunked body is kept in memory up to this size, in a temporary file past it.
SPOOL_BYTES = 1024 * 1024

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def limit_for(config: dict[str, Any], path: str) -> int | None:
    """The most bytes a request to this path may send."""
    if path == IMPORT_PATH:
        return int(config["MAX_IMPORT_BYTES"])
    limit = config.get("MAX_CONTENT_LENGTH")
    return int(limit) if limit is not None else None


def _spool(stream: IO[bytes], limit: int) -> tuple[IO[bytes], int] | None:
    """The whole of a body read into a spooled file and its length, or None past `limit`."""
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    size = 0
    while size <= limit:
        data = stream.read(min(65536, limit + 1 - size))
        if not data:
            body.seek(0)
            return body, size
        body.write(data)
        size += len(data)
    body.close()
    return None


class BoundedBodies:
    """WSGI middleware: a chunked body read up to the limit, and the development server's
    reading stopped after the answer to a body over it."""

    def __init__(self, app: WSGIApp, config: dict[str, Any]) -> None:
        self.app = app
        self.config = config

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = limit_for(self.config, environ.get("PATH_INFO", ""))
        if limit is None:
            return self.app(environ, start_response)
        declared = environ.get("CONTENT_LENGTH") or ""
        too_large = declared.isdigit() and int(declared) > limit
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not declared:
            spooled = _spool(environ["wsgi.input"], limit)
            if spooled is None:
                too_large = True
                environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(), "0"
            else:
                environ["wsgi.input"], size = spooled
                environ["CONTENT_LENGTH"] = str(size)
        if too_large:
            environ[TOO_LARGE] = True
        result = self.app(environ, start_response)
        sock = environ.get("werkzeug.socket")
        if too_large and sock is not None:
            return _then_stop_reading(result, sock)
        return result


def _then_stop_reading(result: Iterable[bytes], sock: socket.socket) -> Iterator[bytes]:
    try:
        yield from result
        # The answer is written: the server's drain that follows now reads nothing, and the
        # client's further sending fails instead of being read to the end.
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _refuse_too_large() -> None:
    """A body over the limit (found by `BoundedBodies`): 413 at once, whatever the endpoint
    reads."""
    if request.environ.get(TOO_LARGE):
        raise RequestEntityTooLarge()


def init_app(app: Flask) -> None:
    """Refuse bodies over the limit first of all, whatever the server and the encoding."""
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_too_large)
    app.wsgi_app = BoundedBodies(app.wsgi_app, app.config)  # type: ignore[method-assign]

"""Request bodies bounded on every server, whatever their transfer encoding.

Flask reads a body through a stream that stops at `MAX_CONTENT_LENGTH` (the import upload's
`MAX_IMPORT_BYTES`) and answers 413, for a chunked body too: both servers we document say
they end the stream themselves (`wsgi.input_terminated`). What neither the app nor that
limit covers is what the server does with a body the app did not read: gunicorn drains at
most 64 KiB of it and closes the connection, but Werkzeug's development server (`newsletter
run`, `make run`) reads up to 10 GB of it after the answer. Here a body declared larger than
the limit is refused before anything reads it, and on the development server the rest of a
body over the limit is left unread: its connection stops taking data once the answer is out.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

# The one path whose body may be larger: the admin's CSV upload (web/admin/imports.py).
IMPORT_PATH = "/admin/imports"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def limit_for(config: dict[str, Any], path: str) -> int | None:
    """The most bytes a request to this path may send."""
    if path == IMPORT_PATH:
        return int(config["MAX_IMPORT_BYTES"])
    limit = config.get("MAX_CONTENT_LENGTH")
    return int(limit) if limit is not None else None


class _Counting:
    """The server's input stream, counting what the app reads of it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.stream.readline(size)
        self.read_bytes += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class DevServerBound:
    """WSGI middleware for Werkzeug's development server: a body over the limit is not
    drained after the answer."""

    def __init__(self, app: WSGIApp, config: dict[str, Any]) -> None:
        self.app = app
        self.config = config

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return self.app(environ, start_response)
        limit = limit_for(self.config, environ.get("PATH_INFO", ""))
        if limit is None:
            return self.app(environ, start_response)
        counting = _Counting(environ["wsgi.input"])
        environ["wsgi.input"] = counting
        declared = environ.get("CONTENT_LENGTH") or ""
        too_large = declared.isdigit() and int(declared) > limit

        def over() -> bool:
            return too_large or counting.read_bytes >= limit

        return _then_stop_reading(self.app(environ, start_response), sock, over)


def _then_stop_reading(
    result: Iterable[bytes], sock: socket.socket, over: Callable[[], bool]
) -> Iterator[bytes]:
    try:
        yield from result
        if over():
            # The answer is written: the server's drain that follows now reads nothing,
            # and the client's further sending fails instead of being read to the end.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _refuse_declared_too_large() -> None:
    """A body declared larger than the limit: 413 at once, whatever the endpoint reads."""
    length = request.content_length
    if length is None:
        return
    limit = limit_for(current_app.config, request.path)
    if limit is not None and length > limit:
        raise RequestEntityTooLarge()


def init_app(app: Flask) -> None:
    """Refuse bodies declared too large first of all; bound the development server."""
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_declared_too_large)
    app.wsgi_app = DevServerBound(app.wsgi_app, app.config)  # type: ignore[method-assign]

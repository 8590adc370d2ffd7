"""Fixtures for browser tests: the real app served over HTTP, its mail worker, and Chromium."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, sync_playwright
from werkzeug.serving import make_server

from newsletter import create_app, demo, worker
from newsletter.extensions import db, limiter

HOST = "127.0.0.1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def _serving(app: Flask, listener: socket.socket) -> Iterator[None]:
    """Serve the app on an already bound socket from a background thread."""
    port = listener.getsockname()[1]
    server = make_server(HOST, port, app, threaded=True, fd=listener.fileno())
    thread = threading.Thread(target=server.serve_forever, name="e2e-web")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()  # serve_forever closes the server's socket on its way out
        thread.join(timeout=10)


@contextmanager
def _sending(app: Flask) -> Iterator[None]:
    """Run the worker's signup queue and outbox, writing .eml files where /_mailbox reads them."""
    settings = worker.Settings(poll_interval=0.2)
    with app.app_context():
        process = worker.build(
            app.config, lambda: db.session, settings, kinds=["signups", "outbox"]
        )
    stop = process.stop

    def work() -> None:
        with app.app_context():
            process.run()

    thread = threading.Thread(target=work, name="e2e-worker")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[Flask]:
    """The development app on a fresh SQLite file with the demo lists, served at its BASE_URL."""
    # Bound before the app exists: BASE_URL, which every mailed link is built on, needs the port.
    with socket.create_server((HOST, 0)) as listener:
        url = f"http://{HOST}:{listener.getsockname()[1]}"
        app = create_app(
            {
                "ENV": "development",
                "INSTANCE_PATH": str(tmp_path / "instance"),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}",
                "SECRET_KEY": "e2e-secret-key",
                "BASE_URL": url,
                "SMTP_URL": None,
            }
        )
        try:
            with app.app_context():
                db.create_all()
                demo.load(db.session)
            with _serving(app, listener), _sending(app):
                yield app
        finally:
            with app.app_context():
                # The limiter is shared by every app the tests create.
                limiter.reset()
                db.engine.dispose()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; Playwright never downloads a browser of its own."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests, not skip them")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, live_app: Flask) -> Iterator[Page]:
    """A fresh browser tab whose relative URLs go to the live site."""
    # Depends on live_app so the tab, and its keep-alive connections, close before the server.
    context = browser.new_context(
        base_url=live_app.config["BASE_URL"], viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()

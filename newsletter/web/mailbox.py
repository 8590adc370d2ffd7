"""The development mailbox: read the .eml files the file transport wrote. Never in production."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, render_template, send_file

bp = Blueprint("mailbox", __name__, url_prefix="/_mailbox")

_NAME = re.compile(r"^[\w.-]+\.eml$")
_SHOWN = 200


class _Links(HTMLParser):
    """Collects the href of every link in an HTML part."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href:
            self.links.append((" ".join("".join(self._text).split()), self._href))
            self._href = None


def _folder() -> Path:
    return Path(current_app.config["OUTBOX_DIR"])


def _read(path: Path, headers_only: bool = False) -> EmailMessage:
    with path.open("rb") as handle:
        parsed = BytesParser(policy=policy.default).parse(handle, headersonly=headers_only)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _path(name: str) -> Path:
    if not _NAME.match(name):
        abort(404)
    path = _folder() / name
    if not path.is_file():
        abort(404)
    return path


@bp.get("/")
def index() -> str:
    """The newest mails first."""
    files = sorted(_folder().glob("*.eml"), reverse=True)[:_SHOWN] if _folder().is_dir() else []
    mails = [(path.name, _read(path, headers_only=True)) for path in files]
    return render_template("public/mailbox.html", mails=mails)


@bp.get("/<name>")
def show(name: str) -> str:
    """One mail: its headers, its text part, its HTML part and the links in it."""
    message = _read(_path(name))
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    html_source = html.get_content() if html is not None else ""
    links = _Links()
    links.feed(html_source)
    return render_template(
        "public/mailbox_message.html",
        name=name,
        message=message,
        text=text.get_content() if text is not None else "",
        html=html_source,
        links=links.links,
    )


@bp.get("/<name>/raw")
def raw(name: str) -> Response:
    """The mail as it would reach a server."""
    return send_file(_path(name), mimetype="text/plain")

"""The web side: public pages, the JSON API, the development mailbox, error pages."""

from flask import Response


def vary(response: Response, name: str) -> None:
    """Say that the answer depends on the request header `name`. Werkzeug's `response.vary`
    parses the header into a set and writes it back, three times the work of this."""
    headers = response.headers
    current = headers.get("Vary")
    if not current:
        headers["Vary"] = name
    elif name.lower() not in {part.strip().lower() for part in current.split(",")}:
        headers["Vary"] = f"{current}, {name}"

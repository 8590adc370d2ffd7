"""Signed links, one salt per purpose, verified with the current key and its fallbacks."""

from __future__ import annotations

from typing import Any

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

CONFIRM = "confirm"
UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"


class TokenError(Exception):
    """A link that cannot be used."""


class TamperedToken(TokenError):
    """The signature does not match: a mangled or forged link."""


class ExpiredToken(TokenError):
    """A genuine link past its age; its payload is kept so a fresh one can be offered."""

    def __init__(self, payload: Any) -> None:
        super().__init__("link expired")
        self.payload = payload


def reader_payload(subscriber: Any, **extra: object) -> dict[str, object]:
    """What a link signed for one reader carries: their id and their per-person key."""
    return {"s": subscriber.id, "k": subscriber.token_key, **extra}


def serializer(purpose: str) -> URLSafeTimedSerializer:
    """The signer of one purpose's links; keep it to sign many links with one set-up."""
    return _serializer(purpose)


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    cfg = current_app.config
    # itsdangerous signs with the last key and accepts every key in the list.
    keys = [*cfg.get("SECRET_KEY_FALLBACKS", []), cfg["SECRET_KEY"]]
    return URLSafeTimedSerializer(keys, salt=f"newsletter.{purpose}")


def dumps(purpose: str, payload: Any) -> str:
    """Sign a payload for one purpose."""
    return _serializer(purpose).dumps(payload)


def loads(purpose: str, token: str, max_age: int | None = None) -> Any:
    """Verify and decode a token; raises TamperedToken or ExpiredToken."""
    serializer = _serializer(purpose)
    try:
        return serializer.loads(token, max_age=max_age)
    except SignatureExpired as exc:
        try:
            payload = serializer.loads(token)
        except BadSignature:
            raise TamperedToken(str(exc)) from exc
        raise ExpiredToken(payload) from exc
    except BadSignature as exc:
        raise TamperedToken(str(exc)) from exc

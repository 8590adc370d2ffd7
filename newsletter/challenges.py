"""The proof of work (ALTCHA) a newsletter's boxes may ask of the reader's browser.

Self-hosted: we make each challenge, the widget in the reader's browser solves it, and we check
the solution here, before anything of the signup is stored. No other service is asked.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import altcha
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.models import Newsletter

# PBKDF2 runs in every browser's Web Crypto; the widget bundles its worker.
ALGORITHM = "PBKDF2/SHA-256"
# A payload is a few hundred characters of base64; anything far longer is not one.
MAX_PAYLOAD = 4000


class Verdict(enum.StrEnum):
    """What a payload sent with a signup turned out to be."""

    SOLVED = "solved"
    MISSING = "missing"
    EXPIRED = "expired"
    INVALID = "invalid"
    USED = "used"


@dataclass(frozen=True)
class Settings:
    """How hard and how long-lived challenges are, and the keys that sign them."""

    secret_key: str
    cost: int = 1000
    work: int = 4000
    lifetime: int = 20 * 60

    def _key(self, purpose: str) -> str:
        # One key per purpose, derived from the app's secret key: nothing more to configure.
        digest = hmac.new(self.secret_key.encode(), f"altcha:{purpose}".encode(), hashlib.sha256)
        return digest.hexdigest()

    @property
    def challenge_key(self) -> str:
        return self._key("challenge")

    @property
    def solution_key(self) -> str:
        return self._key("solution")


def new_challenge(settings: Settings, now: float | None = None) -> dict[str, object]:
    """A fresh challenge as the widget fetches it (JSON), signed and with its expiry."""
    expires = int((now if now is not None else time.time()) + settings.lifetime)
    # The answer is drawn here (deterministic mode): every browser does about the same
    # work, and checking a solution is one HMAC, never the work again.
    counter = settings.work + secrets.randbelow(max(settings.work, 1))
    challenge = altcha.create_challenge(
        ALGORITHM,
        settings.cost,
        counter=counter,
        expires_at=expires,
        hmac_secret=settings.challenge_key,
        hmac_key_secret=settings.solution_key,
    )
    return challenge.to_dict()


def verify(
    settings: Settings,
    payload: object,
    first_use: Callable[[str, int], bool],
    now: float | None = None,
) -> Verdict:
    """Check a payload the widget sent; `first_use(key, seconds)` refuses a replayed one."""
    if not isinstance(payload, str) or not payload.strip():
        return Verdict.MISSING
    if len(payload) > MAX_PAYLOAD:
        return Verdict.INVALID
    result = altcha.verify_solution(
        payload.strip(), settings.challenge_key, hmac_key_secret=settings.solution_key
    )
    if result.expired:
        return Verdict.EXPIRED
    if not result.verified:
        return Verdict.INVALID
    # A solved challenge counts once: its signature names it, until it expires.
    parsed = altcha.Payload.from_base64(payload.strip())
    expires = parsed.challenge.parameters.expires_at
    if not isinstance(expires, int | float):
        # Every challenge we sign has an expiry: one without it was never ours.
        return Verdict.INVALID
    remaining = int(expires - (now if now is not None else time.time())) + 1
    if not first_use(f"altcha:{parsed.challenge.signature}", max(remaining, 1)):
        return Verdict.USED
    return Verdict.SOLVED


def asking(session: Session) -> frozenset[str]:
    """The slugs of the open newsletters whose boxes ask for the proof of work."""
    rows = session.scalars(
        select(Newsletter.slug).where(Newsletter.altcha.is_(True), Newsletter.archived.is_(False))
    )
    return frozenset(rows)


def needed(asked: Iterable[str], slugs: Iterable[str]) -> bool:
    """Whether a signup to these slugs needs a solved challenge."""
    wanted = set(slugs)
    return any(slug in wanted for slug in asked)

"""Schemathesis against the live app: every operation of the OpenAPI document, valid and invalid
data, and the calls its links chain. No 5xx, every answer as documented, and a refused request
stores nothing.

NEWSLETTER_FUZZ_EXAMPLES sets the examples per operation and mode (default 20, a few seconds);
a drill runs many more, e.g. NEWSLETTER_FUZZ_EXAMPLES=1000.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from sqlalchemy import delete, func, select

from newsletter import api_tokens
from newsletter.models import (
    ConsentEvent,
    Item,
    OutboxMessage,
    Subscriber,
    Subscription,
    item_newsletter,
)
from newsletter.web.openapi import document

from factories import make_newsletter

EXAMPLES = int(os.environ.get("NEWSLETTER_FUZZ_EXAMPLES", "20"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # Fresh examples every run, none replayed from an earlier one; a failure prints its seed.
    database=None,
    # Each example is a real request on a real database: slow by Hypothesis' measure.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_PATHS = document("https://news.example.org")["paths"]
# Invalid data only where there is input to make invalid: parameters or a body.
CASES = [
    (method.upper(), path, mode)
    for path, methods in _PATHS.items()
    for method, spec in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]
# Where what is stored shows: a refused request must leave every count as it was.
TABLES = (item_newsletter, Item, OutboxMessage, ConsentEvent, Subscription, Subscriber)


@pytest.fixture
def app_config() -> dict[str, object]:
    # The per-IP limit would answer most examples with 429 and test nothing else.
    return {"SUBSCRIBE_RATE_LIMIT": "1000000 per minute"}


@pytest.fixture
def api_schema(app, db):  # type: ignore[no-untyped-def]
    """The served document, loaded by schemathesis, with a live token for the items calls."""
    make_newsletter("daily")
    make_newsletter("culture")
    make_newsletter("archived", archived=True)
    _, token = api_tokens.create_token(db.session, "schemathesis", None)
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": token}}},
            # The API ignores query parameters it does not know, as documented.
            "generation": {"allow-extra-parameters": False},
            # A schema-valid request may still break a rule JSON Schema cannot say (an
            # address email-validator refuses, a slug no newsletter has): a documented 422.
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=config)


def rows(db) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    db.session.expire_all()
    return tuple(db.session.scalar(select(func.count()).select_from(t)) for t in TABLES)


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
def test_every_operation(api_schema, db, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def check(case):  # type: ignore[no-untyped-def]
        before = rows(db)
        response = case.call_and_validate()
        if response.status_code >= 400:
            assert rows(db) == before, f"{response.status_code} but rows were stored"

    check()


def test_linked_calls(api_schema, db):
    """Newsletters listed, then a signup, an item and the items of a listed newsletter."""

    class Checked(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every scenario starts from the same rows: the links a step offers depend on
            # earlier answers (an item new or known), and Hypothesis replays scenarios.
            for table in TABLES:
                db.session.execute(delete(table))
            db.session.commit()

        def before_call(self, case):  # type: ignore[no-untyped-def]
            self.rows_before = rows(db)

        def after_call(self, response, case):  # type: ignore[no-untyped-def]
            if response.status_code >= 400:
                assert rows(db) == self.rows_before, f"{response.status_code} stored rows"

    Checked.run(settings=settings(SETTINGS, stateful_step_count=6))

"""Drill: every /admin URL of the app's URL map, with real ids, against gunicorn: as nobody, as an
editor where an admin is needed, with another session's CSRF token, with a cookie kept from
before sign-out; and 100 wrong passwords for one account from 10 addresses.

Each is refused and changes no row; the guesses are throttled while the account's owner,
signing in from another address, still gets in.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

import pytest
from werkzeug.routing import Rule

from newsletter import api_tokens
from newsletter.extensions import db
from newsletter.models import (
    AdminUser,
    AllowedOrigin,
    ApiToken,
    Digest,
    ImportJob,
    ImportMode,
    JobStatus,
    Newsletter,
    Subscriber,
    Subscription,
    Suppression,
)
from newsletter.web.admin.core import OPEN_ENDPOINTS, admin_only

from factories import PASSWORD, add_item, add_reader, make_admin, make_newsletter
from hostile import Answer, Browser, Stack, drill, running_stack

OWNER = "owner@news.example.org"
EDITOR = "writer@news.example.org"
# The rows an admin page could change: none may move when a request is refused.
WATCHED = (
    AdminUser,
    Newsletter,
    Subscriber,
    Subscription,
    Digest,
    ImportJob,
    ApiToken,
    AllowedOrigin,
    Suppression,
)
# `admin_only`'s wrapper: the same code object whatever view it wraps.
_ADMIN_ONLY = admin_only(lambda: None).__code__


def _needs_admin(view: object) -> bool:
    while view is not None:
        if getattr(view, "__code__", None) is _ADMIN_ONLY:
            return True
        view = getattr(view, "__wrapped__", None)
    return False


def _rows(stack: Stack) -> dict[str, int]:
    """Real ids for every parameter an admin URL takes."""
    daily = make_newsletter("daily")
    subscriber = add_reader(db, daily, "reader@example.com")
    subscription = db.session.scalars(db.select(Subscription)).one()
    item = add_item(db, daily, "Storm")
    digest = Digest(newsletter=daily, subject="Tuesday")
    job = ImportJob(
        newsletter=daily, filename="people.csv", mode=ImportMode.CONFIRM, status=JobStatus.FAILED
    )
    site = AllowedOrigin(origin="https://www.example.org")
    db.session.add_all([digest, job, site])
    db.session.commit()
    token, _ = api_tokens.create_token(db.session, "site", None)
    colleague = make_admin("colleague@news.example.org", "editor")
    return {
        "account_id": colleague.id,
        # A set-password link's token: the page is open to anyone holding a link.
        "token": "not-a-real-set-password-token",
        "newsletter_id": daily.id,
        "subscriber_id": subscriber.id,
        "subscription_id": subscription.id,
        "item_id": item.id,
        "digest_id": digest.id,
        "job_id": job.id,
        "site_id": site.id,
        "token_id": token.id,
    }


def _admin_urls(stack: Stack, ids: dict[str, int]) -> list[tuple[Rule, str]]:
    """Every /admin rule of the URL map with its path built from real ids."""
    found = []
    adapter = stack.app.url_map.bind("news.example.org")
    for rule in stack.app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin."):
            continue
        values = {name: ids[name] for name in rule.arguments}  # a new kind of id: add it above
        found.append((rule, adapter.build(rule.endpoint, values)))
    assert len(found) > 40
    return found


def _methods(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) & {"GET", "POST"})


class Attempts:
    """Sends refused requests and checks each changed nothing."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before = stack.snapshot(*WATCHED)
        self.counts: Counter[str] = Counter()

    def settle(self) -> None:
        """After a legitimate change (a sign-in, a sign-out): the rows as they now are."""
        self.before = self.stack.snapshot(*WATCHED)

    def refused(
        self, who: str, visitor: Browser, method: str, path: str, csrf: str | None, expect: str
    ) -> Answer:
        form = {"csrf_token": csrf} if csrf is not None else {}
        answer = visitor.request(method, path, form=form if method == "POST" else None)
        where = f"{who}: {method} {path} answered {answer.status} {answer.location}"
        if expect == "login":
            assert answer.status == 302, where
            assert urlsplit(answer.location).path == "/admin/login", where
        else:
            assert answer.status == int(expect), where
        assert self.stack.snapshot(*WATCHED) == self.before, f"{where}, and rows changed"
        self.counts[who] += 1
        return answer


def _sign_in(stack: Stack, email: str, source: str = "127.0.0.1") -> tuple[Browser, str]:
    visitor = stack.browser(source)
    answer = visitor.post(
        "/admin/login", form={"email": email, "password": PASSWORD, "csrf_token": visitor.csrf()}
    )
    assert answer.status == 302, answer.body[:1000]
    assert visitor.get("/admin/").status == 200
    return visitor, visitor.csrf("/admin/")


def _throttle(stack: Stack) -> tuple[Counter[int], int]:
    """100 wrong passwords for the owner's account from 10 addresses, then the owner."""
    statuses: Counter[int] = Counter()
    for place in range(2, 12):
        guesser = stack.browser(f"127.0.0.{place}")
        token = guesser.csrf()
        for n in range(10):
            form = {"email": OWNER, "password": f"guess {n}", "csrf_token": token}
            answer = guesser.post("/admin/login", form=form)
            assert answer.status in (401, 429), answer.status
            statuses[answer.status] += 1
    owner, _ = _sign_in(stack, OWNER, "127.0.0.12")
    assert "/admin/logout" in owner.get("/admin/").body
    return statuses, sum(statuses.values())


@pytest.mark.drill
def test_admin_access(tmp_path, request):
    with running_stack(tmp_path, "admin") as stack:
        make_admin(OWNER, "admin")
        make_admin(EDITOR, "editor")
        urls = _admin_urls(stack, _rows(stack))
        stack.start_web()
        attempts = Attempts(stack)
        views = stack.app.view_functions

        # Nobody signed in: every page sends to the sign-in page, even with a valid CSRF token.
        nobody = stack.browser()
        token = nobody.csrf()
        for rule, path in urls:
            if rule.endpoint in OPEN_ENDPOINTS:
                continue
            for method in _methods(rule):
                attempts.refused("anonymous", nobody, method, path, token, "login")

        # An editor on the pages for admins.
        editor, editor_token = _sign_in(stack, EDITOR)
        attempts.settle()
        admin_pages = [(r, p) for r, p in urls if _needs_admin(views[r.endpoint])]
        assert len(admin_pages) >= 10
        for rule, path in admin_pages:
            for method in _methods(rule):
                attempts.refused("editor", editor, method, path, editor_token, "403")

        # The owner signed in, posting with the CSRF token of another session of theirs.
        owner, owner_token = _sign_in(stack, OWNER)
        _, other_token = _sign_in(stack, OWNER)
        assert other_token != owner_token
        attempts.settle()
        for rule, path in urls:
            if "POST" in _methods(rule):
                attempts.refused("foreign CSRF", owner, "POST", path, other_token, "400")
                attempts.refused("foreign CSRF", owner, "POST", path, None, "400")

        # A copy of the cookie taken before signing out opens nothing afterwards.
        kept = dict(owner.cookies)
        answer = owner.post("/admin/logout", form={"csrf_token": owner_token})
        assert answer.status == 302
        attempts.settle()
        thief = stack.browser()
        thief.cookies.update(kept)
        for rule, path in urls:
            if rule.endpoint in OPEN_ENDPOINTS:
                continue
            for method in _methods(rule):
                attempts.refused("after sign-out", thief, method, path, owner_token, "login")

        statuses, guesses = _throttle(stack)
        assert stack.server_errors() == []
    assert statuses[429] > 0, statuses
    refused = sum(attempts.counts.values())
    drill(
        request,
        "8 Admin access",
        f"{len(urls)} admin URLs: {refused:,} requests refused "
        f"({attempts.counts['anonymous']} anonymous, {attempts.counts['editor']} editor, "
        f"{attempts.counts['foreign CSRF']} foreign or no CSRF token, "
        f"{attempts.counts['after sign-out']} after sign-out), 0 rows changed; "
        f"{guesses} wrong passwords from 10 addresses: {statuses[401]} refused, "
        f"{statuses[429]} throttled; the owner from an 11th address got in",
    )

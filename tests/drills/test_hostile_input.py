"""Drill: hostile input against every public form and endpoint of the real stack.

gunicorn answers generated forms (Hypothesis) and API calls (schemathesis): no 5xx, a refused
request stores nothing in any table, and once the worker has sent every queued mail to a real
SMTP server, no header of any of them carries CR, LF, NUL or an over-long value.

The sample runs in `make test`; the long run sends 10,000 inputs (NEWSLETTER_DRILL_INPUTS
changes it, NEWSLETTER_DRILL_SAMPLE the sample). Hypothesis is derandomised: the same inputs
every run.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from newsletter import api_tokens
from newsletter.bounces.webhooks import sign
from newsletter.extensions import db
from newsletter.web.hooks import POSTMARK_USER
from newsletter.web.openapi import document

from factories import make_admin, make_newsletter
from hostile import (
    BASE_URL,
    WEBHOOK_SECRET,
    Answer,
    Browser,
    Reader,
    Stack,
    add_readers,
    drill,
    header_faults,
    inputs,
    running_stack,
)

SLUGS = ["daily", "culture"]
NASTY = [
    "",
    " ",
    "\r\n",
    "\x00",
    "\x7f\x1b[31m",
    "a@example.com\r\nBcc: victim@example.org",
    "a@example.com\nSubject: pwned",
    "a@example.com\rX-Injected: 1",
    "a\x00b@example.com",
    "a@example.com%0d%0aBcc:%20victim@example.org",
    '"a\\r\\nb"@example.com',
    '"a\r\nb"@example.com',
    "=?utf-8?q?a=0D=0ABcc=3A_victim=40example=2Eorg?=@example.com",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "../../../etc/passwd",
    "\u202egro.elpmaxe@a",
    "ｅｘａｍｐｌｅ@example.com",
    "пошта@приклад.укр",
    "用户@例子.广告",
    "😀@example.com",
    "a@[127.0.0.1]",
    "a@localhost",
    "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + ".com",
    "a" * 65 + "@example.com",
    "x" * 10_000,
    "null",
    "[]",
    "{}",
    "-1",
    "99999999999999999999",
    "1e309",
    "%s%s%s%n",
    "{{7*7}}",
    "${jndi:ldap://x}",
]
SEPARATORS = ["\r\n", "\n", "\r", "\x00", "\r\n\t", "%0d%0a", "\u2028", "\x85"]


def nasty_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=60),
        st.builds(lambda c, n: c * n, st.characters(), st.integers(300, 9000)),
    )


def emails() -> st.SearchStrategy[str]:
    injected = st.builds(
        lambda e, sep, rest: e + sep + rest,
        st.emails(),
        st.sampled_from(SEPARATORS),
        st.sampled_from(["Bcc: victim@example.org", "Subject: pwned", "", "\r\n"]),
    )
    unicode_local = st.builds(
        lambda local: f"{local}@example.com", st.text(min_size=1, max_size=70)
    )
    too_long = st.builds(lambda n: "a@" + "d" * n + ".example", st.integers(240, 400))
    return st.one_of(st.emails(), injected, unicode_local, too_long, nasty_text())


def slugs() -> st.SearchStrategy[list[str]]:
    return st.lists(
        st.one_of(st.sampled_from([*SLUGS, "archived", "nope"]), nasty_text()), max_size=4
    )


def json_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), nasty_text()
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=12,
    )


def maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), strategy)


def form(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    """A form where each field may be missing."""
    return st.fixed_dictionaries({}, optional=fields)


def token(genuine: list[str]) -> st.SearchStrategy[str]:
    """A link's token: nonsense, or a genuine one cut, grown or with a character changed."""
    real = st.sampled_from(genuine)
    return st.one_of(
        nasty_text(),
        st.from_regex(r"[A-Za-z0-9_.\-]{0,200}", fullmatch=True),
        st.builds(lambda t, n: t[:n], real, st.integers(0, 120)),
        st.builds(lambda t, extra: t + extra, real, nasty_text()),
        st.builds(
            lambda t, i, c: t[: i % len(t)] + c + t[i % len(t) + 1 :],
            real,
            st.integers(0, 500),
            st.characters(),
        ),
    )


# gunicorn refuses a longer request line itself (limit_request_line, 8190), before the app.
MAX_PATH = 8000


def path(prefix: str, value: str) -> str:
    """A path with a value in it, as long as a request line gunicorn passes on may be."""
    return (prefix + quote(value, safe=""))[:MAX_PATH]


class Hostile:
    """The targets: each draws one hostile request and checks the answer."""

    def __init__(self, stack: Stack, readers: list[Reader]) -> None:
        self.stack = stack
        self.readers = readers
        self.visitor = stack.browser()
        self.statuses: Counter[int] = Counter()
        self.sent = 0
        self.refused = 0
        login = stack.browser()
        self.login = login
        self.login_csrf = login.csrf()

    def send(self, method: str, target: str, **kwargs: object) -> Answer:
        """One request; a refused one must leave every table's rows as they were."""
        before = self.stack.counts()
        visitor = kwargs.pop("visitor", None) or self.visitor
        assert isinstance(visitor, Browser)
        answer = visitor.request(method, target, **kwargs)  # type: ignore[arg-type]
        self.sent += 1
        self.statuses[answer.status] += 1
        assert answer.status < 500, (
            f"{method} {target[:200]}: {answer.status}\n{answer.body[:2000]}"
        )
        if answer.status >= 400:
            self.refused += 1
            after = self.stack.counts()
            changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
            assert not changed, (
                f"{method} {target[:200]} answered {answer.status}, stored {changed}"
            )
        return answer

    # --- the targets ---

    def signup_form(self, data: st.DataObject) -> None:
        fields = data.draw(
            form(
                email=emails(),
                newsletter=slugs(),
                leave_blank=st.sampled_from(["", "", "", "bot"]),
                source=nasty_text(),
                lang=st.one_of(st.sampled_from(["en", "uk"]), nasty_text()),
                return_to=st.one_of(st.just("https://evil.example/"), nasty_text()),
                altcha=nasty_text(),
            )
        )
        accept = data.draw(st.sampled_from(["text/html", "application/json", "*/*"]))
        if data.draw(st.booleans()):
            self.send("POST", "/subscribe", form=fields, headers={"Accept": accept})
        else:
            # JSON carries more than text: any field may be a number, a list, an object.
            names = ("email", "newsletter", "newsletters", "lang", "source", "altcha")
            fields.update(data.draw(form(**{name: json_values() for name in names})))
            body = json.dumps(fields).encode()
            headers = {"Content-Type": "application/json", "Accept": accept}
            self.send("POST", "/subscribe", body=body, headers=headers)

    def signup_address(self, data: st.DataObject) -> None:
        """A box filled in right but for the address: most are taken, and mailed."""
        fields = {
            "email": data.draw(emails()),
            "newsletter": data.draw(st.lists(st.sampled_from(SLUGS), min_size=1, unique=True)),
            "source": data.draw(nasty_text()),
        }
        self.send("POST", "/subscribe", form=fields, headers={"Accept": "application/json"})

    def signup_raw(self, data: st.DataObject) -> None:
        body = data.draw(
            st.one_of(
                st.binary(max_size=2000),
                st.builds(lambda v: json.dumps(v).encode(), json_values()),
                st.builds(lambda t: t.encode("utf-8", "surrogatepass"), nasty_text()),
            )
        )
        kind = data.draw(
            st.sampled_from(
                [
                    "application/x-www-form-urlencoded",
                    "application/json",
                    "multipart/form-data; boundary=x",
                    "multipart/form-data",
                    "text/plain",
                    "application/json; charset=utf-16",
                ]
            )
        )
        self.send("POST", "/subscribe", body=body, headers={"Content-Type": kind})

    def confirm(self, data: st.DataObject) -> None:
        genuine = [r.confirm for r in self.readers]
        value = data.draw(token(genuine))
        how = data.draw(st.sampled_from(["GET", "POST", "resend"]))
        if how == "resend":
            self.send("POST", path("/confirm/", value) + "/resend", form={})
        else:
            body = data.draw(form(csrf_token=nasty_text(), submit=nasty_text()))
            self.send(how, path("/confirm/", value), form=body if how == "POST" else None)

    def confirm_genuine(self, data: st.DataObject) -> None:
        reader = data.draw(st.sampled_from(self.readers))
        body = data.draw(form(action=nasty_text(), newsletter=slugs()))
        self.send("POST", "/confirm/" + reader.confirm, form=body)

    def unsubscribe(self, data: st.DataObject) -> None:
        genuine = [t for r in self.readers for t in r.unsubscribe.values()]
        value = data.draw(st.one_of(token(genuine), st.sampled_from(genuine)))
        method = data.draw(st.sampled_from(["GET", "POST"]))
        body = data.draw(
            form(**{"List-Unsubscribe": st.one_of(st.just("One-Click"), nasty_text())})
        )
        self.send(method, path("/unsubscribe/", value), form=body if method == "POST" else None)

    def preferences(self, data: st.DataObject) -> None:
        genuine = [r.preferences for r in self.readers]
        value = data.draw(st.one_of(token(genuine), st.sampled_from(genuine)))
        method = data.draw(st.sampled_from(["GET", "POST"]))
        ids = st.lists(st.one_of(st.integers(-5, 10**12).map(str), nasty_text()), max_size=5)
        body = data.draw(
            form(
                newsletter=ids,
                action=st.one_of(st.just("leave-all"), nasty_text()),
                locale=st.one_of(st.sampled_from(["en", "uk"]), nasty_text()),
            )
        )
        self.send(method, path("/preferences/", value), form=body if method == "POST" else None)

    def webhook_signed(self, data: st.DataObject) -> None:
        """A provider's body, signed with the secret: past the door, on to the rows."""
        provider = data.draw(st.sampled_from(["generic", "postmark"]))
        if provider == "generic":
            body = json.dumps({"events": data.draw(st.lists(GENERIC_EVENT, max_size=3))}).encode()
        else:
            body = json.dumps(data.draw(POSTMARK_RECORD)).encode()
        basic = f"{POSTMARK_USER}:{WEBHOOK_SECRET}".encode()
        headers = {
            "Content-Type": "application/json",
            "X-Newsletter-Signature": sign(body, WEBHOOK_SECRET),
            "Authorization": "Basic " + base64.b64encode(basic).decode(),
        }
        self.send("POST", "/hooks/bounces/" + provider, body=body, headers=headers)

    def webhook(self, data: st.DataObject) -> None:
        """Any body to any provider's address, signed, wrongly signed or not at all."""
        provider = data.draw(
            st.one_of(st.sampled_from(["generic", "postmark", "ses"]), nasty_text())
        )
        body = data.draw(
            st.one_of(
                st.lists(GENERIC_EVENT, max_size=3).map(
                    lambda e: json.dumps({"events": e}).encode()
                ),
                POSTMARK_RECORD.map(lambda v: json.dumps(v).encode()),
                json_values().map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=1000),
            )
        )
        headers = {"Content-Type": "application/json"}
        auth = data.draw(st.sampled_from(["good", "bad", "none"]))
        if auth == "good":
            headers["X-Newsletter-Signature"] = sign(body, WEBHOOK_SECRET)
            basic = f"{POSTMARK_USER}:{WEBHOOK_SECRET}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(basic).decode()
        elif auth == "bad":
            headers["X-Newsletter-Signature"] = data.draw(
                st.one_of(st.just("sha256=" + "0" * 64), st.text(max_size=80).filter(_latin1))
            )
            headers["Authorization"] = data.draw(st.text(max_size=80).filter(_latin1))
        self.send("POST", path("/hooks/bounces/", provider), body=body, headers=headers)

    def admin_login(self, data: st.DataObject) -> None:
        fields = data.draw(
            form(
                email=st.one_of(emails(), st.just("owner@news.example.org")),
                password=nasty_text(),
                csrf_token=st.one_of(st.just(self.login_csrf), nasty_text()),
            )
        )
        query = data.draw(maybe(nasty_text()))
        target = "/admin/login" + (f"?{urlencode({'next': query})}" if query is not None else "")
        self.send("POST", target[:MAX_PATH], form=fields, visitor=self.login)


# The fields a provider always sends, mostly right, so that most bodies get past the form's
# first checks to the rows; the rest may be anything.
GENERIC_EVENT = st.fixed_dictionaries(
    {
        "type": st.one_of(st.sampled_from(["hard", "soft", "complaint"]), nasty_text()),
        "email": emails(),
    },
    optional={
        "status": st.one_of(st.sampled_from(["5.1.1", "4.2.2"]), nasty_text()),
        "diagnostic": nasty_text(),
        "message_id": nasty_text(),
        "id": nasty_text(),
        "occurred_at": st.one_of(st.just("2026-01-02T03:04:05Z"), nasty_text()),
    },
)
POSTMARK_RECORD = st.fixed_dictionaries(
    {
        "RecordType": st.sampled_from(["Bounce", "Bounce", "SpamComplaint", "Delivery"]),
        "Type": st.sampled_from(["HardBounce", "SoftBounce", "Transient", "x"]),
        "Email": emails(),
        "ID": st.one_of(st.integers(), nasty_text(), json_values()),
    },
    optional={"Details": nasty_text(), "MessageID": nasty_text(), "BouncedAt": nasty_text()},
)


def _latin1(value: str) -> bool:
    """Header values http.client can send at all."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\x00")


TARGETS = [
    "signup_form",
    "signup_form",
    "signup_address",
    "signup_address",
    "signup_raw",
    "confirm",
    "confirm_genuine",
    "unsubscribe",
    "preferences",
    "preferences",
    "webhook_signed",
    "webhook",
    "admin_login",
]


def _settings(examples: int, derandomize: bool = True) -> settings:
    return settings(
        max_examples=max(1, examples),
        derandomize=derandomize,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def _api(stack: Stack, hostile: Hostile, examples: int) -> int:
    """schemathesis over every operation of the served OpenAPI document, valid and invalid."""
    _, bearer = api_tokens.create_token(db.session, "drill", None)
    config = schemathesis.Config.from_dict(
        {
            "base-url": stack.base,
            "auth": {"openapi": {"bearer": {"bearer": bearer}}},
            "generation": {"allow-extra-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{stack.base}/api/v1/openapi.json", config=config)
    # Invalid data only where there is input to make invalid: parameters or a body.
    cases = [
        (schema[path][method.upper()], mode)
        for path, methods in document(BASE_URL)["paths"].items()
        for method, spec in methods.items()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode == GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
    ]
    per = max(1, examples // len(cases))
    sent = 0
    for operation, mode in cases:

        @given(case=operation.as_strategy(generation_mode=mode))
        @_settings(per)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal sent
            before = stack.counts()
            response = case.call()
            sent += 1
            hostile.statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:2000]}"
            if response.status_code >= 400:
                hostile.refused += 1
                assert stack.counts() == before, f"{where}: {response.status_code} stored rows"

        check()
    return sent


def _drive(target: Callable[[st.DataObject], None], examples: int, again: int = 0) -> None:
    """Run one target over `examples` generated inputs: derandomised, or on a fixed seed of
    its own for the rounds that top a run up (the same inputs every run, either way)."""

    @given(data=st.data())
    @_settings(examples, derandomize=not again)
    def check(data: st.DataObject) -> None:
        target(data)

    (seed(again)(check) if again else check)()


def run(stack: Stack, request: pytest.FixtureRequest, total: int) -> None:
    """The drill: forms and API, then the mail; records the figure."""
    for slug in SLUGS:
        make_newsletter(slug)
    make_newsletter("archived", archived=True)
    make_admin("owner@news.example.org", "admin")
    readers = add_readers(stack, 4, SLUGS)
    stack.start_web()
    hostile = Hostile(stack, readers)
    forms = total * 4 // 5
    per = max(1, forms // len(TARGETS))
    for name in TARGETS:
        _drive(getattr(hostile, name), per)
    api = _api(stack, hostile, total - hostile.sent)
    # Hypothesis stops early where a target has fewer inputs to give: top up to the figure.
    again = 0
    while hostile.sent + api < total and again < 5:
        again += 1
        per = -(-(total - hostile.sent - api) // len(TARGETS))
        for name in TARGETS:
            _drive(getattr(hostile, name), per, again)
    assert stack.server_errors() == []
    stack.drain()
    mails = stack.smtp.raw
    faults = [f for mail in mails for f in header_faults(*mail)]
    assert faults == [], faults[:20]
    assert mails, "no mail was sent: the check of headers saw nothing"
    sent = hostile.sent + api
    drill(
        request,
        "2 Hostile input",
        f"{sent:,} inputs ({hostile.sent:,} form, {api:,} API; {hostile.refused:,} refused), "
        f"0 5xx, nothing stored when refused, {len(mails):,} mails checked, 0 bad headers",
    )


@pytest.mark.drill
def test_hostile_input_sample(tmp_path, request):
    with running_stack(tmp_path, "hostile", **_LIMITS) as stack:
        run(stack, request, inputs("NEWSLETTER_DRILL_SAMPLE", 300))


@pytest.mark.drill
@pytest.mark.long
def test_hostile_input(tmp_path, request):
    with running_stack(tmp_path, "hostile", **_LIMITS) as stack:
        run(stack, request, inputs("NEWSLETTER_DRILL_INPUTS", 10_000))


# The per-client limits would answer most inputs with 429 and test nothing else; the throttles
# have their own drill (admin access) and tests.
_LIMITS = {
    "SUBSCRIBE_RATE_LIMIT": "1000000 per minute",
    "LOGIN_RATE_LIMIT": "1000000 per minute",
    "LOGIN_ADDRESS_RATE_LIMIT": "1000000 per minute",
    "LOGIN_ACCOUNT_RATE_LIMIT": "1000000 per minute",
}


GOOD = (
    b"From: Daily <news@news.example.org>\r\nTo: reader@example.com\r\n"
    b"Subject: Please confirm\r\nMessage-ID: <1@news.example.org>\r\n\r\nBody\r\n"
)


@pytest.mark.drill
@pytest.mark.parametrize(
    ("raw", "rcpt"),
    [
        (GOOD.replace(b"To: reader@example.com", b"To: reader@example.com\r\nBcc: x@y.org"), 1),
        (GOOD.replace(b"To: reader@example.com", b"To: reader@example.com, x@y.org"), 1),
        (GOOD.replace(b"Subject: Please", b"Subject: Please\nX-Injected: 1\r\nSubject: x"), 1),
        (GOOD.replace(b"reader@", b"read\x00er@"), 1),
        (GOOD.replace(b"Please confirm", b"x" * 1200), 1),
        (GOOD, 2),
    ],
    ids=["bcc", "second-to", "bare-lf", "nul", "long-line", "two-recipients"],
)
def test_the_header_check_sees_an_injected_or_broken_header(raw, rcpt):
    """The drill's check on every mail finds what an injection leaves, and passes a good mail."""
    recipients = ["reader@example.com", "x@y.org"][:rcpt]
    assert header_faults("bounces@news.example.org", recipients, raw)
    assert header_faults("bounces@news.example.org", ["reader@example.com"], GOOD) == []

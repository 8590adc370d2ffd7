"""Reader-facing pages: signup boxes, confirm, unsubscribe, preferences."""

from __future__ import annotations

import functools
import re
from types import SimpleNamespace

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
)
from flask_babel import gettext
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from newsletter import frequencies, languages, links, metrics, site
from newsletter import subscriptions as subs
from newsletter.extensions import csrf, db, limiter
from newsletter.links import PATHS, Links
from newsletter.models import Item, Newsletter, Subscriber, Subscription, SubscriptionStatus
from newsletter.newsletters import open_newsletters
from newsletter.web import cors, language, signup
from newsletter.web.errors import wants_json

bp = Blueprint("public", __name__)
_ID = re.compile(r"[0-9]{1,9}")
# Reader pages are authorised by the signed token in their URL, and the signup boxes are
# posted from other sites' pages: a session-bound CSRF token would only break them.
csrf.exempt(bp)


def _links() -> Links:
    return Links.from_config(current_app.config)


@bp.get("/")
def home() -> str:
    """The demo article page with one signup box per newsletter."""
    items = db.session.scalars(select(Item).order_by(Item.published_at.desc()).limit(10)).all()
    return render_template(
        "public/home.html", newsletters=open_newsletters(db.session), items=items
    )


@bp.get("/favicon.ico")
def favicon() -> Response:
    """The icon browsers ask for at the root even on pages that name none."""
    return send_from_directory(str(current_app.static_folder), "favicon.ico", max_age=86400)


@bp.get("/theme.css")
def theme() -> Response:
    """The site's accent colour as CSS variables, for the pages and the signup boxes."""
    accent = site.current().accent  # a checked #rrggbb: nothing else reaches the stylesheet
    response = Response(
        f":root {{ --accent: {accent}; --nl-accent: {accent}; }}\n", mimetype="text/css"
    )
    # The pages ask for it with the colour in the address: a new colour is a new address.
    fresh = request.args.get("v") == accent.lstrip("#")
    response.cache_control.public = True
    response.cache_control.max_age = 365 * 24 * 3600 if fresh else 60
    return response


@bp.post("/subscribe")
@signup.rate_limit
def subscribe() -> Response | tuple[str, int]:
    """The target of every signup box; answers HTML, or JSON to scripts."""
    if request.is_json:
        given = signup.fields(signup.json_body() or {})
    else:
        given = signup.fields(request.form)
    reply = signup.signup(given)
    if wants_json():
        response = jsonify(reply.as_json())
        response.status_code = reply.status
        return response
    if reply.ok:
        # A box on an allowed site may send the reader back to the article; any other
        # address gets our own page, so this is never an open redirect.
        back = cors.return_url(request.form.get("return_to"))
        if back:
            return redirect(back, 303)
        return _thanks_page(reply), reply.status
    newsletters = open_newsletters(db.session)
    return (
        render_template(
            "public/signup.html",
            newsletters=newsletters,
            chosen=[n for n in newsletters if n.slug in given.slugs],
            reply=reply,
            email=given.email,
            frequency=given.frequency,
        ),
        reply.status,
    )


def _thanks_page(reply: signup.SignupReply) -> str:
    """The thank-you page. It is the same for every reader given the same words in the same
    language and brand, so each process renders it once for each: the answer to a signup
    stays short, and alike whoever signs up."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return _rendered_thanks(app, language.current(), site.current(), reply.title, reply.message)


@functools.lru_cache(maxsize=256)
def _rendered_thanks(app: object, locale: str, brand: site.Site, title: str, message: str) -> str:
    del app, locale, brand  # the key: what the page depends on besides the words
    heading = signup.SignupReply(200, message, title=title).heading
    return render_template(
        "public/thanks.html", reply=SimpleNamespace(title=heading, message=message)
    )


def _link_error(exc: links.LinkError) -> tuple[str, int]:
    """The page for a link that cannot be used."""
    if isinstance(exc, links.ExpiredLink):
        return render_template("public/link_expired.html", token=request.view_args["token"]), 410
    if isinstance(exc, links.LinkNoLongerValid):
        return render_template("public/link_error.html", reason="used"), 410
    return render_template("public/link_error.html", reason="broken"), 400


def _confirm_link(token: str) -> links.ConfirmLink:
    return _links().read_confirm(token, max_age=int(current_app.config["CONFIRM_MAX_AGE"]))


@bp.get(PATHS[links.CONFIRM] + "<token>")
def confirm(token: str) -> str | tuple[str, int]:
    """Show what the link confirms, with a button: fetching a link confirms nothing."""
    try:
        preview = subs.confirmation_preview(db.session, _confirm_link(token))
    except links.LinkError as exc:
        return _link_error(exc)
    language.use_reader(preview.subscriber.locale)
    if not preview.confirmed:
        # Used already: say so rather than offer a button that does nothing.
        return _confirmed_page(preview)
    return render_template(
        "public/confirm.html", subscriber=preview.subscriber, subscriptions=preview.confirmed
    )


@bp.post(PATHS[links.CONFIRM] + "<token>")
def confirm_post(token: str) -> str | tuple[str, int]:
    """Confirm every list of the signup."""
    try:
        result = subs.confirm(db.session, _confirm_link(token), signup.consent_origin("confirm"))
    except links.LinkError as exc:
        return _link_error(exc)
    language.use_reader(result.subscriber.locale)
    metrics.confirmed(result.confirmed)
    return _confirmed_page(result)


def _confirmed_page(result: subs.ConfirmResult) -> str:
    return render_template(
        "public/confirmed.html",
        result=result,
        preferences_token=_preferences_token(result.subscriber),
    )


def _preferences_token(subscriber: Subscriber) -> str:
    return _links().preferences_token(links.reader_of(subscriber))


@bp.post(PATHS[links.CONFIRM] + "<token>/resend")
def confirm_resend(token: str) -> str | tuple[str, int]:
    """Send a fresh confirmation link in place of an expired one."""
    try:
        link = _confirm_link(token)
    except links.ExpiredLink as exc:
        link = exc.link  # type: ignore[assignment]
    except links.LinkError as exc:
        return _link_error(exc)
    try:
        pending = subs.resend_confirmation(
            db.session,
            link,
            signup.consent_origin("confirm-resend"),
            signup.confirmation_limit(),
        )
    except subs.TooManyConfirmations as exc:
        title = gettext("Please wait")
        return render_template("public/message.html", title=title, text=exc.message), 429
    except links.LinkError as exc:
        return _link_error(exc)
    if pending:
        language.use_reader(pending[0].subscriber.locale)
    return render_template("public/resent.html", subscriptions=pending)


def _unsubscribe_page(subscriptions: list[Subscription], done: bool) -> str:
    subscriber = subscriptions[0].subscriber
    language.use_reader(subscriber.locale)
    return render_template(
        "public/unsubscribe.html",
        subscription=subscriptions[0],
        subscriptions=subscriptions,
        done=done,
        preferences_token=_preferences_token(subscriber),
    )


def _list_subscriptions(token: str, only: int | None = None) -> list[Subscription]:
    """The link's list, or each list of the combined mail it came in; `only` one of these."""
    link = _links().read_unsubscribe(token)
    if only is not None:
        if only not in link.newsletter_ids:
            raise links.LinkNoLongerValid()
        link = links.UnsubscribeLink(link.reader, only)
    return subs.list_subscriptions(db.session, link)


def _test_link_page() -> str:
    """The page of a link in an editor's test copy or preview: it names nobody, so says so."""
    return render_template(
        "public/message.html",
        title=gettext("This was a test copy"),
        text=gettext(
            "This link comes from an editor's test copy or preview of a newsletter, not from a "
            "mail sent to a reader: it unsubscribes nobody and changes nothing. In the mails "
            "readers get, this link unsubscribes them in one click."
        ),
    )


def _is_test(read: links.UnsubscribeLink | links.Reader) -> bool:
    reader = read.reader if isinstance(read, links.UnsubscribeLink) else read
    return reader == links.TEST_READER


@bp.get(PATHS[links.UNSUBSCRIBE] + "<token>")
@bp.get(PATHS[links.UNSUBSCRIBE] + "<token>/<int:only>")
def unsubscribe(token: str, only: int | None = None) -> str | tuple[str, int]:
    """Ask before leaving: a GET (a link scanner, a prefetch) changes nothing.

    A combined mail's link leaves every list it carried; followed by one of their ids (the
    footer's link for each list), only that one.
    """
    try:
        if _is_test(_links().read_unsubscribe(token)):
            return _test_link_page()
        subscriptions = _list_subscriptions(token, only)
    except links.LinkError as exc:
        return _link_error(exc)
    left = all(s.status == SubscriptionStatus.UNSUBSCRIBED for s in subscriptions)
    return _unsubscribe_page(subscriptions, left)


@bp.post(PATHS[links.UNSUBSCRIBE] + "<token>")
@bp.post(PATHS[links.UNSUBSCRIBE] + "<token>/<int:only>")
def unsubscribe_post(token: str, only: int | None = None) -> str | tuple[str, int]:
    """Leave at once: the RFC 8058 one-click POST from a mail client, or the page's button."""
    try:
        if _is_test(_links().read_unsubscribe(token)):
            return _test_link_page()
        subscriptions = _list_subscriptions(token, only)
    except links.LinkError as exc:
        return _link_error(exc)
    source = "one-click" if "List-Unsubscribe" in request.form else "unsubscribe-page"
    origin = signup.consent_origin(source)
    for subscription in subscriptions:
        metrics.unsubscribing(subscription)
        subs.unsubscribe(db.session, subscription, origin, commit=False)
    db.session.commit()
    return _unsubscribe_page(subscriptions, True)


def _preferences_limit() -> str:
    return str(current_app.config["PREFERENCES_RATE_LIMIT"])


def _preferences_link_limit() -> str:
    return str(current_app.config["PREFERENCES_LINK_RATE_LIMIT"])


def _preferences_link_key() -> str:
    # The link travels with every forwarded mail: its changes are counted per reader,
    # wherever they come from.
    token = (request.view_args or {}).get("token", "")
    try:
        return f"preferences:{_links().read_preferences(token).subscriber_id}"
    except links.LinkError:
        return "preferences:broken"


@bp.route(PATHS[links.PREFERENCES] + "<token>", methods=["GET", "POST"])
@limiter.limit(_preferences_limit, scope="preferences")
@limiter.limit(_preferences_link_limit, methods=["POST"], key_func=_preferences_link_key)
def preferences(token: str) -> str | tuple[str, int]:
    """Every list with the reader's state; change them, or leave all."""
    try:
        if _is_test(_links().read_preferences(token)):
            return _test_link_page()
        subscriber = subs.reader(db.session, _links().read_preferences(token))
    except links.LinkError as exc:
        return _link_error(exc)
    language.use_reader(subscriber.locale)
    saved: dict[str, object] | None = None
    error = None
    newsletters = open_newsletters(db.session)
    if request.method == "POST":
        leave_all = request.form.get("action") == "leave-all"
        how_often = _frequencies_asked(request.form, newsletters)
        if isinstance(how_often, str) and not leave_all:
            error = how_often
        else:
            saved = _save_preferences(subscriber, how_often, leave_all)
    mailable = subs.mailable(db.session, subscriber)
    page = render_template(
        "public/preferences.html",
        subscriber=subscriber,
        choices=subs.choices(subscriber, newsletters, mailable=mailable),
        mailable=mailable,
        saved=saved,
        error=error,
        reader_locale=languages.known(subscriber.locale) or language.current(),
    )
    return (page, 422) if error else page


def _save_preferences(
    subscriber: Subscriber, how_often: dict[int, str | None] | str, leave_all: bool
) -> dict[str, object]:
    """Apply the page's choices: lists, how often, one combined mail, language."""
    wanted = {int(v) for v in request.form.getlist("newsletter") if _ID.fullmatch(v)}
    origin = signup.consent_origin()
    joined, left = subs.update_preferences(
        db.session, subscriber, wanted, origin, leave_all=leave_all
    )
    metrics.preferences_saved(joined, left)
    saved: dict[str, object] = {"joined": joined, "left": left}
    if leave_all or isinstance(how_often, str):
        return saved
    saved["frequencies"] = subs.set_frequencies(db.session, subscriber, how_often, origin)
    combined = request.form.get("combined") == "1"
    saved["combined"] = subs.set_combined(db.session, subscriber, combined, origin)
    chosen = languages.known(request.form.get("locale"))
    if chosen and subs.set_locale(db.session, subscriber, chosen):
        language.use_reader(chosen)
        saved["language"] = True
    return saved


def _frequencies_asked(
    form: MultiDict[str, str], newsletters: list[Newsletter]
) -> dict[int, str | None] | str:
    """How often the reader asked to hear from each list offering a choice (an empty value:
    the list's cadence), or what is wrong with a choice a list does not offer."""
    asked: dict[int, str | None] = {}
    for newsletter in newsletters:
        value = form.get(f"frequency-{newsletter.id}")
        if value is None:
            continue
        if value and not frequencies.valid_choice(newsletter, value):
            return gettext(
                "%(name)s cannot be sent that often: choose one of the choices shown.",
                name=newsletter.name,
            )
        asked[newsletter.id] = value or None
    return asked

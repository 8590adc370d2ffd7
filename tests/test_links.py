"""Signed links: made by `Links` from the base URL and keys, routed by the web app, read back."""

from __future__ import annotations

import pytest

from newsletter import links
from newsletter.links import Links, Reader

from factories import app_links, signup

READER = Reader(7, "per-person-key")


def endpoint(app, url: str) -> str:  # type: ignore[no-untyped-def]
    """The endpoint the app routes a link to, found in its URL map as a request would be."""
    path = url.removeprefix(app.config["BASE_URL"])
    adapter = app.url_map.bind("news.example.org")
    return adapter.match(path, method="GET")[0]


def test_every_link_mail_carries_is_routed_to_its_page(app):
    made = app_links()
    assert endpoint(app, made.confirm_url(READER, [(1, "nonce")])) == "public.confirm"
    assert endpoint(app, made.unsubscribe_url(READER, 3)) == "public.unsubscribe"
    assert endpoint(app, made.preferences_url(READER)) == "public.preferences"


def test_links_read_back_what_they_were_made_with(app):
    made = app_links()
    token = made.confirm_url(READER, [(1, "a"), (2, "b")]).rsplit("/", 1)[1]
    assert made.read_confirm(token, max_age=60) == links.ConfirmLink(READER, ((1, "a"), (2, "b")))
    token = made.unsubscribe_url(READER, 3).rsplit("/", 1)[1]
    assert made.read_unsubscribe(token) == links.UnsubscribeLink(READER, 3)
    assert made.read_preferences(made.preferences_token(READER)) == READER


def test_a_link_of_one_purpose_does_not_open_another(app):
    made = app_links()
    with pytest.raises(links.TamperedLink):
        made.read_unsubscribe(made.preferences_token(READER))


def test_an_expired_link_still_names_what_it_was_for(app):
    made = app_links()
    token = made.confirm_url(READER, [(1, "a")]).rsplit("/", 1)[1]
    with pytest.raises(links.ExpiredLink) as caught:
        made.read_confirm(token, max_age=-1)
    assert caught.value.link == links.ConfirmLink(READER, ((1, "a"),))


def test_rotated_keys_still_read_old_links_and_sign_with_the_new_key():
    old = Links("https://news.example.org", "old-key")
    rotated = Links("https://news.example.org", "new-key", ["old-key"])
    assert rotated.read_preferences(old.preferences_token(READER)) == READER
    with pytest.raises(links.TamperedLink):
        old.read_preferences(rotated.preferences_token(READER))


def test_a_link_for_a_reader_who_is_gone_is_no_longer_valid(app, client, db, newsletters):
    signup(client, "reader@example.com", "daily")
    token = app_links().preferences_token(Reader(999, "nobody"))
    response = client.get(f"/preferences/{token}")
    assert response.status_code == 410


def test_the_builder_needs_no_request_or_url_map():
    made = Links("https://news.example.org/newsletters/", "key")
    url = made.unsubscribe_url(READER, 3)
    assert url.startswith("https://news.example.org/newsletters/unsubscribe/")


def test_links_read_the_same_as_plain_itsdangerous_tokens_both_ways():
    from itsdangerous import URLSafeTimedSerializer

    made = Links("https://news.example.org", "k" * 40)
    plain = URLSafeTimedSerializer(["k" * 40], salt="newsletter.unsubscribe")
    reader = Reader(7, "key-of-seven")
    # Links mailed before (compressed when zlib made them shorter) still open.
    payload = {"s": 7, "k": "key-of-seven", "l": 3, "pad": "a" * 200}
    old = plain.dumps(payload)
    assert old.startswith(".")  # compressed
    assert made._loads(links.UNSUBSCRIBE, old) == payload
    # And ours are plain itsdangerous tokens.
    token = made.unsubscribe_token(reader, 3)
    assert plain.loads(token) == {"s": 7, "k": "key-of-seven", "l": 3}
    assert made.read_unsubscribe(token).newsletter_id == 3
    # A longer payload is still offered to zlib, as before.
    assert made.token(links.UNSUBSCRIBE, payload).startswith(".")

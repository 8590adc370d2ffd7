"""Host sites' origins: what counts as one, and where a reader may be sent back to."""

from __future__ import annotations

import pytest

from newsletter import origins


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://news.example.org", "https://news.example.org"),
        ("  https://News.Example.ORG/ ", "https://news.example.org"),
        ("HTTPS://news.example.org:443", "https://news.example.org"),
        ("http://news.example.org:80", "http://news.example.org"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("http://[::1]:5000", "http://[::1]:5000"),
        ("https://пример.укр", "https://xn--e1afmkfd.xn--j1amh"),
    ],
    ids=[
        "plain",
        "case-and-slash",
        "default-https-port",
        "default-http-port",
        "localhost",
        "ipv4",
        "ipv6",
        "idn",
    ],
)
def test_origins_are_written_as_browsers_send_them(text, origin):
    assert origins.normalise(text) == origin


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "such as https://news.example.org"),
        ("news.example.org", "such as https://news.example.org"),
        ("ftp://news.example.org", "such as https://news.example.org"),
        ("javascript:alert(1)", "such as https://news.example.org"),
        ("https://", "such as https://news.example.org"),
        ("*", "such as https://news.example.org"),
        ("null", "such as https://news.example.org"),
        ("https://news.example.org/world/story", "the site's origin is https://news.example.org"),
        ("https://news.example.org?page=1", "the site's origin is https://news.example.org"),
        ("https://news.example.org#top", "the site's origin is https://news.example.org"),
        ("https://editor@news.example.org", "no user name or password"),
        ("https://news..example.org", "is not a host name"),
        ("https://news_desk.example.org", "is not a host name"),
        ("https://news.example.org:99999", "such as https://news.example.org"),
        ("https://news.example.org\\@evil.example", "such as https://news.example.org"),
        ("https://news example.org", "such as https://news.example.org"),
        ("https://" + "a" * 300 + ".org", "such as https://news.example.org"),
    ],
    ids=[
        "empty",
        "no-scheme",
        "ftp",
        "javascript",
        "no-host",
        "wildcard",
        "null",
        "page",
        "query",
        "fragment",
        "userinfo",
        "empty-label",
        "underscore",
        "bad-port",
        "backslash",
        "space",
        "too-long",
    ],
)
def test_what_is_not_an_origin_gets_a_clear_message(text, message):
    with pytest.raises(origins.OriginError) as caught:
        origins.normalise(text)
    assert message in caught.value.message


def test_a_page_address_suggests_its_origin():
    with pytest.raises(origins.OriginError) as caught:
        origins.normalise("https://News.Example.org:443/world/story?x=1")
    assert caught.value.message == (
        "That is the address of a page; the site's origin is https://news.example.org. "
        "Enter only the scheme, the host and the port."
    )


def test_settings_that_are_not_origins_match_nothing():
    assert origins.configured(["https://a.example/", "a.example", "*"]) == {"https://a.example"}


ALLOWED = {"https://site.example", "http://localhost:8000"}


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "https://site.example/news/1?from=box#signup",
            "https://site.example/news/1?from=box#signup",
        ),
        ("https://site.example", "https://site.example/"),
        ("HTTPS://SITE.EXAMPLE/News", "https://site.example/News"),
        ("https://site.example:443/a", "https://site.example/a"),
        ("http://localhost:8000/article", "http://localhost:8000/article"),
        (
            "https://site.example/статті/1",
            "https://site.example/%D1%81%D1%82%D0%B0%D1%82%D1%82%D1%96/1",
        ),
        ("https://site.example/a%20b?q=%C3%A9", "https://site.example/a%20b?q=%C3%A9"),
    ],
    ids=["full", "bare-origin", "case", "default-port", "port", "unicode-path", "escapes-kept"],
)
def test_return_addresses_on_allowed_sites(url, target):
    assert origins.return_url(url, ALLOWED) == target


@pytest.mark.parametrize(
    "url",
    [
        "//evil.example/",
        "///evil.example/",
        "https://evil.example/",
        "https://site.example.evil.example/",
        "https://evil.example/#https://site.example/",
        "https://evil.example?https://site.example",
        "javascript:alert(document.domain)",
        "JaVaScRiPt://site.example/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://site.example\\@evil.example/",
        "https:\\\\evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://site.example@evil.example/",
        "https://user:pass@site.example/",
        "https://site.example:pass@evil.example/",
        "https:site.example/a",
        "https:/site.example/a",
        "http://site.example/",
        "https://site.example:8443/",
        " https://site.example/",
        "https://site.example/\r\nSet-Cookie: a=b",
        "https://site.example/\tx",
        "https://site.example/\x00",
        "/news/1",
        "",
        "https://site.example/" + "a" * 2000,
    ],
    ids=[
        "scheme-relative",
        "triple-slash",
        "other-site",
        "suffix-host",
        "fragment-trick",
        "query-trick",
        "javascript",
        "javascript-slashes",
        "data",
        "backslash-userinfo",
        "backslashes",
        "slash-backslash",
        "double-backslash",
        "userinfo-host",
        "userinfo-allowed-host",
        "password-trick",
        "no-slashes",
        "one-slash",
        "other-scheme",
        "other-port",
        "leading-space",
        "crlf",
        "tab",
        "nul",
        "relative",
        "empty",
        "too-long",
    ],
)
def test_any_other_return_address_is_refused(url):
    assert origins.return_url(url, ALLOWED) is None


@pytest.mark.parametrize(
    "value", [None, 42, ["https://site.example/"]], ids=["none", "int", "list"]
)
def test_a_return_address_must_be_text(value):
    assert origins.return_url(value, ALLOWED) is None

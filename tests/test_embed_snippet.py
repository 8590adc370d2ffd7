"""The embed snippets the admin shows: one newsletter's box, a box of several, their language,
preview and stylesheet."""

from __future__ import annotations

import html
import re
from pathlib import Path

import newsletter

from factories import make_newsletter, sign_in

STATIC = Path(newsletter.__file__).parent / "static"
SERVICE = "https://news.example.org"


def snippet_of(page: str) -> str:
    """The snippet as the page shows it to copy, unescaped."""
    match = re.search(r'<code id="snippet-code">(.*?)</code>', page, re.S)
    assert match, "no snippet on the page"
    return html.unescape(match.group(1))


def test_a_newsletters_snippet_is_a_plain_form_with_one_deferred_script(client, admin, daily):
    sign_in(client)
    page = client.get(f"/admin/newsletters/{daily.id}").get_data(as_text=True)
    code = snippet_of(page)
    assert code.count("<script") == 1
    assert f'<script src="{SERVICE}/static/embed.js" defer></script>' in code
    assert f'<link rel="stylesheet" href="{SERVICE}/static/embed.css">' in code
    assert f'method="post" action="{SERVICE}/subscribe"' in code
    assert 'data-newsletter-box data-lang="en" lang="en"' in code
    assert '<input type="hidden" name="newsletter" value="daily">' in code
    assert '<input type="hidden" name="lang" value="en">' in code
    assert "Enter your email to subscribe" in code and "* indicates required" in code
    # The label names the field; the required note describes it; the reply has a live region.
    box = re.search(r'id="(nl-daily-[0-9a-f]{4})"', code).group(1)
    assert f'<label class="nl-label" for="{box}-email">' in code
    assert f'aria-describedby="{box}-required"' in code
    assert 'role="status" aria-live="polite"' in code
    # Nothing the host page's policy could refuse, nothing of the admin's own page.
    assert "style=" not in code and "nonce" not in code and "\n\n" not in code
    # The live preview is the same snippet on a bare page, with a button to copy it.
    assert 'class="embed-preview"' in page and "srcdoc=" in page
    assert "Copy the snippet" in page


def test_the_snippet_in_ukrainian(client, admin, daily):
    sign_in(client)
    code = snippet_of(client.get(f"/admin/newsletters/{daily.id}?lang=uk").get_data(as_text=True))
    assert 'data-lang="uk" lang="uk"' in code
    assert '<input type="hidden" name="lang" value="uk">' in code
    assert "Підписатися" in code and "обов’язкове поле" in code
    assert "Спробуйте ще раз за хвилину." in code


def test_a_box_of_several_newsletters_offers_the_ones_picked(client, admin, newsletters):
    sign_in(client)
    first, second, third = newsletters
    page = client.get(
        f"/admin/embed?newsletter={first.slug}&newsletter={third.slug}&lang=en"
    ).get_data(as_text=True)
    code = snippet_of(page)
    boxes = re.findall(r'type="checkbox" name="newsletter" value="([^"]+)"', code)
    assert boxes == [first.slug, third.slug]
    assert "Choose your newsletters" in code and 'value="embed-multi"' in code
    # Every open newsletter is offered to pick from.
    picks = re.findall(r'<input type="checkbox" name="newsletter" value="([^"]+)"( checked)?', page)
    assert [(slug, bool(on)) for slug, on in picks] == [
        (first.slug, True),
        (second.slug, False),
        (third.slug, True),
    ]


def test_the_page_script_gets_the_section_alone(client, admin, newsletters):
    sign_in(client)
    section = client.get("/admin/embed?fragment=1").get_data(as_text=True)
    assert "<html" not in section and 'id="snippet-code"' in section


def test_a_box_asking_for_the_proof_of_work_says_so(client, admin):
    picks = make_newsletter("picks", altcha=True)
    sign_in(client)
    page = client.get(f"/admin/newsletters/{picks.id}").get_data(as_text=True)
    assert "data-altcha" in snippet_of(page)
    assert "readers need JavaScript to subscribe with it" in page


def test_editors_see_the_snippets_too(client, editor, daily):
    sign_in(client, editor.email)
    assert client.get("/admin/embed").status_code == 200
    assert client.get(f"/admin/newsletters/{daily.id}").status_code == 200


def test_the_stylesheet_gives_way_to_the_host_page():
    css = (STATIC / "embed.css").read_text()
    rules = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    assert "!important" not in rules
    selectors = [s.strip() for s in re.findall(r"([^{}]+)\{", rules)]
    assert selectors
    for selector in selectors:
        # Wrapped in :where(), so its weight is zero and any rule of the host page wins.
        assert selector.startswith(":where(") and selector.endswith(")"), selector
    classes = set(re.findall(r"\.([a-zA-Z][\w-]*)", rules))
    assert classes and all(name.startswith("nl-") for name in classes), classes

"""Embed snippets: a signup box for one newsletter, or one offering several, to paste on a site."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app, render_template, request
from flask_babel import force_locale

from newsletter import languages
from newsletter.extensions import db
from newsletter.models import Newsletter
from newsletter.newsletters import open_newsletters
from newsletter.web.admin.core import bp
from newsletter.web.language import current


@dataclass(frozen=True)
class Snippet:
    """A box's snippet as the site developer pastes it, and a bare page showing it."""

    newsletters: Sequence[Newsletter]
    lang: str
    code: str
    preview: str
    choose_frequency: bool = False


def box_id(newsletters: Sequence[Newsletter]) -> str:
    """An id for the box's fields, unlikely to meet another on the host page."""
    name = newsletters[0].slug if len(newsletters) == 1 else "newsletters"
    return f"nl-{name}-{secrets.token_hex(2)}"


def snippet(
    newsletters: Sequence[Newsletter], lang: str, choose_frequency: bool = False
) -> Snippet:
    """The snippet of a box for these newsletters, written in `lang`; with
    `choose_frequency`, it lets readers choose how often (when the lists offer a choice)."""
    service = str(current_app.config["BASE_URL"]).rstrip("/")
    source = "embed-" + (newsletters[0].slug if len(newsletters) == 1 else "multi")
    with force_locale(lang):
        rendered = render_template(
            "embed/snippet.html",
            newsletters=newsletters,
            box_id=box_id(newsletters),
            service=service,
            lang=lang,
            source=source,
            choose_frequency=choose_frequency,
        )
        # The template's tags leave blank lines: the site developer gets none.
        code = "\n".join(line for line in rendered.splitlines() if line.strip())
        preview = render_template("embed/preview.html", code=code, lang=lang)
    return Snippet(newsletters, lang, code, preview, choose_frequency)


def chosen_language() -> str:
    """The box's language from the page's `lang`, else the editor's."""
    return languages.known(request.args.get("lang")) or current()


def chosen_frequency() -> bool:
    """Whether the page asks for a box that lets readers choose how often."""
    return request.args.get("frequency") == "1"


def render_section(page: str, **values: object) -> str:
    """The page, or only its snippet section when the page's script asks for it."""
    if request.args.get("fragment") == "1":
        return render_template("admin/_embed_result.html", **values)
    return render_template(page, **values)


@bp.get("/embed")
def embed() -> str:
    """A box offering several newsletters as checkboxes: pick them, see it, copy it."""
    offered = open_newsletters(db.session)
    wanted = set(request.args.getlist("newsletter"))
    picked = [n for n in offered if n.slug in wanted] if wanted else offered
    lang = chosen_language()
    return render_section(
        "admin/embed.html",
        offered=offered,
        picked=picked,
        lang=lang,
        snippet=snippet(picked, lang, chosen_frequency()) if picked else None,
    )


def newsletter_snippet(newsletter: Newsletter) -> Snippet:
    """The snippet on a newsletter's own page, in the language the page asks for."""
    return snippet([newsletter], chosen_language(), chosen_frequency())

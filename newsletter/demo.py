"""Demo newsletters and news items, drawn from the news page whose boxes we serve."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import site
from newsletter.models import Item, Newsletter, NewsletterText

# The newsroom of the page whose boxes we serve (the seed page), with an address of the kind a
# publisher gives at the foot of its mail. The home page stays this service's own front page:
# in the demo, the article with the boxes.
SITE = {
    "name": "The Kyiv Independent",
    "accent_colour": "#a4262c",
    "postal_address": "vul. Prykladna 1, office 12\nKyiv 01001\nUkraine",
    "from_name": "The Kyiv Independent",
}

NEWSLETTERS = [
    {
        "slug": "daily",
        "name": "Daily Briefing",
        "description": "The day's most important news from Ukraine, every evening.",
        "cadence": "daily",
        # Its boxes ask how often: breaking alerts, the daily edition or a weekly one.
        "frequencies": "alert,daily,weekly",
        "default_frequency": "daily",
    },
    {
        "slug": "explaining-ukraine",
        "name": "Explaining Ukraine with Kate Tsurkan",
        "description": "A weekly letter on the history and culture behind the headlines.",
        "cadence": "weekly",
    },
    {
        "slug": "occupied-territories",
        "name": "Under Occupation",
        "description": "Uncover what's happening in the territories under Russian occupation.",
        "cadence": "weekly",
    },
    {
        "slug": "editors-picks",
        "name": "Editors' Picks",
        "description": "The week's best reporting, chosen by our editors.",
        "cadence": "weekly",
        # Its boxes show the proof of work (ALTCHA), as a list bots were after would.
        "altcha": True,
    },
]

# The lists' names and descriptions as the newsroom's Ukrainian boxes show them.
UKRAINIAN = {
    "daily": ("Щоденний огляд", "Найважливіші новини з України щовечора."),
    "explaining-ukraine": (
        "Пояснюємо Україну з Кейт Цуркан",
        "Щотижневий лист про історію та культуру, що стоять за заголовками.",
    ),
    "occupied-territories": (
        "Під окупацією",
        "Що відбувається на територіях під російською окупацією.",
    ),
    "editors-picks": ("Вибір редакції", "Найкращі матеріали тижня, відібрані нашими редакторами."),
}

ITEMS = [
    {
        "guid": "demo:drones-moscow-smolensk",
        "title": "2 drones shot down over Moscow, Smolensk oblasts, Russia claims",
        "url": "https://news.example/news/2-drones-shot-down-over-moscow-smolensk-oblasts",
        "summary": "Russian air defense units intercepted two drones over Moscow and Smolensk "
        "oblasts, the Russian Defense Ministry alleged on Nov. 10.",
        "published_at": datetime(2023, 11, 11, 1, 52, tzinfo=UTC),
        "lists": ["daily", "editors-picks"],
    },
    {
        "guid": "demo:lancet-drone",
        "title": "How Russia\u2019s homegrown Lancet drone became so feared in Ukraine",
        "url": "https://news.example/news/how-russias-homegrown-lancet-drone-became-so-feared",
        "summary": "In the bubble of pro-Ukraine communities on the Internet, the constant "
        "inflow of battlefield videos showing the destruction of Russian equipment regularly "
        "lifts the moods of hundreds of thousands of supporters of Ukraine\u2019s struggle.",
        "published_at": datetime(2023, 11, 10, 18, 0, tzinfo=UTC),
        "lists": ["explaining-ukraine", "editors-picks"],
    },
    {
        "guid": "demo:moldova-sandu-run-off",
        "title": "Moldova's Sandu advances to presidential run-off, winning after 'unfair fight.'",
        "url": "https://news.example/news/moldovas-sandu-advances-to-presidential-run-off",
        "summary": "\u201cThe people of Moldova have spoken: our EU future will now be anchored "
        "in the constitution,\u201d Sandu said on X.",
        "published_at": datetime(2023, 11, 11, 2, 18, tzinfo=UTC),
        "lists": ["daily"],
    },
    {
        "guid": "demo:russian-attacks-kill-5",
        "title": "Update: Russian attacks against Ukraine kill 5, injure 38 over past day.",
        "url": "https://news.example/news/russian-attacks-against-ukraine-kill-5-injure-38",
        "summary": "Ukrainian air defenses shot down 59 of the 116 Shahed-type attack drones "
        "launched by Russia overnight, the Air Force said.",
        "published_at": datetime(2023, 11, 11, 10, 35, tzinfo=UTC),
        "lists": ["daily", "occupied-territories"],
    },
]


def load(session: Session) -> tuple[int, int]:
    """Add whatever demo rows are missing; return how many newsletters and items were added."""
    existing = {n.slug: n for n in session.scalars(select(Newsletter))}
    added_lists = 0
    for position, data in enumerate(NEWSLETTERS):
        if data["slug"] not in existing:
            newsletter = Newsletter(position=position, **data)
            session.add(newsletter)
            existing[newsletter.slug] = newsletter
            added_lists += 1
    session.flush()
    translated = set(session.scalars(select(NewsletterText.newsletter_id)))
    for slug, (name, description) in UKRAINIAN.items():
        if existing[slug].id not in translated:
            session.add(
                NewsletterText(
                    newsletter_id=existing[slug].id, locale="uk", name=name, description=description
                )
            )
    known = set(session.scalars(select(Item.guid)))
    added_items = 0
    for data in ITEMS:
        if data["guid"] in known:
            continue
        fields = {k: v for k, v in data.items() if k != "lists"}
        session.add(Item(**fields, source="demo", newsletters=[existing[s] for s in data["lists"]]))
        added_items += 1
    session.commit()
    # Only when no admin has saved settings: loading the demo again changes nothing.
    site.set_defaults(session, SITE)
    return added_lists, added_items

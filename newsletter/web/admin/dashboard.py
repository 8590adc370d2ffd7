"""The dashboard: every newsletter's figures at a glance."""

from __future__ import annotations

from flask import render_template
from flask_babel import gettext as _

from newsletter import charts, stats
from newsletter import newsletters as lists
from newsletter.bounces import figures
from newsletter.extensions import db
from newsletter.models import utcnow
from newsletter.web.admin.core import bp


@bp.get("/")
def dashboard() -> str:
    """Per newsletter: subscribers by state, recent signups and departures, growth of all
    open newsletters together and of each one."""
    now = utcnow()
    open_lists = [n for n in lists.all_newsletters(db.session) if not n.archived]
    # One chart per open newsletter besides the combined one: a list can shrink while the
    # total grows. Every list's series in one pass; the combined one is their sum.
    growth_of = stats.growth_each(db.session, now)
    growth = stats.combined(growth_of)
    return render_template(
        "admin/dashboard.html",
        newsletters=open_lists,
        counts=stats.status_counts(db.session),
        activity=stats.activity(db.session, now),
        growth=growth,
        delivery=figures.last_days(db.session, now),
        complaint_line=figures.COMPLAINT_LINE,
        bounce_line=figures.BOUNCE_LINE,
        chart=charts.growth_svg(growth, title=_("Confirmed subscribers, last 90 days")),
        growth_of=growth_of,
        charts_of={
            n.id: charts.growth_svg(
                growth_of.get(n.id, []),
                title=_("Confirmed subscribers of %(name)s, last 90 days", name=n.name),
                height=160,
            )
            for n in open_lists
        },
    )

"""The dashboard: every newsletter's figures at a glance."""

from __future__ import annotations

from flask import render_template

from newsletter import newsletters as lists
from newsletter.extensions import db
from newsletter.web.admin.core import bp


@bp.get("/")
def dashboard() -> str:
    """Per newsletter: subscribers by state, recent signups and departures, growth."""
    return render_template("admin/dashboard.html", newsletters=lists.all_newsletters(db.session))

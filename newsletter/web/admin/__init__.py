"""The admin area: sign-in, dashboard, newsletters, boxes, items, digests, subscribers, sites."""

from newsletter.web.admin import (
    auth,
    dashboard,
    digests,
    embed,
    imports,
    items,
    language,
    newsletters,
    site_settings,
    sites,
    subscribers,
    suppressions,
    tokens,
)
from newsletter.web.admin.core import bp

__all__ = [
    "bp",
    "auth",
    "dashboard",
    "digests",
    "embed",
    "imports",
    "items",
    "language",
    "newsletters",
    "site_settings",
    "sites",
    "subscribers",
    "suppressions",
    "tokens",
]

"""The admin area: sign-in, dashboard, newsletters, boxes, items, digests, subscribers, sites,
accounts."""

from newsletter.web.admin import (
    accounts,
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
from newsletter.web.admin.core import bp, register

__all__ = [
    "bp",
    "register",
    "accounts",
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

"""The admin area: sign-in, dashboard, newsletters, items, digests, subscribers, tokens, sites."""

from newsletter.web.admin import (
    auth,
    dashboard,
    digests,
    imports,
    items,
    language,
    newsletters,
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
    "imports",
    "items",
    "language",
    "newsletters",
    "sites",
    "subscribers",
    "suppressions",
    "tokens",
]

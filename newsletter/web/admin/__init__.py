"""The admin area: sign-in, dashboard, newsletters, subscribers."""

from newsletter.web.admin import auth, dashboard, imports, newsletters, subscribers
from newsletter.web.admin.core import bp

__all__ = ["bp", "auth", "dashboard", "imports", "newsletters", "subscribers"]

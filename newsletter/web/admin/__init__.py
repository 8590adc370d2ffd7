"""The admin area: sign-in, dashboard, newsletters, subscribers."""

from newsletter.web.admin import auth, dashboard, newsletters, subscribers
from newsletter.web.admin.core import bp

__all__ = ["bp", "auth", "dashboard", "newsletters", "subscribers"]

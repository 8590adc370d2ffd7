"""The admin area: sign-in, dashboard, newsletters."""

from newsletter.web.admin import auth, dashboard, newsletters
from newsletter.web.admin.core import bp

__all__ = ["bp", "auth", "dashboard", "newsletters"]

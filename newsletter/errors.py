"""The one kind of error whose message is written for the person who caused it."""

from __future__ import annotations

from newsletter.languages import lazy_gettext


class UserError(Exception):
    """Something the rules refuse; `message` is fit to show a reader, an editor or an admin.

    Each subclass says in `message` what its refusal means; a raise may say it more exactly.
    """

    message: str = lazy_gettext("Something is wrong with this request.")

    def __init__(self, message: str | None = None) -> None:
        # Translated now, in the language of the request that caused it (English elsewhere).
        text = str(message or self.message)
        super().__init__(text)
        self.message = text

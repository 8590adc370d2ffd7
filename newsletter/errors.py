"""The one kind of error whose message is written for the person who caused it."""

from __future__ import annotations


class UserError(Exception):
    """Something the rules refuse; `message` is fit to show a reader, an editor or an admin.

    Each subclass says in `message` what its refusal means; a raise may say it more exactly.
    """

    message = "Something is wrong with this request."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message

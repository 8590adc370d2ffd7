"""The languages readers and editors are answered in: English, the default, and Ukrainian."""

from __future__ import annotations

from babel.support import LazyProxy

# Each language with its name in itself, as a language switch shows it.
LANGUAGES: dict[str, str] = {"en": "English", "uk": "Українська"}
DEFAULT = "en"


def known(value: object) -> str | None:
    """Our language for a tag (`uk`, `uk-UA`, `en_GB`), or None when it names none of ours."""
    if not isinstance(value, str):
        return None
    primary = value.strip().replace("_", "-").partition("-")[0].lower()
    return primary if primary in LANGUAGES else None


def N_(msgid: str) -> str:
    """Mark a text for the catalogue where it must stay plain English (a constant others
    compare with); it is translated with gettext where it is shown."""
    return msgid


def lazy_gettext(msgid: str) -> str:
    """A text translated each time it is shown, for modules that do not import Flask."""
    return LazyProxy(_translated, msgid, enable_cache=False)  # type: ignore[return-value]


def _translated(msgid: str) -> str:
    # Imported here: the modules that mark their texts with this one stay free of Flask.
    from flask_babel import gettext

    return gettext(msgid)


def gettext(msgid: str, **params: object) -> str:
    """A text translated now, with `%(name)s` parameters, for modules that do not import Flask."""
    from flask_babel import gettext as translate

    return translate(msgid, **params)

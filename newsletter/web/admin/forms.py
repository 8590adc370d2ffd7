"""Admin forms (Flask-WTF: every one carries a CSRF token)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import current_app
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    URLField,
)
from wtforms.fields import Field, SelectChoice
from wtforms.validators import (
    DataRequired,
    Email,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    Regexp,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from newsletter import texts
from newsletter.addresses import InvalidSender, sender_address
from newsletter.digests import cadence, items
from newsletter.frequencies import DAILY, WEEKLY, parse
from newsletter.frequencies import LABELS as FREQUENCY_LABELS
from newsletter.languages import DEFAULT, LANGUAGES
from newsletter.mail.dkim import aligned as dkim_aligned
from newsletter.models import (
    DEFAULT_BUTTON,
    DEFAULT_PROMPT,
    DEFAULT_THANKS,
    AutoDigest,
    Edition,
    ImportMode,
    NewsletterText,
)
from newsletter.subscriptions import SLUG

WEEKDAYS = (
    lazy_gettext("Monday"),
    lazy_gettext("Tuesday"),
    lazy_gettext("Wednesday"),
    lazy_gettext("Thursday"),
    lazy_gettext("Friday"),
    lazy_gettext("Saturday"),
    lazy_gettext("Sunday"),
)


def _one_line(form: FlaskForm, field: StringField) -> None:
    """Names and addresses end up in mail headers: no line breaks."""
    if field.data and any(c in field.data for c in "\r\n\0"):
        raise ValidationError(_("Use a single line."))


def _web_address(form: FlaskForm, field: StringField) -> None:
    """Only absolute http and https addresses: the service fetches them."""
    if field.data:
        parts = urlsplit(field.data.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(_("Use an http:// or https:// address."))


@cache
def time_zone_names() -> list[str]:
    """The IANA zone names this machine knows, offered as the time zone field's choices."""
    return sorted(available_timezones() - {"localtime"})


def _time_zone(form: FlaskForm, field: StringField) -> None:
    """A zone the IANA database knows, such as Europe/Kyiv."""
    name = (field.data or "").strip()
    try:
        cadence.zone(name)
    except cadence.CadenceError as exc:
        raise ValidationError(_("Use a time zone name such as Europe/Kyiv or UTC.")) from exc
    field.data = name


def _sender(form: FlaskForm, field: EmailField) -> None:
    """An address mail goes out with: its domain kept in ASCII (IDNA), its local part ASCII."""
    if field.data:
        try:
            field.data = sender_address(field.data)
        except InvalidSender as exc:
            raise ValidationError(exc.message) from exc


def _or_empty(value: object) -> str:
    """A choice stored as None is the select's empty option."""
    return str(value) if value else ""


class FrequencyChoices(SelectMultipleField):
    """Checkboxes of frequencies, read from the list's stored comma-separated form."""

    def process_data(self, value: object) -> None:
        self.data = list(parse(value)) if isinstance(value, str) or value is None else value


class LoginForm(FlaskForm):
    email = EmailField(lazy_gettext("Email"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(lazy_gettext("Password"), validators=[DataRequired(), Length(max=500)])


def _dkim_aligned(form: FlaskForm, field: EmailField) -> None:
    """With DKIM on, the From domain must align with the signing domain (DMARC), or the
    signature does not count and large mailbox providers file the mail as spam."""
    signing = current_app.config.get("DKIM_DOMAIN")
    if not signing or not current_app.config.get("DKIM_PRIVATE_KEY") or not field.data:
        return
    if not dkim_aligned(field.data, str(signing)):
        raise ValidationError(
            _(
                "Mail from this address is DKIM-signed as %(domain)s, which does not match its "
                "domain: use an address at %(domain)s (or a subdomain of it).",
                domain=signing,
            )
        )


# A newsletter's texts an editor may give per language: label, field, longest, single line.
_TEXT_FIELDS = {
    "name": (lazy_gettext("Name"), StringField, 200, True),
    "description": (lazy_gettext("Description"), TextAreaField, 2000, False),
    "prompt_text": (lazy_gettext("Box prompt"), StringField, 200, True),
    "button_text": (lazy_gettext("Button"), StringField, 60, True),
    "thanks_text": (lazy_gettext("Thank-you text"), TextAreaField, 500, False),
    "welcome_text": (lazy_gettext("Welcome mail text"), TextAreaField, 5000, False),
}
# The languages besides the default one, in which a newsletter's texts may be given too.
OTHER_LANGUAGES = tuple(lang for lang in LANGUAGES if lang != DEFAULT)


class NewsletterForm(FlaskForm):
    name = StringField(
        lazy_gettext("Name"), validators=[DataRequired(), Length(max=200), _one_line]
    )
    slug = StringField(
        lazy_gettext("Slug"),
        description=lazy_gettext(
            "Lower-case letters, digits and dashes; the signup boxes name the list by it."
        ),
        validators=[
            DataRequired(),
            Regexp(
                SLUG.pattern + "$",
                message=lazy_gettext("Use lower-case letters, digits and dashes."),
            ),
        ],
    )
    description = TextAreaField(lazy_gettext("Description"), validators=[Length(max=2000)])
    cadence = SelectField(
        lazy_gettext("Cadence"),
        choices=[
            SelectChoice("daily", lazy_gettext("Daily")),
            SelectChoice("weekly", lazy_gettext("Weekly")),
            SelectChoice("monthly", lazy_gettext("Monthly")),
        ],
    )
    from_name = StringField(
        lazy_gettext("From name"), validators=[Optional(), Length(max=200), _one_line]
    )
    from_address = EmailField(
        lazy_gettext("From address"),
        validators=[Optional(), Email(), Length(max=254), _sender, _dkim_aligned],
    )
    reply_to = EmailField(
        lazy_gettext("Reply-To"), validators=[Optional(), Email(), Length(max=254), _sender]
    )
    prompt_text = StringField(
        lazy_gettext("Box prompt"),
        default=DEFAULT_PROMPT,
        validators=[DataRequired(), Length(max=200)],
    )
    button_text = StringField(
        lazy_gettext("Button"), default=DEFAULT_BUTTON, validators=[DataRequired(), Length(max=60)]
    )
    thanks_text = TextAreaField(
        lazy_gettext("Thank-you text"),
        default=DEFAULT_THANKS,
        validators=[DataRequired(), Length(max=500)],
    )
    welcome_text = TextAreaField(lazy_gettext("Welcome mail text"), validators=[Length(max=5000)])
    welcome_enabled = BooleanField(
        lazy_gettext("Send a welcome mail after confirmation"), default=True
    )
    altcha = BooleanField(
        lazy_gettext("Ask for a proof of work (ALTCHA)"),
        description=lazy_gettext(
            "Keeps bots out without a third party: the reader's browser works for about a "
            "second before the signup counts. Readers need JavaScript for it."
        ),
        default=False,
    )
    archive_public = BooleanField(
        lazy_gettext("Public archive"),
        description=lazy_gettext(
            "Sent editions are on the web for anyone, with an Atom feed. Unticked, only "
            "readers open them, through the link in their mails."
        ),
        default=True,
    )
    feed_url = URLField(
        lazy_gettext("Feed URL"),
        description=lazy_gettext(
            "An RSS or Atom feed of the site's news for this list; "
            "its new items are added before each automatic digest."
        ),
        validators=[Optional(), Length(max=1000), _web_address],
    )
    alert_categories = StringField(
        lazy_gettext("Feed categories that mean breaking news"),
        description=lazy_gettext(
            "Comma-separated, such as Breaking, Urgent. A new feed item of one of these "
            "categories goes out at once as a breaking alert to the readers who chose alerts; "
            "the feed is then read every two minutes."
        ),
        validators=[Optional(), Length(max=500), _one_line],
    )
    send_time = StringField(
        lazy_gettext("Send time"),
        default="08:00",
        description=lazy_gettext("HH:MM, 24-hour clock, in the time zone below."),
        validators=[
            DataRequired(),
            Regexp(
                r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z",
                message=lazy_gettext("Use HH:MM, such as 08:00."),
            ),
        ],
    )
    timezone = SelectField(
        lazy_gettext("Time zone"),
        default="UTC",
        description=lazy_gettext(
            "Where the newsroom is: send times, schedules and item times are in this zone."
        ),
        choices=time_zone_names,
        # The zone check says what is wrong in words an editor reads.
        validate_choice=False,
        validators=[DataRequired(), _time_zone],
    )
    send_weekday = SelectField(
        lazy_gettext("Weekday (weekly lists)"),
        coerce=int,
        default=0,
        choices=[SelectChoice(n, day) for n, day in enumerate(WEEKDAYS)],
    )
    auto_digest = SelectField(
        lazy_gettext("Automatic digests"),
        description=lazy_gettext("Monthly lists go on the first day of the month."),
        default=AutoDigest.OFF.value,
        choices=[
            SelectChoice(AutoDigest.OFF.value, lazy_gettext("Off: editors compose each digest")),
            SelectChoice(
                AutoDigest.DRAFT.value, lazy_gettext("Create a draft for review on the cadence")
            ),
            SelectChoice(AutoDigest.SEND.value, lazy_gettext("Send directly on the cadence")),
        ],
    )

    frequencies = FrequencyChoices(
        lazy_gettext("Readers may choose"),
        description=lazy_gettext(
            "How often readers may hear from the list; none ticked: only the cadence above."
        ),
        choices=[SelectChoice(f, label) for f, label in FREQUENCY_LABELS.items()],
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        render_kw={"class": "checks"},
    )
    default_frequency = SelectField(
        lazy_gettext("Preselected in the boxes"),
        choices=[SelectChoice("", lazy_gettext("The cadence above"))]
        + [SelectChoice(f, label) for f, label in FREQUENCY_LABELS.items()],
        coerce=_or_empty,
        default="",
        # The check below says what is wrong: a choice the list does not offer.
        validate_choice=False,
    )
    weekly_max_items = IntegerField(
        lazy_gettext("Items in the weekly edition at most"),
        description=lazy_gettext("The week's items, the editor's picks first."),
        default=10,
        validators=[Optional(), NumberRange(1, 100, lazy_gettext("Between 1 and 100."))],
    )

    def validate_default_frequency(self, field: SelectField) -> None:
        if field.data and field.data not in (self.frequencies.data or []):
            raise ValidationError(_("The preselected choice must be one of those the list offers."))

    def edition_fields(self) -> list[tuple[str, list[Field]]]:
        """The schedule fields of each edition besides the cadence's."""
        return [
            (frequency, [self[f"{frequency}_{name}"] for name in names])
            for frequency, names in EDITION_FIELDS.items()
        ]

    def edition_values(self, frequency: str) -> dict[str, object]:
        """One edition's schedule as given."""
        return {name: self[f"{frequency}_{name}"].data for name in EDITION_FIELDS[frequency]}

    def show_editions(self, editions: Iterable[Edition]) -> None:
        """Fill the editions' fields with their stored schedules."""
        for edition in editions:
            for name in EDITION_FIELDS.get(edition.frequency, ()):
                self[f"{edition.frequency}_{name}"].data = getattr(edition, name)

    def versions(self) -> list[tuple[str, list[Field]]]:
        """The fields of the newsletter's texts in each other language."""
        return [
            (lang, [self[f"{lang}_{name}"] for name in texts.FIELDS]) for lang in OTHER_LANGUAGES
        ]

    def version_values(self, lang: str) -> dict[str, str]:
        """The texts given for one language."""
        return {name: self[f"{lang}_{name}"].data or "" for name in texts.FIELDS}

    def show_version(self, lang: str, version: NewsletterText | None) -> None:
        """Fill one language's fields with the texts kept for it."""
        for name in texts.FIELDS:
            self[f"{lang}_{name}"].data = getattr(version, name) if version is not None else ""


# Each edition's schedule besides the cadence's: fields named <frequency>_<setting>.
EDITION_FIELDS = {
    DAILY: ("send_time", "timezone", "auto_digest"),
    WEEKLY: ("send_time", "timezone", "send_weekday", "auto_digest"),
}
_EDITION_LABELS = {
    "send_time": lazy_gettext("Send time"),
    "timezone": lazy_gettext("Time zone"),
    "send_weekday": lazy_gettext("Weekday"),
    "auto_digest": lazy_gettext("Automatic digests"),
}
for _frequency, _names in EDITION_FIELDS.items():
    for _name in _names:
        _template = NewsletterForm.__dict__[_name]
        _settings = {**_template.kwargs, "description": ""}
        setattr(
            NewsletterForm,
            f"{_frequency}_{_name}",
            _template.field_class(_EDITION_LABELS[_name], **_settings),
        )

# The texts in other languages: their fields are named <language>_<text>, such as uk_name.
for _lang in OTHER_LANGUAGES:
    for _name, (_label, _kind, _longest, _single) in _TEXT_FIELDS.items():
        _checks = [Optional(), Length(max=_longest)] + ([_one_line] if _single else [])
        setattr(NewsletterForm, f"{_lang}_{_name}", _kind(_label, validators=_checks))


class TokenForm(FlaskForm):
    name = StringField(
        lazy_gettext("Name"),
        description=lazy_gettext("Who uses it, such as the site's publishing system."),
        validators=[DataRequired(), Length(max=100), _one_line],
    )


class ItemForm(FlaskForm):
    title = StringField(
        lazy_gettext("Title"), validators=[DataRequired(), Length(max=items.MAX_TITLE), _one_line]
    )
    url = URLField(
        lazy_gettext("Link"),
        validators=[DataRequired(), Length(max=items.MAX_URL), _web_address],
    )
    summary = TextAreaField(
        lazy_gettext("Summary"),
        description=lazy_gettext("Plain text."),
        validators=[Length(max=items.MAX_SUMMARY)],
    )
    published_at = DateTimeLocalField(
        lazy_gettext("Published"),
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
        description=lazy_gettext("Empty: now."),
        validators=[Optional()],
    )
    pick = BooleanField(
        lazy_gettext("Editor's pick"),
        description=lazy_gettext("First in the weekly edition."),
    )
    # The zones of the open newsletters: the publication time is read in the one chosen.
    zone = SelectField(lazy_gettext("Time zone of that time"), validators=[DataRequired()])
    newsletters = SelectMultipleField(
        lazy_gettext("Newsletters"),
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        render_kw={"class": "checks"},
        validate_choice=True,
    )
    alert = BooleanField(
        lazy_gettext("Send as breaking alert"),
        description=lazy_gettext(
            "Mailed within a minute, the item alone, to the readers who chose alerts on its "
            "newsletters that offer them (a few a day at most per reader). Once sent, it is "
            "not sent again."
        ),
        default=False,
    )

    def validate_newsletters(self, field: SelectMultipleField) -> None:
        if not field.data:
            raise ValidationError(_("Choose at least one newsletter."))


class ImportForm(FlaskForm):
    file = FileField(
        lazy_gettext("CSV file"),
        description=lazy_gettext(
            "The first row names the columns: email (required), locale, subscribed_at "
            "(an ISO 8601 date or time, UTC unless a zone is given); others are ignored. "
            "UTF-8, separated by commas or semicolons."
        ),
        validators=[FileRequired(lazy_gettext("Choose a CSV file."))],
        render_kw={"accept": ".csv,text/csv,text/plain"},
    )
    newsletter = SelectField(lazy_gettext("Newsletter"), validators=[DataRequired()])
    mode = SelectField(
        lazy_gettext("These people"),
        choices=[
            SelectChoice(
                ImportMode.CONFIRM.value,
                lazy_gettext("get a confirmation mail and join once they confirm"),
            ),
            SelectChoice(
                ImportMode.CONSENTED.value,
                lazy_gettext("consented elsewhere: subscribe them at once, no mail"),
            ),
        ],
        default=ImportMode.CONFIRM.value,
    )
    consent_note = TextAreaField(
        lazy_gettext("Consent note"),
        description=lazy_gettext(
            "How and when they agreed; kept in each one's consent trail. "
            "Required when they consented elsewhere."
        ),
        validators=[Length(max=2000)],
    )

    def validate_consent_note(self, field: TextAreaField) -> None:
        if self.mode.data == ImportMode.CONSENTED and not (field.data or "").strip():
            raise ValidationError(_("Say how and when these people consented."))


class DigestForm(FlaskForm):
    # The items' order, removals and additions are rows of inputs the view reads itself.
    subject = StringField(
        lazy_gettext("Subject"),
        validators=[DataRequired(lazy_gettext("A digest needs a subject.")), Length(max=300)],
    )
    intro = TextAreaField(
        lazy_gettext("Introduction"),
        description=lazy_gettext("Plain text, shown above the items. Optional."),
        validators=[Length(max=10_000)],
    )


class ScheduleForm(FlaskForm):
    when = DateTimeLocalField(
        lazy_gettext("Send at"),
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=[InputRequired(lazy_gettext("Choose a day and a time."))],
    )

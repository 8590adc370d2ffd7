"""Admin forms (Flask-WTF: every one carries a CSRF token)."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from flask import current_app
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    URLField,
)
from wtforms.fields import SelectChoice
from wtforms.validators import (
    DataRequired,
    Email,
    InputRequired,
    Length,
    Optional,
    Regexp,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from newsletter.addresses import InvalidSender, sender_address
from newsletter.digests import cadence, items
from newsletter.mail.dkim import aligned as dkim_aligned
from newsletter.models import (
    DEFAULT_BUTTON,
    DEFAULT_PROMPT,
    DEFAULT_THANKS,
    AutoDigest,
    ImportMode,
)
from newsletter.subscriptions import SLUG

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


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
    """The IANA zone names, offered as the time zone field's suggestions."""
    return sorted(available_timezones())


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


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=500)])


def _dkim_aligned(form: FlaskForm, field: EmailField) -> None:
    """With DKIM on, the From domain must align with the signing domain (DMARC), or the
    signature does not count and large mailbox providers file the mail as spam."""
    signing = current_app.config.get("DKIM_DOMAIN")
    if not signing or not current_app.config.get("DKIM_PRIVATE_KEY") or not field.data:
        return
    if not dkim_aligned(field.data, str(signing)):
        raise ValidationError(
            f"Mail from this address is DKIM-signed as {signing}, which does not match its "
            f"domain: use an address at {signing} (or a subdomain of it)."
        )


class NewsletterForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200), _one_line])
    slug = StringField(
        "Slug",
        description="Lower-case letters, digits and dashes; the signup boxes name the list by it.",
        validators=[
            DataRequired(),
            Regexp(SLUG.pattern + "$", message="Use lower-case letters, digits and dashes."),
        ],
    )
    description = TextAreaField("Description", validators=[Length(max=2000)])
    cadence = SelectField(
        "Cadence",
        choices=[
            SelectChoice("daily", "Daily"),
            SelectChoice("weekly", "Weekly"),
            SelectChoice("monthly", "Monthly"),
        ],
    )
    from_name = StringField("From name", validators=[Optional(), Length(max=200), _one_line])
    from_address = EmailField(
        "From address",
        validators=[Optional(), Email(), Length(max=254), _sender, _dkim_aligned],
    )
    reply_to = EmailField("Reply-To", validators=[Optional(), Email(), Length(max=254), _sender])
    prompt_text = StringField(
        "Box prompt",
        default=DEFAULT_PROMPT,
        validators=[DataRequired(), Length(max=200)],
    )
    button_text = StringField(
        "Button", default=DEFAULT_BUTTON, validators=[DataRequired(), Length(max=60)]
    )
    thanks_text = TextAreaField(
        "Thank-you text",
        default=DEFAULT_THANKS,
        validators=[DataRequired(), Length(max=500)],
    )
    welcome_text = TextAreaField("Welcome mail text", validators=[Length(max=5000)])
    welcome_enabled = BooleanField("Send a welcome mail after confirmation", default=True)
    feed_url = URLField(
        "Feed URL",
        description="An RSS or Atom feed of the site's news for this list; "
        "its new items are added before each automatic digest.",
        validators=[Optional(), Length(max=1000), _web_address],
    )
    send_time = StringField(
        "Send time",
        default="08:00",
        description="HH:MM, 24-hour clock, in the time zone below.",
        validators=[
            DataRequired(),
            Regexp(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z", message="Use HH:MM, such as 08:00."),
        ],
    )
    timezone = StringField(
        "Time zone",
        default="UTC",
        description="An IANA name, such as Europe/Kyiv.",
        validators=[DataRequired(), Length(max=64), _time_zone],
        render_kw={"list": "time-zones", "autocomplete": "off"},
    )
    send_weekday = SelectField(
        "Weekday (weekly lists)",
        coerce=int,
        default=0,
        choices=[SelectChoice(n, day) for n, day in enumerate(WEEKDAYS)],
    )
    auto_digest = SelectField(
        "Automatic digests",
        description="Monthly lists go on the first day of the month.",
        default=AutoDigest.OFF.value,
        choices=[
            SelectChoice(AutoDigest.OFF.value, "Off: editors compose each digest"),
            SelectChoice(AutoDigest.DRAFT.value, "Create a draft for review on the cadence"),
            SelectChoice(AutoDigest.SEND.value, "Send directly on the cadence"),
        ],
    )


class TokenForm(FlaskForm):
    name = StringField(
        "Name",
        description="Who uses it, such as the site's publishing system.",
        validators=[DataRequired(), Length(max=100), _one_line],
    )


class ItemForm(FlaskForm):
    title = StringField(
        "Title", validators=[DataRequired(), Length(max=items.MAX_TITLE), _one_line]
    )
    url = URLField(
        "Link",
        validators=[DataRequired(), Length(max=items.MAX_URL), _web_address],
    )
    summary = TextAreaField(
        "Summary", description="Plain text.", validators=[Length(max=items.MAX_SUMMARY)]
    )
    published_at = DateTimeLocalField(
        "Published (UTC)",
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
        description="Empty: now.",
        validators=[Optional()],
    )
    newsletters = SelectMultipleField(
        "Newsletters",
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        render_kw={"class": "checks"},
        validate_choice=True,
    )

    def validate_newsletters(self, field: SelectMultipleField) -> None:
        if not field.data:
            raise ValidationError(_("Choose at least one newsletter."))


class ImportForm(FlaskForm):
    file = FileField(
        "CSV file",
        description=(
            "The first row names the columns: email (required), locale, subscribed_at "
            "(an ISO 8601 date or time, UTC unless a zone is given); others are ignored. "
            "UTF-8, separated by commas or semicolons."
        ),
        validators=[FileRequired("Choose a CSV file.")],
        render_kw={"accept": ".csv,text/csv,text/plain"},
    )
    newsletter = SelectField("Newsletter", validators=[DataRequired()])
    mode = SelectField(
        "These people",
        choices=[
            SelectChoice(
                ImportMode.CONFIRM.value, "get a confirmation mail and join once they confirm"
            ),
            SelectChoice(
                ImportMode.CONSENTED.value, "consented elsewhere: subscribe them at once, no mail"
            ),
        ],
        default=ImportMode.CONFIRM.value,
    )
    consent_note = TextAreaField(
        "Consent note",
        description="How and when they agreed; kept in each one's consent trail. "
        "Required when they consented elsewhere.",
        validators=[Length(max=2000)],
    )

    def validate_consent_note(self, field: TextAreaField) -> None:
        if self.mode.data == ImportMode.CONSENTED and not (field.data or "").strip():
            raise ValidationError(_("Say how and when these people consented."))


class DigestForm(FlaskForm):
    # The items' order, removals and additions are rows of inputs the view reads itself.
    subject = StringField(
        "Subject", validators=[DataRequired("A digest needs a subject."), Length(max=300)]
    )
    intro = TextAreaField(
        "Introduction",
        description="Plain text, shown above the items. Optional.",
        validators=[Length(max=10_000)],
    )


class ScheduleForm(FlaskForm):
    when = DateTimeLocalField(
        "Send at",
        format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=[InputRequired("Choose a day and a time.")],
    )

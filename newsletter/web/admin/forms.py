"""Admin forms (Flask-WTF: every one carries a CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, EmailField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.fields import SelectChoice
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp, ValidationError

from newsletter.models import DEFAULT_BUTTON, DEFAULT_PROMPT, DEFAULT_THANKS, ImportMode
from newsletter.subscriptions import SLUG


def _one_line(form: FlaskForm, field: StringField) -> None:
    """Names and addresses end up in mail headers: no line breaks."""
    if field.data and any(c in field.data for c in "\r\n\0"):
        raise ValidationError("Use a single line.")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=500)])


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
    from_address = EmailField("From address", validators=[Optional(), Email(), Length(max=254)])
    reply_to = EmailField("Reply-To", validators=[Optional(), Email(), Length(max=254)])
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
            raise ValidationError("Say how and when these people consented.")

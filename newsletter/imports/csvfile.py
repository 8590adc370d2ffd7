"""A subscriber CSV: its columns by name, its rows in chunks, each row checked.

Checking is most of an import's work; for a big file a helper process started from this
module (`python -m newsletter.imports.csvfile`) checks the next chunk while the import writes.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from flask_babel import format_decimal, lazy_gettext
from flask_babel.speaklater import LazyString

from newsletter.addresses import InvalidEmail, address_hash, normalize_email
from newsletter.errors import UserError

log = logging.getLogger(__name__)

# Files longer than this have their rows checked in a helper process (see Checker).
PARALLEL_AFTER = 20_000
# The columns an import reads; any other is skipped.
COLUMNS = ("email", "locale", "subscribed_at", "name")
# A language tag such as en, uk, pt-BR or zh_Hant_TW; the column holds 16 characters.
LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}")
# The longest header read: a file without line breaks is not read into memory whole.
HEADER_LIMIT = 64 * 1024
# The subscriber.name column holds this many characters.
NAME_LENGTH = 200
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: in a name
# they break mail headers, report lines and the pages that show it.
_CONTROLS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
NAME_CONTROL = re.compile(f"[{_CONTROLS}]")
# Spaces around a name, Unicode ones included, but not the controls: those reject the row.
NAME_SPACES = re.compile(rf"\A[^\S{_CONTROLS}]+|[^\S{_CONTROLS}]+\Z")


class ImportProblem(UserError):
    """An import that cannot run as asked; the message is fit to show whoever started it."""

    message = lazy_gettext("This import cannot run.")


class MissingEmailColumn(ImportProblem):
    message = lazy_gettext(
        "The file has no email column: its first row must name the columns, one of them email."
    )


class HeaderTooLong(ImportProblem):
    message = lazy_gettext(
        "The first row is longer than %(n)s characters: it cannot be the header that names the "
        "columns. Is the file CSV?",
        n=LazyString(format_decimal, HEADER_LIMIT),
    )


class NotCSV(ImportProblem):
    message = lazy_gettext("The file is not valid CSV.")

    def __init__(self, row: int, line: int, detail: object) -> None:
        # Where the row begins: a quote left open runs on, and the reader fails far below it.
        super().__init__(
            f"The file is not valid CSV: {detail}, in row {row}, which starts on line {line}"
            " (a quote left open?)."
        )


class NotUTF8(ImportProblem):
    message = lazy_gettext("The file is not UTF-8 text: save it as CSV UTF-8 and import it again.")


@dataclass(frozen=True)
class Columns:
    """Where each known column is in a row (0-based), found by the header's names."""

    email: int
    locale: int | None = None
    subscribed_at: int | None = None
    name: int | None = None


class Rows(Protocol):
    """A csv reader: the rows, and how many lines of the file it has read."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


@functools.lru_cache(maxsize=64)
def _line_count(path: str, size: int, mtime: float) -> int:
    count = 0
    with open(path, "rb") as source:
        for block in iter(functools.partial(source.read, 1 << 20), b""):
            count += block.count(b"\n")
    return count


def estimated_rows(path: Path) -> int | None:
    """About how many data rows a CSV holds (its lines less the header), for a progress bar."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return max(_line_count(str(path), stat.st_size, stat.st_mtime) - 1, 1)


def read_header(source: TextIO) -> tuple[Columns, Rows]:
    """Find the columns by the first row's names; return them and a reader of the rows after.

    Names are matched case-insensitively, surrounding spaces ignored, unknown ones skipped.
    The delimiter is `,`, or `;` when the header has more of those (spreadsheets set to a
    language that writes decimal commas save CSV that way).
    """
    first = source.readline(HEADER_LIMIT + 1)
    if len(first) > HEADER_LIMIT:
        raise HeaderTooLong()
    first = first.removeprefix("\ufeff")
    delimiter = ";" if first.count(";") > first.count(",") else ","
    rows = csv.reader(itertools.chain([first], source), delimiter=delimiter)
    try:
        header = next(rows, [])
    except csv.Error as exc:
        raise NotCSV(1, 1, exc) from exc
    names = [name.strip().lower() for name in header]
    if "email" not in names:
        raise MissingEmailColumn()
    found = {name: names.index(name) for name in COLUMNS if name in names}
    columns = Columns(
        email=found["email"],
        locale=found.get("locale"),
        subscribed_at=found.get("subscribed_at"),
        name=found.get("name"),
    )
    return columns, rows


def parse_moment(text: str) -> datetime:
    """An ISO 8601 date or date and time, as an aware UTC moment; naive means UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _invalid_reason(raw: str, exc: InvalidEmail) -> str:
    if not raw.strip():
        return "no email address"
    cause = exc.__cause__
    return str(cause) if cause is not None else "not a valid email address"


# One row's cells as the checks need them: (email, locale, subscribed_at, name), each maybe "".
Cells = tuple[str, str, str, str]
# A good row: (address, lookup key, locale, subscribed at, address hash, name); a bad one: why.
Checked = tuple[str, str, str | None, datetime | None, str, str | None] | str


def check_name(cell: str) -> str | None:
    """A name cell without its surrounding spaces, None when empty; ValueError says why not."""
    name = NAME_SPACES.sub("", cell)
    if len(name) > NAME_LENGTH:
        raise ValueError(f"name is {len(name)} characters long; at most {NAME_LENGTH} fit")
    if NAME_CONTROL.search(name):
        raise ValueError(
            f"name {name!r} holds a control character (a line break, tab or NUL, for one)"
        )
    return name or None


def check_rows(rows: list[Cells], now: datetime) -> list[Checked]:
    """Check rows as a signup would check them: the address first, then locale and date."""
    normalize = normalize_email
    invalid = InvalidEmail
    checked: list[Checked] = []
    for email, locale_cell, since_cell, name_cell in rows:
        try:
            address, key = normalize(email)
        except invalid as exc:
            checked.append(_invalid_reason(email, exc))
            continue
        locale = locale_cell.strip() or None
        if locale is not None and (len(locale) > 16 or not LOCALE.fullmatch(locale)):
            checked.append(f"locale {locale!r} is not a language tag such as en or pt-BR")
            continue
        since = None
        given = since_cell.strip()
        if given:
            try:
                since = parse_moment(given)
            except ValueError:
                checked.append(f"subscribed_at {given!r} is not an ISO 8601 date or time")
                continue
            if since > now:
                checked.append(f"subscribed_at {given!r} is in the future")
                continue
        try:
            name = check_name(name_cell)
        except ValueError as exc:
            checked.append(str(exc))
            continue
        checked.append((address, key, locale, since, address_hash(key), name))
    return checked


def _check_forever() -> None:
    """The helper process: read chunks of rows from stdin, write the answers to stdout."""
    # Ctrl-C and a supervisor's SIGTERM reach the whole process group: the import stops
    # first and closes the pipe, which ends this loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            rows, now = pickle.load(stdin)
            pickle.dump(check_rows(rows, now), stdout, protocol=pickle.HIGHEST_PROTOCOL)
            stdout.flush()
    except (EOFError, BrokenPipeError):
        return  # the import is over, or gone


Answer = Callable[[], list[Checked]]


def _cores() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Checker:
    """Checks the rows of each chunk: here, or for a big file in a helper process.

    Checking addresses is most of an import's work and runs in Python, while the database
    writes run mostly in C. For a big file a helper process (`python -m newsletter.imports.csvfile`)
    checks the next chunk while this one writes the last; one chunk at a time, so neither
    side can block the other on a full pipe. If the helper cannot start or dies, checking
    goes on here.
    """

    def __init__(self, parallel_after: int | None) -> None:
        self.parallel_after = parallel_after
        self.rows = 0
        self.helper: subprocess.Popen[bytes] | None = None
        self.tried = False

    def submit(self, rows: list[Cells], now: datetime) -> Answer:
        """Start checking a chunk; the returned function waits for the answer."""
        self.rows += len(rows)
        if (
            not self.tried
            and self.parallel_after is not None
            and self.rows > self.parallel_after
            and _cores() > 1
        ):
            self.tried = True
            self._start()
        helper = self.helper
        if helper is None:
            return lambda: check_rows(rows, now)
        try:
            pickle.dump((rows, now), helper.stdin, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[arg-type]
            helper.stdin.flush()  # type: ignore[union-attr]
        except OSError:
            self._give_up()
            return lambda: check_rows(rows, now)
        return functools.partial(self._answer, helper, rows, now)

    def _answer(
        self, helper: subprocess.Popen[bytes], rows: list[Cells], now: datetime
    ) -> list[Checked]:
        try:
            checked: list[Checked] = pickle.load(helper.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError, pickle.UnpicklingError):
            self._give_up()
            return check_rows(rows, now)
        return checked

    def _start(self) -> None:
        try:
            self.helper = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("import: no helper process (%s); checking rows here", exc)

    def _give_up(self) -> None:
        log.warning("import: the helper process stopped; checking rows here")
        self.close()

    def close(self) -> None:
        """Stop the helper process, if one runs."""
        helper, self.helper = self.helper, None
        if helper is None:
            return
        for stream in (helper.stdin, helper.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


def chunks(reader: Rows, columns: Columns, size: int) -> Iterator[tuple[list[int], list[Cells]]]:
    """The file's rows in chunks: their numbers as a spreadsheet shows them, and their cells.

    Blank lines and rows of empty cells are left out. A row the csv module cannot read
    raises NotCSV, which says where it starts.
    """
    email_at, locale_at, since_at = columns.email, columns.locale, columns.subscribed_at
    name_at = columns.name
    wanted = max(email_at, locale_at or 0, since_at or 0, name_at or 0) + 1
    padding = [""] * wanted
    numbers: list[int] = []
    cells: list[Cells] = []
    number, end = 1, reader.line_num
    try:
        for number, fields in enumerate(reader, start=2):
            end = reader.line_num
            if not any(fields) or not "".join(fields).strip():
                continue
            if len(fields) < wanted:
                fields = fields + padding[len(fields) :]
            numbers.append(number)
            cells.append(
                (
                    fields[email_at],
                    "" if locale_at is None else fields[locale_at],
                    "" if since_at is None else fields[since_at],
                    "" if name_at is None else fields[name_at],
                )
            )
            if len(numbers) >= size:
                yield numbers, cells
                numbers, cells = [], []
    except csv.Error as exc:
        raise NotCSV(number + 1, end + 1, exc) from exc
    if numbers:
        yield numbers, cells


if __name__ == "__main__":
    _check_forever()

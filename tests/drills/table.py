"""The drills' table: one line per test in tests/drills/ (drill, outcome, figure, seconds).

Loaded as a plugin from tests/conftest.py, so that under pytest-xdist the controller, which
collects nothing itself, prints it too. A drill names itself and its figure with
`record_property("drill", "1 subscription bombing")` and `record_property("figure", "...")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

FOLDER = "tests/drills/"


@dataclass
class Row:
    nodeid: str
    outcome: str = "passed"
    seconds: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.properties.get("drill") or self.nodeid.removeprefix(FOLDER)


class DrillTable:
    """Gathers the reports of the drills and prints them at the end of the run."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.nodeid.startswith(FOLDER):
            return
        row = self.rows.setdefault(report.nodeid, Row(report.nodeid))
        row.seconds += report.duration
        for name, value in report.user_properties:
            row.properties[str(name)] = str(value)
        if report.failed:
            row.outcome = "failed"
        elif report.skipped and row.outcome != "failed":
            row.outcome = "skipped"

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        if not self.rows:
            return
        rows = sorted(self.rows.values(), key=lambda r: _sort_key(r.name))
        header = ("drill", "outcome", "figure", "seconds")
        lines = [
            (r.name, r.outcome, r.properties.get("figure", ""), f"{r.seconds:.0f}") for r in rows
        ]
        widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
        terminalreporter.section("drills")
        for line in [header, *lines]:
            terminalreporter.write_line(
                "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:3]))
                + "  "
                + line[3].rjust(7)
            )


def _sort_key(name: str) -> tuple[int, str]:
    number = name.split(" ", 1)[0]
    return (int(number), name) if number.isdigit() else (1000, name)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(DrillTable(), "drill-table")

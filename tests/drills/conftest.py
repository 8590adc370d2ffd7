"""The drills: the real processes on this machine, something broken on purpose, a figure.

Every test in this folder is marked `drill`; the ones that take over a minute are marked
`long` too and run by `make drills`, not `make test`. tests/drills/table.py prints the table.
The fixtures give a drill servers of its own (PostgreSQL, Redis, SMTP) that it may stop and
start, and the production stack on them (docs/drills.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Postgres, Redis, SmtpLog, Stack, new_name, postgres_bin

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `drill`, whoever wrote it."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.drill)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster of the drills' own (never the shared one on 5432)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL's server programs (Debian: postgresql) are not installed")
    # Not under pytest's temporary folder: the `postgres` user cannot enter root's.
    folder = Path(tempfile.mkdtemp(prefix="newsletter-drill-pg-"))
    try:
        server = Postgres(folder)
        server.start()
        try:
            yield server
        finally:
            if server.running():
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Redis]:
    """A redis-server of the drill's own, started."""
    server = Redis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_log(tmp_path: Path) -> Iterator[SmtpLog]:
    """A real SMTP server that logs every recipient, started."""
    server = SmtpLog(tmp_path / "smtp")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack(
    tmp_path: Path, private_postgres: Postgres, private_redis: Redis, smtp_log: SmtpLog
) -> Iterator[Stack]:
    """The production stack on a fresh database; the drill starts its processes."""
    name = new_name("drill")
    url = private_postgres.create_database(name)
    made = Stack(tmp_path / "stack", url, private_redis.url, smtp_log.url)
    try:
        yield made
    finally:
        made.stop()
        if not private_postgres.running():
            private_postgres.start()
        private_postgres.drop_database(name)

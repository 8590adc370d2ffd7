"""The Alembic migrations build exactly the tables the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import create_engine, inspect

from newsletter import create_app
from newsletter.extensions import db


def test_upgrade_from_empty_matches_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    app = create_app({"ENV": "testing", "INSTANCE_PATH": str(tmp_path), "DATABASE_URL": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert "subscription" in inspect(conn).get_table_names()
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []
    finally:
        engine.dispose()

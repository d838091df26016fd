"""PostgreSQL metadata store, so that several server instances can share one catalogue.

Needs the ``postgres`` extra (``psycopg``). Connections are per worker thread, in
autocommit mode with explicit transactions; the schema is created under an advisory lock
so instances starting together do not race. Keys use the ``C`` collation so that prefix
matching compares bytes, whatever the database's locale.
"""

from __future__ import annotations

from typing import Any

from kiln.errors import UsageError
from kiln.gha.server.metadata.sql import Connection, SqlMetadata

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS entries (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        scope TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        version TEXT COLLATE "C" NOT NULL,
        blob TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
        size BIGINT NOT NULL DEFAULT 0,
        declared_size BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        committed_at DOUBLE PRECISION,
        last_access DOUBLE PRECISION NOT NULL,
        hits BIGINT NOT NULL DEFAULT 0,
        UNIQUE (scope, key, version)
    )""",
    "CREATE INDEX IF NOT EXISTS entries_by_access ON entries (state, last_access)",
    """CREATE TABLE IF NOT EXISTS chunks (
        entry_id BIGINT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        start BIGINT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (entry_id, start)
    )""",
    """CREATE TABLE IF NOT EXISTS blocks (
        entry_id BIGINT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        block_id TEXT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (entry_id, block_id)
    )""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
]
_SCHEMA_LOCK = 0x6B696C6E  # "kiln"


class PostgresMetadata(SqlMetadata):
    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise UsageError(
                "the PostgreSQL metadata store needs psycopg",
                hint="install kiln with the postgres extra: pip install 'kiln[postgres]'",
            ) from exc
        self._psycopg = psycopg
        self.dsn = dsn
        with self._transaction():
            self._x("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in SCHEMA:
                self._x(statement)

    def _connect(self) -> Connection:
        try:
            conn: Any = self._psycopg.connect(self.dsn, autocommit=True)
        except self._psycopg.OperationalError as exc:
            raise UsageError(
                "cannot connect to the PostgreSQL metadata store", why=str(exc)
            ) from exc
        result: Connection = conn
        return result

    def _is_unique_violation(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

"""SQLite metadata store (WAL, ``synchronous=FULL``): one file beside the stored entries.

Each worker thread gets its own connection; write transactions take the write lock up
front (``BEGIN IMMEDIATE``) so concurrent writers queue on ``busy_timeout`` instead of
failing on a lock upgrade. ``synchronous=FULL`` makes a commit durable once it returns,
so neither ``kill -9`` nor a power cut right after a commit loses it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kiln.gha.server.metadata.sql import Connection, SqlMetadata

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    blob TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
    size INTEGER NOT NULL DEFAULT 0,
    declared_size INTEGER,
    created_at REAL NOT NULL,
    committed_at REAL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    UNIQUE (scope, key, version)
);
CREATE INDEX IF NOT EXISTS entries_by_access ON entries (state, last_access);
CREATE TABLE IF NOT EXISTS chunks (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (entry_id, start)
);
CREATE TABLE IF NOT EXISTS blocks (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    block_id TEXT NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (entry_id, block_id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteMetadata(SqlMetadata):
    begin = "BEGIN IMMEDIATE"
    greatest = "max"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        assert isinstance(conn, sqlite3.Connection)
        conn.executescript(SCHEMA)

    def _connect(self) -> Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _is_unique_violation(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

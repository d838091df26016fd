"""The SQL shared by the SQLite and PostgreSQL metadata stores.

Queries are written once with ``?`` placeholders; a backend supplies its connection per
thread, its transaction start, its placeholder style and its unique-violation exception.
"""

from __future__ import annotations

import contextlib
import threading
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from kiln.gha.server.metadata.base import (
    PENDING,
    READY,
    AlreadyExists,
    Entry,
    MetadataStore,
    Totals,
)

COLUMNS = (
    "id, scope, key, version, blob, state, size, declared_size, created_at, committed_at,"
    " last_access, hits"
)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: Any, params: Sequence[Any] = ..., /) -> Any: ...

    def close(self) -> None: ...


def entry_from_row(row: Sequence[Any]) -> Entry:
    return Entry(
        id=int(row[0]),
        scope=row[1],
        key=row[2],
        version=row[3],
        blob=row[4],
        state=row[5],
        size=int(row[6]),
        declared_size=None if row[7] is None else int(row[7]),
        created_at=float(row[8]),
        committed_at=None if row[9] is None else float(row[9]),
        last_access=float(row[10]),
        hits=int(row[11]),
    )


class SqlMetadata(MetadataStore):
    """A metadata store over a DB-API connection per thread."""

    begin = "BEGIN"
    greatest = "greatest"
    placeholder = "?"

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    # --- backend hooks -----------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Connection: ...

    @abstractmethod
    def _is_unique_violation(self, exc: Exception) -> bool: ...

    # --- plumbing ----------------------------------------------------------------------
    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        cur: Cursor = self._conn().execute(sql, params)
        return cur

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._x(self.begin)
        try:
            yield
        except BaseException:
            self._x("ROLLBACK")
            raise
        self._x("COMMIT")

    def _one(self, sql: str, params: Sequence[Any]) -> Entry | None:
        row = self._x(sql, params).fetchone()
        return None if row is None else entry_from_row(row)

    def _many(self, sql: str, params: Sequence[Any]) -> list[Entry]:
        return [entry_from_row(r) for r in self._x(sql, params).fetchall()]

    def _touch_pending(self, entry_id: int, now: float) -> bool:
        """Bump a pending row's activity time; whether it is (still) pending.

        Run first in a transaction that records upload progress: it locks the row, so a
        concurrent take-over either sees the new activity or has already removed it.
        """
        cur = self._x(
            f"UPDATE entries SET last_access = {self.greatest}(last_access, ?)"
            " WHERE id = ? AND state = ?",
            (now, entry_id, PENDING),
        )
        return cur.rowcount == 1

    # --- reservations and uploads ------------------------------------------------------
    def reserve(
        self,
        scope: str,
        key: str,
        version: str,
        blob: str,
        declared_size: int | None,
        now: float,
    ) -> Entry:
        try:
            row = self._x(
                "INSERT INTO entries (scope, key, version, blob, state, declared_size,"
                f" created_at, last_access) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}",
                (scope, key, version, blob, PENDING, declared_size, now, now),
            ).fetchone()
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise AlreadyExists(f"{scope} {key} {version}") from exc
            raise
        return entry_from_row(row)

    def take_over(
        self,
        scope: str,
        key: str,
        version: str,
        blob: str,
        declared_size: int | None,
        now: float,
        idle_before: float,
    ) -> tuple[Entry, Entry | None]:
        # The DELETE locks the idle row (PostgreSQL) or the database (SQLite's BEGIN
        # IMMEDIATE): a concurrent taker waits, then deletes nothing and its INSERT hits
        # the unique constraint; an upload that recorded progress meanwhile makes the
        # row fail the (re-checked) idle condition, so it is kept.
        with self._transaction():
            replaced = self._one(
                "DELETE FROM entries WHERE scope = ? AND key = ? AND version = ?"
                f" AND state = ? AND last_access < ? RETURNING {COLUMNS}",
                (scope, key, version, PENDING, idle_before),
            )
            entry = self.reserve(scope, key, version, blob, declared_size, now)
        return entry, replaced

    def note_activity(self, entry_id: int, now: float) -> bool:
        return self._touch_pending(entry_id, now)

    def get(self, entry_id: int) -> Entry | None:
        return self._one(f"SELECT {COLUMNS} FROM entries WHERE id = ?", (entry_id,))

    def get_by_blob(self, blob: str) -> Entry | None:
        return self._one(f"SELECT {COLUMNS} FROM entries WHERE blob = ?", (blob,))

    def find(self, scope: str, key: str, version: str) -> Entry | None:
        return self._one(
            f"SELECT {COLUMNS} FROM entries WHERE scope = ? AND key = ? AND version = ?",
            (scope, key, version),
        )

    def record_chunk(self, entry_id: int, start: int, length: int, now: float) -> bool:
        with self._transaction():
            if not self._touch_pending(entry_id, now):
                return False
            self._x(
                "INSERT INTO chunks (entry_id, start, length) VALUES (?, ?, ?)"
                " ON CONFLICT (entry_id, start) DO UPDATE SET length = excluded.length",
                (entry_id, start, length),
            )
        return True

    def replace_chunks(self, entry_id: int, length: int, now: float) -> bool:
        with self._transaction():
            if not self._touch_pending(entry_id, now):
                return False
            self._x("DELETE FROM chunks WHERE entry_id = ?", (entry_id,))
            self._x("DELETE FROM blocks WHERE entry_id = ?", (entry_id,))
            self._x(
                "INSERT INTO chunks (entry_id, start, length) VALUES (?, 0, ?)", (entry_id, length)
            )
        return True

    def chunks(self, entry_id: int) -> list[tuple[int, int]]:
        rows = self._x(
            "SELECT start, length FROM chunks WHERE entry_id = ? ORDER BY start", (entry_id,)
        ).fetchall()
        return [(int(a), int(b)) for a, b in rows]

    def record_block(self, entry_id: int, block_id: str, length: int, now: float) -> bool:
        with self._transaction():
            if not self._touch_pending(entry_id, now):
                return False
            self._x(
                "INSERT INTO blocks (entry_id, block_id, length) VALUES (?, ?, ?)"
                " ON CONFLICT (entry_id, block_id) DO UPDATE SET length = excluded.length",
                (entry_id, block_id, length),
            )
        return True

    def blocks(self, entry_id: int) -> dict[str, int]:
        rows = self._x(
            "SELECT block_id, length FROM blocks WHERE entry_id = ?", (entry_id,)
        ).fetchall()
        return {str(a): int(b) for a, b in rows}

    def commit(self, entry_id: int, size: int, now: float) -> Entry | None:
        with self._transaction():
            cur = self._x(
                "UPDATE entries SET state = ?, size = ?, committed_at = ?, last_access = ?"
                " WHERE id = ? AND state = ?",
                (READY, size, now, now, entry_id, PENDING),
            )
            if cur.rowcount != 1:
                return None
            self._x("DELETE FROM chunks WHERE entry_id = ?", (entry_id,))
            self._x("DELETE FROM blocks WHERE entry_id = ?", (entry_id,))
        return self.get(entry_id)

    # --- lookups -----------------------------------------------------------------------
    def match(self, scope: str, version: str, key: str, *, prefix: bool) -> Entry | None:
        if prefix:
            return self._one(
                f"SELECT {COLUMNS} FROM entries WHERE state = ? AND scope = ? AND version = ?"
                " AND key >= ? AND substr(key, 1, ?) = ?"
                " ORDER BY committed_at DESC, id DESC LIMIT 1",
                (READY, scope, version, key, len(key), key),
            )
        return self._one(
            f"SELECT {COLUMNS} FROM entries WHERE state = ? AND scope = ? AND version = ?"
            " AND key = ?",
            (READY, scope, version, key),
        )

    def touch(self, entry_id: int, now: float, *, hit: bool) -> None:
        self._x(
            f"UPDATE entries SET last_access = {self.greatest}(last_access, ?),"
            " hits = hits + ? WHERE id = ?",
            (now, 1 if hit else 0, entry_id),
        )

    def list_entries(
        self,
        scopes: Sequence[str] | None,
        key_prefix: str,
        *,
        include_pending: bool = False,
        limit: int = 1000,
    ) -> list[Entry]:
        where = ["substr(key, 1, ?) = ?"]
        params: list[Any] = [len(key_prefix), key_prefix]
        if not include_pending:
            where.append("state = ?")
            params.append(READY)
        if scopes is not None:
            if not scopes:
                return []
            where.append(f"scope IN ({', '.join('?' for _ in scopes)})")
            params.extend(scopes)
        params.append(limit)
        return self._many(
            f"SELECT {COLUMNS} FROM entries WHERE {' AND '.join(where)}"
            " ORDER BY coalesce(committed_at, created_at) DESC, id DESC LIMIT ?",
            params,
        )

    # --- removal and quota -------------------------------------------------------------
    def delete(self, entry_id: int) -> Entry | None:
        with self._transaction():
            gone = self._one(f"DELETE FROM entries WHERE id = ? RETURNING {COLUMNS}", (entry_id,))
        return gone

    def totals(self) -> Totals:
        row = self._x(
            "SELECT coalesce(sum(CASE WHEN state = 'ready' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN state = 'ready' THEN size ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) FROM entries"
        ).fetchone()
        return Totals(entries=int(row[0]), bytes=int(row[1]), pending=int(row[2]))

    def least_recently_used(self, limit: int) -> list[Entry]:
        return self._many(
            f"SELECT {COLUMNS} FROM entries WHERE state = ? ORDER BY last_access, id LIMIT ?",
            (READY, limit),
        )

    def unused_since(self, before: float, limit: int) -> list[Entry]:
        return self._many(
            f"SELECT {COLUMNS} FROM entries WHERE state = ? AND last_access < ?"
            " ORDER BY last_access, id LIMIT ?",
            (READY, before, limit),
        )

    def stale_pending(self, before: float, limit: int) -> list[Entry]:
        return self._many(
            f"SELECT {COLUMNS} FROM entries WHERE state = ? AND last_access < ?"
            " ORDER BY last_access, id LIMIT ?",
            (PENDING, before, limit),
        )

    def has_blob(self, blob: str) -> bool:
        return self._x("SELECT 1 FROM entries WHERE blob = ?", (blob,)).fetchone() is not None

    # --- counters ----------------------------------------------------------------------
    def bump(self, counter: str, n: int = 1) -> None:
        self._x(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
            (counter, n),
        )

    def counters(self) -> dict[str, int]:
        rows = self._x("SELECT name, value FROM counters").fetchall()
        return {str(a): int(b) for a, b in rows}

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):  # a dead thread's connection
                conn.close()
        self._local = threading.local()

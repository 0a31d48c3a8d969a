"""Persistent "have we already published this?" memory shared by every ingester.

Keys are strings such as ``id:<id>``, ``url:<canonical url>`` and ``guid:<source>:<guid>``; an
item is a duplicate when ANY of its keys is known, which is how the same story arriving via two
feeds (same canonical URL) or a feed re-issuing an item under a new link (same GUID) is caught.

Why sqlite: it is in the standard library, survives restarts and kill -9 (WAL journal), and
several ingest processes on one host may share the file (busy timeout). The table is bounded
both by age (``ttl``) and by count (``max_keys``, oldest dropped) so it cannot grow forever.

The caller marks keys ONLY after the broker acknowledged the publish: a crash between publish
and mark re-publishes the item on restart (at-least-once, same id, the store's idempotent insert
absorbs it) instead of losing it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from finsent.core.settings import IngestSettings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at_idx ON seen (seen_at);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""
_CHUNK = 500  # sqlite's variable limit is 999 on old builds


class DedupStore:
    """Seen-keys set on disk (or in memory with ``path=None``, used by ``--dry-run``)."""

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_keys: int = 2_000_000,
        ttl_s: float = 30 * 86400.0,
        clock=time.time,
    ) -> None:
        if path is None:
            target = ":memory:"
        else:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            target = str(p)
        self.path = target
        self.max_keys = max_keys
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(target, timeout=30.0, check_same_thread=False, isolation_level=None)
        if target != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._marks_since_prune = 0
        self.prune()

    @classmethod
    def from_settings(cls, ingest: IngestSettings, name: str = "dedup.sqlite3") -> DedupStore:
        return cls(
            Path(ingest.ingest_state_dir) / name,
            max_keys=ingest.ingest_dedup_max_keys,
            ttl_s=ingest.ingest_dedup_ttl_days * 86400.0,
        )

    # -- queries -------------------------------------------------------------------------------

    def known(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already marked and not expired."""
        keys = list(dict.fromkeys(keys))
        found: set[str] = set()
        horizon = self._clock() - self.ttl_s
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                chunk = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key FROM seen WHERE seen_at >= ? AND key IN ({marks})", (horizon, *chunk)
                ).fetchall()
                found.update(r[0] for r in rows)
        return found

    def seen(self, key: str) -> bool:
        return bool(self.known([key]))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    # -- updates (call only after the broker acked) --------------------------------------------

    def mark(self, keys: Iterable[str]) -> int:
        now = self._clock()
        rows = [(k, now) for k in dict.fromkeys(keys)]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO seen (key, seen_at) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._marks_since_prune += len(rows)
            due = self._marks_since_prune >= max(1000, self.max_keys // 100)
        if due:
            self.prune()
        return len(rows)

    def prune(self) -> int:
        """Forget expired keys, then the oldest ones beyond ``max_keys``. Returns how many went."""
        with self._lock:
            self._marks_since_prune = 0
            cur = self._db.execute("DELETE FROM seen WHERE seen_at < ?", (self._clock() - self.ttl_s,))
            removed = cur.rowcount
            count = int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])
            if count > self.max_keys:
                cur = self._db.execute(
                    "DELETE FROM seen WHERE key IN (SELECT key FROM seen ORDER BY seen_at ASC LIMIT ?)",
                    (count - self.max_keys,),
                )
                removed += cur.rowcount
            return removed

    # -- cursors of polling sources (since_id, before=...) --------------------------------------

    def get_cursor(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cursors (name, value, updated_at) VALUES (?, ?, ?)",
                (name, value, self._clock()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DedupStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

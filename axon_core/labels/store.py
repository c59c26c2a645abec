"""The labels' disk cache: one SQLite file (WAL), shared by every process on the machine.

``labels`` holds (np_id, index) → label or NULL ("Neuronpedia has none", a
negative entry) and when it was fetched; ``prefetch_batches`` marks the bulk
batches already stored, so a prefetch resumes. One writer connection, a few
idle readers lent to one thread at a time. A file that is not a database is
moved aside (``labels.sqlite.corrupt-<time>``) and a fresh one started; where
nothing can be written the store is memory only (``path`` None, ``message`` says why).

Worked example::

    store = LabelStore(Path("/tmp/labels.sqlite"))
    store.write([("gpt2-small/8-res-jb", 4821, "European capitals", time.time())])
    store.read(("gpt2-small/8-res-jb", 4821))      # ('European capitals', 1764620000.0)
    store.store_batch("gpt2-small/8-res-jb", 0, rows)   # labels it added (never replaces one)
    store.done_batches("gpt2-small/8-res-jb")      # {0}
    LabelStore(Path("/proc/no/labels.sqlite")).path  # None: memory only; .message says why
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

log = logging.getLogger("axon_core.labels")

MAX_IDLE_READERS = 4  # reader connections kept open between reads (a busy server opens more, then closes them)
Row = tuple[str, int, "str | None", float]  # np_id, index, label (None: has none), unix time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    np_id TEXT NOT NULL, idx INTEGER NOT NULL,
    label TEXT,                    -- NULL: Neuronpedia has no label (negative cache)
    fetched_at REAL NOT NULL,      -- unix time
    PRIMARY KEY (np_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prefetch_batches (
    np_id TEXT NOT NULL, batch INTEGER NOT NULL, n_labels INTEGER NOT NULL, done_at REAL NOT NULL,
    PRIMARY KEY (np_id, batch));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS evidence (  -- a feature's examples / logit lens (labels/evidence.py), JSON per part
    np_id TEXT NOT NULL, idx INTEGER NOT NULL, part TEXT NOT NULL, data TEXT NOT NULL, fetched_at REAL NOT NULL,
    PRIMARY KEY (np_id, idx, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evidence_batches (
    np_id TEXT NOT NULL, folder TEXT NOT NULL, batch INTEGER NOT NULL, n_rows INTEGER NOT NULL, done_at REAL NOT NULL,
    PRIMARY KEY (np_id, folder, batch));
"""
# Full-text search over the labels (FTS5): one row per label, its rowid (source id << 32) + index,
# kept in step with ``labels`` by triggers, so every writer (the app, the command line) indexes.
_SEARCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (id INTEGER PRIMARY KEY, np_id TEXT UNIQUE NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS labels_fts USING fts5(label, tokenize='unicode61 remove_diacritics 2',
                                                         prefix='2 3');
CREATE TRIGGER IF NOT EXISTS labels_fts_insert AFTER INSERT ON labels BEGIN
    INSERT INTO sources (np_id) SELECT new.np_id  -- no OR IGNORE: an outer OR REPLACE would renumber
        WHERE NOT EXISTS (SELECT 1 FROM sources WHERE np_id = new.np_id);
    DELETE FROM labels_fts WHERE rowid = (SELECT (id << 32) + new.idx FROM sources WHERE np_id = new.np_id);
    INSERT INTO labels_fts (rowid, label)
        SELECT (id << 32) + new.idx, new.label FROM sources WHERE np_id = new.np_id AND new.label IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS labels_fts_update AFTER UPDATE ON labels BEGIN
    DELETE FROM labels_fts WHERE rowid = (SELECT (id << 32) + old.idx FROM sources WHERE np_id = old.np_id);
    INSERT INTO labels_fts (rowid, label)
        SELECT (id << 32) + new.idx, new.label FROM sources WHERE np_id = new.np_id AND new.label IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS labels_fts_delete AFTER DELETE ON labels BEGIN
    DELETE FROM labels_fts WHERE rowid = (SELECT (id << 32) + old.idx FROM sources WHERE np_id = old.np_id);
END;
"""
_INDEX_EXISTING = """
INSERT OR IGNORE INTO sources (np_id) SELECT DISTINCT np_id FROM labels;
INSERT OR REPLACE INTO labels_fts (rowid, label)
    SELECT (s.id << 32) + l.idx, l.label FROM labels l JOIN sources s USING (np_id) WHERE l.label IS NOT NULL;
"""
_UPSERT = "INSERT OR REPLACE INTO labels (np_id, idx, label, fetched_at) VALUES (?, ?, ?, ?)"
_UPSERT_BULK = (  # bulk labels fill gaps and negatives but never replace a label
    "INSERT INTO labels (np_id, idx, label, fetched_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (np_id, idx) DO UPDATE SET label = excluded.label, fetched_at = excluded.fetched_at "
    "WHERE labels.label IS NULL"
)


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 10000")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


class _Corrupt(Exception):
    pass


class LabelStore:
    """The SQLite cache at ``path`` (see the module doc); thread-safe."""

    def __init__(self, path: Path):
        self.message: str | None = None  # what went wrong with the disk, for the status line
        self._lock = threading.Lock()
        self._closed = False
        # idle reader connections, lent to one reading thread at a time: a
        # connection per thread (the server's worker threads come and go) was
        # never closed and held its own page cache
        self._readers: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._complete_in_memory: set[str] = set()
        self.searchable = False  # the file has its full-text index (SQLite with FTS5)
        self.path: Path | None = self._open(Path(path))

    def _open(self, path: Path) -> Path | None:
        """Open (and if needed create) the SQLite cache; move a corrupt one aside;
        return None (memory only) where the location can't be written."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._memory_only(path, e)
        for attempt in range(3):
            con = None
            try:
                con = _connect(path)
                con.execute("PRAGMA journal_mode = WAL").fetchone()
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise _Corrupt(check)
                con.executescript(_SCHEMA)
                self.searchable = self._add_search(con)
                with _transaction(con):  # proves the file is writable
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (str(time.time()),))
                self._writer = con
                return path
            except (sqlite3.Error, _Corrupt) as e:
                if con is not None:
                    con.close()
                name = getattr(e, "sqlite_errorname", "")
                if name in ("SQLITE_BUSY", "SQLITE_LOCKED") and attempt < 2:
                    time.sleep(0.5)
                    continue
                if (isinstance(e, _Corrupt) or name in ("SQLITE_NOTADB", "SQLITE_CORRUPT")) and attempt < 2:
                    if self._move_aside(path, e):
                        continue
                return self._memory_only(path, e)
            except OSError as e:
                if con is not None:
                    con.close()
                return self._memory_only(path, e)
        return self._memory_only(path, RuntimeError("could not open"))

    @staticmethod
    def _add_search(con: sqlite3.Connection) -> bool:
        """The full-text index (indexing the labels already there, once); False
        where this SQLite has no FTS5 (search then scans)."""
        try:
            had = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'labels_fts'").fetchone()
            con.executescript(_SEARCH_SCHEMA if had else "BEGIN;" + _SEARCH_SCHEMA + _INDEX_EXISTING + "COMMIT;")
            return True
        except sqlite3.OperationalError as e:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            log.info("label search without FTS5 (%s): it scans instead", e)
            return False

    def search(self, np_ids: list[str], match: str, limit: int) -> list[tuple[str, int, str]] | None:
        """(np_id, index, label) of ``np_ids``'s labels matching the FTS5 query
        ``match``, best (bm25) first; None where the index cannot answer."""
        if not self.searchable:
            return None
        with self._reader() as con:
            if con is None:
                return None
            try:
                ids = dict(con.execute(f"SELECT id, np_id FROM sources WHERE np_id IN ({','.join('?' * len(np_ids))})",
                                       np_ids).fetchall())
                if not ids:
                    return []
                rows = con.execute(
                    f"SELECT rowid, label FROM labels_fts WHERE labels_fts MATCH ? "
                    f"AND (rowid >> 32) IN ({','.join('?' * len(ids))}) ORDER BY rank LIMIT ?",
                    [match, *ids, int(limit)]).fetchall()
            except sqlite3.Error as e:
                log.debug("label search failed: %s", e)
                return None
        return [(ids[r >> 32], r & 0xFFFFFFFF, label) for r, label in rows]

    def count(self, np_id: str) -> int:
        """How many labels of ``np_id`` are cached."""
        with self._reader() as con:
            if con is None:
                return 0
            return con.execute("SELECT count(*) FROM labels WHERE np_id = ? AND label IS NOT NULL",
                               (np_id,)).fetchone()[0]

    def _move_aside(self, path: Path, err: Exception) -> bool:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            os.replace(path, dest)
            for side in ("-wal", "-shm"):
                if Path(f"{path}{side}").exists():
                    os.replace(f"{path}{side}", f"{dest}{side}")
        except OSError as e:
            log.warning("label cache %s is unreadable and could not be moved aside: %s", path, e)
            return False
        msg = f"label cache {path} was unreadable ({err}); moved it to {dest.name} and started a fresh one"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)  # the LabelService(...) call
        return True

    def _memory_only(self, path: Path, err: Exception) -> None:
        self.message = f"label cache not writable ({path}: {err}); labels kept in memory only"
        log.warning(self.message)
        return None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        """A reader connection for this thread while the block runs (None: no
        disk cache), taken from the idle ones or opened; given back after, and
        closed if MAX_IDLE_READERS are idle already or the service is closed."""
        with self._lock:
            con = None if self._closed else (self._readers.pop() if self._readers else False)
        if con is False and self.path is not None:
            try:
                con = _connect(self.path)
            except sqlite3.Error:
                con = None
        if not con:
            yield None
            return
        try:
            yield con
        finally:
            with self._lock:
                keep = not self._closed and len(self._readers) < MAX_IDLE_READERS
                if keep:
                    self._readers.append(con)
            if not keep:
                with contextlib.suppress(sqlite3.Error):
                    con.close()

    def read(self, key: tuple[str, int]) -> tuple[str | None, float] | None:
        with self._reader() as con:
            if con is None:
                return None
            try:
                row = con.execute("SELECT label, fetched_at FROM labels WHERE np_id = ? AND idx = ?",
                                  key).fetchone()
            except sqlite3.Error as e:
                log.debug("label cache read failed: %s", e)
                return None
        return (row[0], row[1]) if row else None

    def write(self, rows: list[Row]) -> None:
        """Store rows (replacing what is there), one transaction."""
        with self._write_lock:
            if self._writer is None:
                return
            try:
                with _transaction(self._writer):
                    self._writer.executemany(_UPSERT, rows)
            except sqlite3.Error as e:
                self.message = f"label cache write failed: {e}"
                log.warning(self.message)

    def done_batches(self, np_id: str) -> set[int]:
        """The bulk batches of ``np_id`` already stored."""
        with self._reader() as con:
            if con is None:
                return set()
            return {r[0] for r in con.execute("SELECT batch FROM prefetch_batches WHERE np_id = ?", (np_id,))}

    def mark_complete(self, np_id: str) -> None:
        """Every bulk batch of ``np_id`` is stored: a bulk download at start-up skips it."""
        with self._write_lock:
            if self._writer is None:
                self._complete_in_memory.add(np_id)
                return
            with contextlib.suppress(sqlite3.Error), _transaction(self._writer):
                self._writer.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"complete:{np_id}", str(time.time())))

    def complete(self, np_id: str) -> bool:
        """Whether :meth:`mark_complete` was called for ``np_id`` (by any process)."""
        if np_id in self._complete_in_memory:
            return True
        with self._reader() as con:
            if con is None:
                return False
            try:
                return con.execute("SELECT 1 FROM meta WHERE key = ?", (f"complete:{np_id}",)).fetchone() is not None
            except sqlite3.Error:
                return False

    def store_batch(self, np_id: str, batch: int, rows: list[Row], now: float | None = None) -> int:
        """A bulk batch and its "done" mark, one transaction; the labels it changed
        (bulk labels fill gaps and negatives but never replace a label)."""
        con = _connect(self.path)  # own connection: a long write never holds up the readers or the writer
        try:
            with _transaction(con):
                changed = max(0, con.executemany(_UPSERT_BULK, rows).rowcount)  # the search index's own not counted
                con.execute(
                    "INSERT OR REPLACE INTO prefetch_batches VALUES (?, ?, ?, ?)", (np_id, batch, len(rows), time.time() if now is None else now)
                )
            return changed
        finally:
            con.close()

    # ---- evidence (examples, logit lens): labels/evidence.py's parts, beside the labels

    def read_evidence(self, np_id: str, index: int) -> dict[str, str]:
        """part → JSON of what is stored for one feature ({} where nothing is)."""
        with self._reader() as con:
            if con is None:
                return {}
            try:
                return dict(con.execute("SELECT part, data FROM evidence WHERE np_id = ? AND idx = ?",
                                        (np_id, int(index))).fetchall())
            except sqlite3.Error as e:
                log.debug("evidence read failed: %s", e)
                return {}

    def write_evidence(self, rows: list[tuple[str, int, str, str, float]]) -> None:
        """Store (np_id, index, part, JSON, unix time) rows, replacing, one transaction."""
        with self._write_lock:
            if self._writer is None:
                return
            try:
                with _transaction(self._writer):
                    self._writer.executemany("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as e:
                self.message = f"label cache write failed: {e}"
                log.warning(self.message)

    def store_evidence_batch(self, np_id: str, folder: str, batch: int,
                             rows: list[tuple[str, int, str, str, float]]) -> int:
        """One bulk batch of evidence and its "done" mark, one transaction (own connection); rows stored."""
        if self.path is None:
            return 0
        con = _connect(self.path)
        try:
            with _transaction(con):
                con.executemany("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?, ?)", rows)
                con.execute("INSERT OR REPLACE INTO evidence_batches VALUES (?, ?, ?, ?, ?)",
                            (np_id, folder, batch, len(rows), time.time()))
            return len(rows)
        finally:
            con.close()

    def done_evidence_batches(self, np_id: str, folder: str) -> set[int]:
        """The bulk batches of ``np_id``'s ``folder`` (features, activations) already stored."""
        with self._reader() as con:
            if con is None:
                return set()
            return {r[0] for r in con.execute("SELECT batch FROM evidence_batches WHERE np_id = ? AND folder = ?",
                                              (np_id, folder))}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        for con in readers:
            with contextlib.suppress(sqlite3.Error):
                con.close()

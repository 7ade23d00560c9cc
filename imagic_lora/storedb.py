"""Opening the store's SQLite file, its migrations, and SQLite's failures as one clear line.

One path opens every store: a damaged, read-only, busy, full or newer store raises
:class:`~imagic_lora.errors.StoreError` with a hint instead of a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    import sqlite_utils

BUSY_TIMEOUT_S = 60.0
BUSY_RETRY_S = 0.05
FULL_BELOW_BYTES = 1 << 20
TABLE = "profiles"
DATA_TABLE = "profile_data"
MOVE_AWAY = "Try: imagic-lora profiles backup FILE to save what is readable, then move it away (a new store is made)"

MIGRATION_SET = "imagic-lora"


def m001_profiles(db: sqlite_utils.Database) -> None:
    db[TABLE].create(
        {
            "name": str, "source_prompt": str, "base_model": str, "base_fingerprint": str,
            "resolution": int, "created_at": str, "format_version": int, "library_version": str,
            "size_bytes": int, "sha256": str, "metadata": str, "data": bytes,
        },
        pk="name",
        not_null={"source_prompt", "base_model", "base_fingerprint", "created_at", "data"},
    )


def m002_profile_data(db: sqlite_utils.Database) -> None:
    """The tensors move to their own table, so browsing ``profiles`` (sqlite-utils, Datasette) shows no blob."""
    db[DATA_TABLE].create({"name": str, "data": bytes}, pk="name", not_null={"data"})
    db.execute(f"insert into {DATA_TABLE} (name, data) select name, data from {TABLE}")
    db[TABLE].transform(drop={"data"})


MIGRATIONS = (m001_profiles, m002_profile_data)  # every migration above, in order
KNOWN_MIGRATIONS = [m.__name__ for m in MIGRATIONS]


@functools.cache
def migrations():
    """The numbered migrations as a ``sqlite_utils.Migrations`` set (imported only when a store needs one)."""
    from sqlite_utils import Migrations

    migration_set = Migrations(MIGRATION_SET)
    for migration in MIGRATIONS:
        migration_set()(migration)
    return migration_set


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names sqlite-utils recorded as applied, read with plain SQL (no import on the read path)."""
    if not _has_table(conn, "_sqlite_migrations"):
        return []
    rows = conn.execute("select name from _sqlite_migrations where migration_set = ? order by rowid", [MIGRATION_SET])
    return [row[0] for row in rows]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", [name]).fetchone() is not None


def sqlite_error(path: Path, ex: sqlite3.Error) -> StoreError:
    """The one line a user sees for what SQLite raised on ``path``."""
    text = str(ex)
    if "locked" in text or "busy" in text:
        return StoreError(f"the profile store {path} is busy: another process has held its write lock for "
                          f"{BUSY_TIMEOUT_S:g} s. Try: again when that process finishes")
    if "readonly" in text or "read-only" in text:
        return read_only_error(path)
    if "full" in text:
        return full_error(path)
    if "no such table" in text or "no such column" in text:
        return StoreError(f"the profile store {path} lacks part of its schema ({text}). {MOVE_AWAY}")
    if isinstance(ex, sqlite3.OperationalError) and "unable to open" not in text:
        return StoreError(f"the profile store {path} failed: {text}. Try: imagic-lora profiles verify")
    return StoreError(f"the profile store {path} is damaged or not a database ({text}). {MOVE_AWAY}")


def full_error(path: Path) -> StoreError:
    return StoreError(f"no space left to write the profile store {path}; nothing was changed. "
                      "Try: free some disk space")


def read_only_error(path: Path) -> StoreError:
    return StoreError(f"the profile store {path} is read-only: profiles can be listed, shown, applied and exported, "
                      "not changed. Try: IMAGIC_LORA_USER_PATH=<a folder you can write to>")


@contextlib.contextmanager
def mapped_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as ex:
        raise sqlite_error(path, ex) from None


@dataclass
class Opened:
    conn: sqlite3.Connection
    read_only: bool
    newer: list[str] = field(default_factory=list)  # migrations applied by a newer imagic-lora
    data_table: str = DATA_TABLE  # where the tensors are: TABLE itself in a store not yet at m002
    full: bool = False  # read-only because its disk is full, not because of permissions

    def write_refusal(self, path: Path) -> StoreError:
        """Why this store, opened read-only, takes no change."""
        return full_error(path) if self.full else read_only_error(path)


def open_database(path: Path) -> Opened:
    """Open (or create) the store at ``path``: read-write if possible, else read-only; migrated when writable."""
    # 1. the folder and the file
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise StoreError(f"cannot keep the profile store in {folder}: {ex.strerror or ex}. "
                         "Try: IMAGIC_LORA_USER_PATH=<a folder you can write to>") from None
    if path.is_dir():
        raise StoreError(f"the profile store {path} is a folder, not a database file. Try: move it away")
    # 2. connect and migrate; SQLite answers "locked" at once, without waiting, to some lock changes (turning on
    # WAL, writers racing on a new file's first migration), so those are tried again until the busy timeout
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    with mapped_errors(path):
        while True:
            try:
                return _open_once(path)
            except sqlite3.OperationalError as ex:
                if not ("locked" in str(ex) or "busy" in str(ex)) or time.monotonic() > deadline:
                    raise
                time.sleep(BUSY_RETRY_S)


def _open_once(path: Path) -> Opened:
    """Connect (read-write, or read-only where the file or its folder cannot be written), then apply pending
    migrations; refuse to change a store from a newer version."""
    folder = path.parent
    writable = not path.exists() or (os.access(path, os.W_OK) and os.access(folder, os.W_OK))
    opened = _connect(path) if writable else _connect_read_only(path)
    try:
        applied = applied_migrations(opened.conn)
        opened.newer = [name for name in applied if name not in KNOWN_MIGRATIONS]
        pending = [name for name in KNOWN_MIGRATIONS if name not in applied]
        if pending and not opened.read_only and not opened.newer:
            _migrate(opened.conn)
        if m002_profile_data.__name__ not in applied_migrations(opened.conn):  # not migrated: read-only or newer
            opened.data_table = TABLE
    except BaseException:
        opened.conn.close()
        raise
    for table in (TABLE, opened.data_table):
        if not _has_table(opened.conn, table):
            opened.conn.close()
            raise StoreError(f"the profile store {path} has no '{table}' table: it is damaged or not "
                             "imagic-lora's. Try: move it away (a new store is made)")
    return opened


def _migrate(conn: sqlite3.Connection) -> None:
    import sqlite_utils

    conn.execute("BEGIN IMMEDIATE")
    try:
        migrations().apply(sqlite_utils.Database(conn))
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def lenient_text(data: bytes) -> str:
    """A TEXT value as a string even when it is not UTF-8 (a damaged or hand-edited row): U+FFFD for what
    does not decode, so the command that reads it can name the row instead of failing on it."""
    return data.decode("utf-8", errors="replace")


def _connect(path: Path) -> Opened:
    """WAL mode with a busy timeout, the driver in autocommit (writes BEGIN explicitly)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.text_factory = lenient_text
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.OperationalError as ex:
        conn.close()
        if "readonly" in str(ex) or "unable to open" in str(ex):
            return _connect_read_only(path)
        if ("disk I/O" in str(ex) or "full" in str(ex)) and disk_full(path):  # no room for the WAL index
            opened = _connect_read_only(path)
            opened.full = True
            return opened
        raise
    return Opened(conn, read_only=False)


def disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no room left."""
    try:
        return shutil.disk_usage(path.parent).free < FULL_BELOW_BYTES
    except OSError:
        return False


def _connect_read_only(path: Path) -> Opened:
    """``mode=ro``; where even the WAL index cannot be made (a read-only folder), ``immutable=1``."""
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
        conn.text_factory = lenient_text
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            continue
        return Opened(conn, read_only=True)
    raise sqlite3.OperationalError("unable to open database file read-only")


def newer_error(path: Path, newer: list[str]) -> StoreError:
    return StoreError(
        f"the profile store {path} was written by a newer imagic-lora (it has migration "
        f"{', '.join(newer)}; this version knows up to {KNOWN_MIGRATIONS[-1]}): it can be read, not changed. "
        "Try: upgrading imagic-lora"
    )

"""Opening the store's SQLite file, its migrations, and SQLite's failures as one clear line.

One path opens every store: a damaged, read-only, busy, full or newer store raises
:class:`~imagic_lora.errors.StoreError` with a hint instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils
from sqlite_utils import Migrations

from .errors import StoreError

BUSY_TIMEOUT_S = 60.0
TABLE = "profiles"
MOVE_AWAY = "Try: imagic-lora profiles backup FILE to save what is readable, then move it away (a new store is made)"

migrations = Migrations("imagic-lora")


@migrations()
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


KNOWN_MIGRATIONS = [m001_profiles.__name__]  # every migration above, in order


def sqlite_error(path: Path, ex: sqlite3.Error) -> StoreError:
    """The one line a user sees for what SQLite raised on ``path``."""
    text = str(ex)
    if "locked" in text or "busy" in text:
        return StoreError(f"the profile store {path} is busy: another process has held its write lock for "
                          f"{BUSY_TIMEOUT_S:g} s. Try: again when that process finishes")
    if "readonly" in text or "read-only" in text:
        return read_only_error(path)
    if "full" in text:
        return StoreError(f"no space left to write the profile store {path}; nothing was changed. "
                          "Try: free some disk space")
    if "no such table" in text or "no such column" in text:
        return StoreError(f"the profile store {path} lacks part of its schema ({text}). {MOVE_AWAY}")
    if isinstance(ex, sqlite3.OperationalError) and "unable to open" not in text:
        return StoreError(f"the profile store {path} failed: {text}. Try: imagic-lora profiles verify")
    return StoreError(f"the profile store {path} is damaged or not a database ({text}). {MOVE_AWAY}")


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
    db: sqlite_utils.Database
    read_only: bool
    newer: list[str] = field(default_factory=list)  # migrations applied by a newer imagic-lora


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
    # 2. connect: read-write, or read-only where the file or its folder cannot be written
    with mapped_errors(path):
        writable = not path.exists() or (os.access(path, os.W_OK) and os.access(folder, os.W_OK))
        opened = _connect(path) if writable else _connect_read_only(path)
        # 3. the schema: apply what is pending, refuse to change a store from a newer version
        applied = [m.name for m in migrations.applied(opened.db)]
        opened.newer = [name for name in applied if name not in KNOWN_MIGRATIONS]
        if migrations.pending(opened.db) and not opened.read_only and not opened.newer:
            opened.db.conn.execute("BEGIN IMMEDIATE")
            try:
                migrations.apply(opened.db)
            except BaseException:
                if opened.db.conn.in_transaction:
                    opened.db.conn.execute("ROLLBACK")
                raise
            opened.db.conn.execute("COMMIT")
        if not opened.db[TABLE].exists():
            raise StoreError(f"the profile store {path} has no '{TABLE}' table: it is damaged or not "
                             "imagic-lora's. Try: move it away (a new store is made)")
    return opened


def _connect(path: Path) -> Opened:
    """WAL mode with a busy timeout, the driver in autocommit (writes BEGIN explicitly)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.OperationalError as ex:
        conn.close()
        if "readonly" in str(ex) or "unable to open" in str(ex):
            return _connect_read_only(path)
        raise
    return Opened(sqlite_utils.Database(conn), read_only=False)


def _connect_read_only(path: Path) -> Opened:
    """``mode=ro``; where even the WAL index cannot be made (a read-only folder), ``immutable=1``."""
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            continue
        return Opened(sqlite_utils.Database(conn), read_only=True)
    raise sqlite3.OperationalError("unable to open database file read-only")


def newer_error(path: Path, newer: list[str]) -> StoreError:
    return StoreError(
        f"the profile store {path} was written by a newer imagic-lora (it has migration "
        f"{', '.join(newer)}; this version knows up to {KNOWN_MIGRATIONS[-1]}): it can be read, not changed. "
        "Try: upgrading imagic-lora"
    )

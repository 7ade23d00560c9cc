"""The profile store: one SQLite database in the user directory, through sqlite-utils."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import click
import sqlite_utils
from sqlite_utils import Migrations

from .errors import ImagicError, InvalidConfig, InvalidProfileFile, ProfileExists, ProfileNotFound
from .profile import MAX_FILE_BYTES, Profile, check_name

USER_PATH_ENV = "IMAGIC_LORA_USER_PATH"
BUSY_TIMEOUT_S = 60.0
TABLE = "profiles"
SUMMARY_COLUMNS = (
    "name", "source_prompt", "base_model", "base_fingerprint", "resolution",
    "created_at", "format_version", "library_version", "size_bytes", "sha256", "metadata",
)

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


def user_dir() -> Path:
    """Where imagic-lora keeps its data: ``$IMAGIC_LORA_USER_PATH`` or the platform's app dir."""
    return Path(os.environ.get(USER_PATH_ENV) or click.get_app_dir("imagic-lora"))


def _row(profile: Profile, data: bytes) -> dict:
    meta = profile.metadata
    return {
        "name": profile.name,
        "source_prompt": meta["source_prompt"],
        "base_model": meta["base_model"],
        "base_fingerprint": meta["base_fingerprint"],
        "resolution": meta["resolution"],
        "created_at": meta["created_at"],
        "format_version": meta.get("format_version", 1),
        "library_version": meta["library_version"],
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": json.dumps(meta, sort_keys=True),
        "data": data,
    }


def connect(path: Path) -> sqlite_utils.Database:
    """Open ``path`` in WAL mode with a busy timeout, the driver in autocommit (we BEGIN explicitly)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return sqlite_utils.Database(conn)


class ProfileStore:
    """Profiles by name; every change is one transaction, and listing never reads tensor blobs.

    Crash safety and concurrency come from SQLite itself: WAL journal, ``synchronous=FULL``, and
    ``BEGIN IMMEDIATE`` for every change, so concurrent writers queue on the busy timeout.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else user_dir() / "profiles.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = connect(self.path)
        if migrations.pending(self.db) or not self.db[migrations.migrations_table].exists():
            with self.transaction():
                migrations.apply(self.db)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction holding the write lock from its start; rolled back on any error."""
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.execute("ROLLBACK")
            raise
        self.db.conn.execute("COMMIT")

    def list(self) -> list[dict]:
        columns = ", ".join(SUMMARY_COLUMNS)
        return list(self.db.query(f"select {columns} from {TABLE} order by name"))

    def exists(self, name: str) -> bool:
        return bool(list(self.db.query(f"select 1 from {TABLE} where name = ?", [name])))

    def ensure_free(self, name: str) -> None:
        """Raise :class:`ProfileExists` if ``name`` is taken."""
        if self.exists(check_name(name)):
            raise _exists(name)

    def info(self, name: str) -> dict:
        """A profile's summary row, with ``metadata`` parsed."""
        columns = ", ".join(SUMMARY_COLUMNS)
        rows = list(self.db.query(f"select {columns} from {TABLE} where name = ?", [check_name(name)]))
        if not rows:
            raise _not_found(name)
        row = rows[0]
        row["metadata"] = json.loads(row["metadata"])
        return row

    def get(self, name: str) -> Profile:
        data = self.get_bytes(name)
        return Profile.from_bytes(data, source=f"stored profile {name!r}")

    def get_bytes(self, name: str) -> bytes:
        rows = list(self.db.query(f"select data from {TABLE} where name = ?", [check_name(name)]))
        if not rows:
            raise _not_found(name)
        return rows[0]["data"]

    def save(self, profile: Profile, replace: bool = False) -> None:
        """Write ``profile`` in one transaction; refuse an existing name unless ``replace``."""
        check_name(profile.name)
        data = profile.to_bytes()
        with self.transaction():
            if not replace:
                self.ensure_free(profile.name)
            self.db[TABLE].insert(_row(profile, data), replace=True)

    def remove(self, name: str) -> None:
        with self.transaction():
            if not self.exists(check_name(name)):
                raise _not_found(name)
            self.db.execute(f"delete from {TABLE} where name = ?", [name])

    def rename(self, old: str, new: str) -> None:
        """Read, check and rewrite under one write lock, so a concurrent import or removal cannot interleave."""
        check_name(new)
        with self.transaction():
            profile = self.get(old).renamed(new)
            self.ensure_free(new)
            self.db.execute(f"delete from {TABLE} where name = ?", [old])
            self.db[TABLE].insert(_row(profile, profile.to_bytes()))

    def check_not_store(self, path: str | Path) -> None:
        """Refuse ``path`` if it is the live database or one of its journal files (compared as real paths)."""
        target = Path(path).resolve()
        live = self.path.resolve()
        if target in {live, *(live.with_name(live.name + suffix) for suffix in ("-wal", "-shm", "-journal"))}:
            raise InvalidConfig(f"{path} is the live profile store itself. Try: another file name")

    def export(self, name: str, path: str | Path) -> Path:
        """Write the profile's shareable file to ``path``."""
        self.check_not_store(path)
        data = self.get_bytes(name)
        path = Path(path)
        if path.is_dir():
            raise InvalidConfig(f"{path} is a folder. Try: a file name such as {name}.imagic.safetensors")
        tmp = path.with_name(path.name + ".part")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as ex:
            raise InvalidConfig(f"cannot write {path}: {ex.strerror}") from None
        return path

    def verify(self) -> tuple[int, list[str]]:
        """SQLite's integrity check, then every profile's checksum and contents: (profiles read, problems)."""
        problems = [row[0] for row in self.db.conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        count = 0
        for name, sha256, data in self.db.conn.execute(f"select name, sha256, data from {TABLE} order by name"):
            count += 1
            if hashlib.sha256(data).hexdigest() != sha256:
                problems.append(f"profile {name!r}: its data does not match its stored checksum")
                continue
            try:
                profile = Profile.from_bytes(data, source=f"profile {name!r}")
            except ImagicError as ex:
                problems.append(str(ex))
                continue
            if profile.name != name:
                problems.append(f"profile {name!r}: its file names it {profile.name!r}")
        return count, problems

    def backup(self, path: str | Path, replace: bool = False) -> Path:
        """A consistent copy of the whole store, taken with SQLite's online backup while it may be in use."""
        target = Path(path)
        self.check_not_store(target)
        _check_backup_target(target, self.path, replace)
        part = target.with_name(target.name + ".part")
        part.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(part)) as copy:
            self.db.conn.backup(copy)
        part.replace(target)
        return target

    def import_file(self, path: str | Path, name: str | None = None, replace: bool = False) -> Profile:
        """Validate a shared profile file and store it, under ``name`` if given."""
        profile = read_profile_file(path)
        if name is not None:
            profile = profile.renamed(name)
        if not replace and self.exists(profile.name):
            raise ProfileExists(f"profile {profile.name!r} already exists. Try: --name NEW, or --replace")
        self.save(profile, replace=replace)
        return profile


def _check_backup_target(target: Path, live: Path, replace: bool) -> None:
    if target.is_dir():
        raise InvalidConfig(f"{target} is a folder. Try: a file name such as profiles-backup.db")
    if target.exists() and not replace:
        raise InvalidConfig(f"{target} already exists. Try: another file name, or --replace")


def read_profile_file(path: str | Path) -> Profile:
    """Read and validate a shared ``.safetensors`` profile file without storing it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidProfileFile(f"profile file {str(path)!r} not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidProfileFile(f"{path} is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
    return Profile.from_bytes(path.read_bytes(), source=str(path))


def _not_found(name: str) -> ProfileNotFound:
    return ProfileNotFound(f"profile {name!r} not found. Try: imagic-lora profiles list")


def _exists(name: str) -> ProfileExists:
    return ProfileExists(
        f"profile {name!r} already exists. Try: another name, or imagic-lora profiles rm {name}"
    )

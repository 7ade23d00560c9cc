"""The profile store: one SQLite database in the user directory.

Its schema comes from sqlite-utils migrations (:mod:`imagic_lora.storedb`); reads and writes use the
plain ``sqlite3`` connection, so commands that only list or manage profiles start at once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ImagicError, InvalidConfig, InvalidProfileFile, ProfileExists, ProfileNotFound, StoreError
from .files import atomic_write, check_file
from .paths import store_path
from .record import ProfileMetadata
from .validate import MAX_FILE_BYTES, PROFILE_SUFFIX, check_name, parse_json, read_header, with_name

if TYPE_CHECKING:
    from .profile import Profile
from .storedb import DATA_TABLE, TABLE, mapped_errors, newer_error, open_database

SUMMARY_COLUMNS = (
    "name", "source_prompt", "base_model", "base_fingerprint", "resolution",
    "created_at", "format_version", "library_version", "size_bytes", "sha256", "metadata",
)


def _row(name: str, meta: ProfileMetadata, data: bytes) -> dict:
    return {
        "name": name,
        "source_prompt": meta.source_prompt,
        "base_model": meta.base_model,
        "base_fingerprint": meta.settings.base_fingerprint,
        "resolution": meta.settings.resolution,
        "created_at": meta.created_at,
        "format_version": meta.format_version or 1,
        "library_version": meta.library_version,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": json.dumps(meta.to_dict(), sort_keys=True),
    }


def _guarded(method):
    """Run a store method with SQLite's errors turned into one-line :class:`StoreError`s."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with mapped_errors(self.path):
            return method(self, *args, **kwargs)

    return wrapper


class ProfileStore:
    """Profiles by name; every change is one transaction, and listing never reads tensor blobs.

    Crash safety and concurrency come from SQLite itself: WAL journal, ``synchronous=FULL``, and
    ``BEGIN IMMEDIATE`` for every change, so concurrent writers queue on the busy timeout.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else store_path()
        opened = open_database(self.path)
        self.conn, self.read_only, self.newer = opened.conn, opened.read_only, opened.newer
        self._opened = opened
        self.data_table = opened.data_table

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction holding the write lock from its start; rolled back on any error.

        SQLite may already have rolled back (a full disk): then the original error is the one raised.
        """
        if self.read_only:
            raise self._opened.write_refusal(self.path)
        if self.newer:
            raise newer_error(self.path, self.newer)
        with mapped_errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @_guarded
    def list(self, columns: tuple[str, ...] = SUMMARY_COLUMNS) -> list[dict]:
        """Summary rows by name, with only ``columns`` (never the tensor blob)."""
        unknown = set(columns) - set(SUMMARY_COLUMNS)
        if unknown:
            raise ValueError(f"not summary columns: {sorted(unknown)}")
        cursor = self.conn.execute(f"select {', '.join(columns)} from {TABLE} order by name")
        return [dict(zip(columns, row, strict=True)) for row in cursor]

    @_guarded
    def names(self, prefix: str = "") -> list[str]:
        """Stored names starting with ``prefix``, in order (for shell completion)."""
        rows = self.conn.execute(f"select name from {TABLE} where substr(name, 1, ?) = ? order by name",
                                    [len(prefix), prefix])
        return [row[0] for row in rows]

    @_guarded
    def exists(self, name: str) -> bool:
        return self.conn.execute(f"select 1 from {TABLE} where name = ?", [name]).fetchone() is not None

    def ensure_free(self, name: str) -> None:
        """Raise :class:`ProfileExists` if ``name`` is taken."""
        if self.exists(check_name(name)):
            raise _exists(name)

    @_guarded
    def info(self, name: str) -> dict:
        """A profile's summary row, with ``metadata`` read into a :class:`ProfileMetadata`."""
        columns = ", ".join(SUMMARY_COLUMNS)
        rows = [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in
                self.conn.execute(f"select {columns} from {TABLE} where name = ?", [check_name(name)])]
        if not rows:
            raise _not_found(name)
        row = rows[0]
        row["metadata"] = stored_metadata(row)
        return row

    def get(self, name: str) -> Profile:
        data = self.get_bytes(name)
        return _parse(data, f"stored profile {name!r}")

    @_guarded
    def get_bytes(self, name: str) -> bytes:
        row = self.conn.execute(f"select data from {self.data_table} where name = ?", [check_name(name)]).fetchone()
        if row is None:
            raise _not_found(name)
        data = row[0]
        if not isinstance(data, bytes):
            raise InvalidProfileFile(f"stored profile {name!r} is damaged: its data is "
                                     f"{type(data).__name__ if data is not None else 'NULL'}, not a profile file. "
                                     "Try: imagic-lora profiles verify")
        return data

    def save(self, profile: Profile, replace: bool = False) -> None:
        """Write ``profile`` in one transaction; refuse an existing name unless ``replace``."""
        check_name(profile.name)
        data = profile.to_bytes()
        with self.transaction():
            if not replace:
                self.ensure_free(profile.name)
            self._insert(_row(profile.name, profile.metadata, data), data)

    def _insert(self, row: dict, data: bytes) -> None:
        """Insert or replace one profile's row and its tensors (inside a transaction)."""
        columns = ", ".join(row)
        self.conn.execute(f"insert or replace into {TABLE} ({columns}) values ({', '.join('?' * len(row))})",
                          list(row.values()))
        self.conn.execute(f"insert or replace into {DATA_TABLE} (name, data) values (?, ?)", [row["name"], data])

    def _delete(self, name: str) -> None:
        for table in (TABLE, DATA_TABLE):
            self.conn.execute(f"delete from {table} where name = ?", [name])

    def remove(self, name: str) -> None:
        with self.transaction():
            if not self.exists(check_name(name)):
                raise _not_found(name)
            self._delete(name)

    def rename(self, old: str, new: str) -> None:
        """Read, check and rewrite under one write lock, so a concurrent import or removal cannot interleave."""
        check_name(new)
        with self.transaction():
            source = f"stored profile {old!r}"
            data = with_name(self.get_bytes(old), new, source)
            metadata = ProfileMetadata.from_header(read_header(data, source), source)
            self.ensure_free(new)
            self._delete(old)
            self._insert(_row(new, metadata, data), data)

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
        return atomic_write(check_file(path, f"{name}{PROFILE_SUFFIX}"), data)

    @_guarded
    def verify(self) -> tuple[int, list[str]]:
        """SQLite's integrity check, then every profile's checksum and contents: (profiles read, problems)."""
        problems = [row[0] for row in self.conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        if self.newer:
            problems.append(str(newer_error(self.path, self.newer)))
        count = 0
        rows = self.conn.execute(f"select p.name, p.sha256, p.metadata, d.data from {TABLE} p "
                                 f"left join {self.data_table} d on d.name = p.name order by p.name")
        for name, sha256, metadata, data in rows:
            count += 1
            problem = _row_problem(name, sha256, metadata, data)
            if problem:
                problems.append(problem)
        return count, problems

    def backup(self, path: str | Path, replace: bool = False) -> Path:
        """A consistent copy of the whole store, taken with SQLite's online backup while it may be in use."""
        target = Path(path)
        self.check_not_store(target)
        _check_backup_target(target, replace)

        def copy_to(part: Path) -> None:
            try:
                with contextlib.closing(sqlite3.connect(part)) as copy:
                    self.conn.backup(copy)
            except sqlite3.Error as ex:  # the copy's own failure (a full disk) is a write error, not the store's
                code = errno.ENOSPC if "full" in str(ex) else errno.EIO
                raise OSError(code, os.strerror(code) if code == errno.ENOSPC else str(ex)) from None

        return atomic_write(check_file(target, "profiles-backup.db"), copy_to)

    def import_file(self, path: str | Path, name: str | None = None, replace: bool = False) -> Profile:
        """Validate a shared profile file and store it, under ``name`` if given."""
        profile = read_profile_file(path)
        if name is not None:
            profile = profile.renamed(name)
        if not replace and self.exists(profile.name):
            raise ProfileExists(f"profile {profile.name!r} already exists. Try: --name NEW, or --replace")
        self.save(profile, replace=replace)
        return profile


    def import_folder(self, folder: str | Path, replace: bool = False) -> list[tuple[Path, str, str]]:
        """Import every ``*.safetensors`` profile file in ``folder`` (not below it), each validated as one file.

        Returns ``(path, status, detail)`` per file: ``imported``, ``skipped`` (the same profile is
        stored already) or ``refused`` (with the reason). One bad file does not stop the others.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise InvalidConfig(f"{folder} is not a folder")
        paths = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
        if not paths:
            raise InvalidConfig(f"{folder} holds no .safetensors files. Try: the folder given to "
                                "train-batch --out-dir")
        imported: dict[str, Path] = {}  # name -> the file of this folder it came from
        return [(path, *self._import_one(path, replace, imported)) for path in paths]

    def _import_one(self, path: Path, replace: bool, imported: dict[str, Path]) -> tuple[str, str]:
        """One file of a folder; ``--replace`` replaces what was stored before, never a file of the same folder."""
        try:
            profile = read_profile_file(path)
            if self.exists(profile.name):
                # equal headers (metadata and tensor checksum) mean the same profile; the bytes may differ, as
                # safetensors writes header keys in no fixed order
                stored = read_header(self.get_bytes(profile.name), f"stored profile {profile.name!r}")
                if stored == read_header(profile.to_bytes(), str(path)):
                    return "skipped", f"profile {profile.name!r} is stored already, identical"
                if profile.name in imported:
                    return "refused", (f"profile {profile.name!r} was imported from {imported[profile.name].name} "
                                       "just before, with other contents. Try: importing this file alone with "
                                       "--name NEW")
                if not replace:
                    return "refused", (f"profile {profile.name!r} exists with other contents. "
                                       "Try: --replace, or importing this file alone with --name NEW")
            self.save(profile, replace=replace)
        except ImagicError as ex:
            return "refused", str(ex)
        imported[profile.name] = path
        return "imported", f"profile {profile.name!r}"


def _check_backup_target(target: Path, replace: bool) -> None:
    if target.is_dir():
        raise InvalidConfig(f"{target} is a folder. Try: a file name such as profiles-backup.db")
    if target.exists() and not replace:
        raise InvalidConfig(f"{target} already exists. Try: another file name, or --replace")


def stored_metadata(row: dict) -> ProfileMetadata:
    """The ``metadata`` column read, or :class:`StoreError` naming the damaged profile."""
    version = row.get("format_version")
    try:
        text = parse_json(row["metadata"], "not JSON")
        return ProfileMetadata.from_dict(text, version if isinstance(version, int) else 1, "its column")
    except ImagicError:
        raise StoreError(f"stored profile {row['name']!r} has damaged metadata in the store. "
                         "Try: imagic-lora profiles verify") from None


def _row_problem(name, sha256, metadata, data) -> str | None:
    """What is wrong with one stored row, or None."""
    if not isinstance(data, bytes):
        return f"profile {name!r}: its data is {'NULL' if data is None else type(data).__name__}, not a profile file"
    if hashlib.sha256(data).hexdigest() != sha256:
        return f"profile {name!r}: its data does not match its stored checksum"
    try:
        profile = _parse(data, f"profile {name!r}")
        columns = stored_metadata({"name": name, "metadata": metadata, "format_version": profile.format_version})
    except ImagicError as ex:
        return str(ex)
    if profile.name != name:
        return f"profile {name!r}: its file names it {profile.name!r}"
    if columns != profile.metadata:
        return f"profile {name!r}: its metadata column differs from its file's metadata"
    return None


def read_profile_file(path: str | Path) -> Profile:
    """Read and validate a shared ``.safetensors`` profile file without storing it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidProfileFile(f"profile file {str(path)!r} not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidProfileFile(f"{path} is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
    return _parse(path.read_bytes(), str(path))


def _parse(data: bytes, source: str) -> Profile:
    from .profile import Profile  # torch: imported only by commands that read tensors

    return Profile.from_bytes(data, source=source)


def _not_found(name: str) -> ProfileNotFound:
    return ProfileNotFound(f"profile {name!r} not found. Try: imagic-lora profiles list")


def _exists(name: str) -> ProfileExists:
    return ProfileExists(
        f"profile {name!r} already exists. Try: another name, or imagic-lora profiles rm {name}"
    )

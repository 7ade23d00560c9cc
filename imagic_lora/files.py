"""Every file the tool writes goes through here: destinations checked before the work, writes atomic.

A write goes to ``NAME.part`` beside the target, is flushed to disk, then renamed over the target, so
a killed process leaves either the old file or the new one, never half of one. A ``.part`` left by a
killed run is overwritten by the next write to the same target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import InvalidConfig, OutputError
from .limits import MAX_TEXT_FILE_BYTES

PART = ".part"
MAX_NAME_TRIES = 100


def _hint(ex: OSError) -> str:
    if ex.errno == errno.ENOSPC:
        return "Try: free some disk space"
    if ex.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "Try: a folder you can write to"
    return "Try: another path"


def write_error(path: Path, ex: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {ex.strerror or ex}. {_hint(ex)}")


def write_first(folders: list[Path], stem: str, suffix: str, data: bytes) -> Path | None:
    """Write ``data`` as ``stem + suffix`` into the first of ``folders`` that takes it (made if needed), or None.

    For last-resort files (crash logs, a trained profile the store refused), where any place beats none.
    Each write is atomic, so a full disk leaves no empty or partial file; an existing file of that name is
    never replaced: the new one is called ``STEM-2``, ``STEM-3``… instead.
    """
    for folder in folders:
        for number in range(1, MAX_NAME_TRIES + 1):
            path = folder / (f"{stem}{suffix}" if number == 1 else f"{stem}-{number}{suffix}")
            try:
                return atomic_write(path, data, replace=False)
            except FileExistsError:
                continue
            except OutputError:
                break
    return None


def check_folder(folder: str | Path, what: str = "--out") -> Path:
    """Prove ``folder`` can take files, before any expensive work, leaving nothing behind.

    The folder itself may not exist yet (:func:`make_folder` makes it when the outputs are ready);
    its nearest existing ancestor must be a folder that takes a probe file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} must be a folder, got the file {str(folder)!r}")
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise OutputError(f"cannot write to {what} {str(folder)!r}: {existing} is a file, not a folder. "
                          "Try: another path")
    probe = existing / f".imagic-lora-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as ex:
        raise OutputError(f"cannot write to {what} {str(folder)!r}: {ex.strerror or ex}. {_hint(ex)}") from None
    return folder


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise write_error(folder, ex) from None
    return folder


def check_file(path: str | Path, example: str) -> Path:
    """A destination file: not a folder, in a folder that exists (or can be made) and takes writes."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder. Try: a file name such as {example}")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} is a file, not a folder. Try: another path")
    check_folder(path.parent, "the folder of")
    return path


def atomic_write(path: str | Path, data: bytes | Callable[[Path], None], replace: bool = True) -> Path:
    """Write ``data`` (bytes, or a function that writes the given path) to ``path`` atomically, mode 0644.

    With ``replace`` false an existing ``path`` is left alone and ``FileExistsError`` raised, even when
    another process makes it while this one writes.
    """
    path = Path(path)
    part = path.with_name(path.name + PART)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            part.unlink(missing_ok=True)
            data(part)
        else:
            part.write_bytes(data)
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        part.chmod(0o666 & ~umask)
        _move(part, path, replace)
    except FileExistsError:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise
    except OSError as ex:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise write_error(path, ex) from None
    return path


def _move(part: Path, path: Path, replace: bool) -> None:
    if replace:
        part.replace(path)
        return
    try:
        os.link(part, path)  # fails if path exists, whoever made it
    except OSError as ex:
        if isinstance(ex, FileExistsError) or path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        part.replace(path)  # a file system without hard links: checked, then renamed
        return
    part.unlink()


def read_text(path: str | Path, what: str, example: str) -> str:
    """A UTF-8 text file the user names (a batch or prompts file), bounded; ``InvalidConfig`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InvalidConfig(f"{what} {str(path)!r} not found. Try: {example}")
    if path.stat().st_size > MAX_TEXT_FILE_BYTES:
        raise InvalidConfig(f"{what} {path} is over {MAX_TEXT_FILE_BYTES // 2**20} MiB. Try: splitting it")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        line = data[: ex.start].count(b"\n") + 1
        raise InvalidConfig(f"{what} {path} is not UTF-8 text (line {line}). Try: saving it as UTF-8") from None

"""The last line of defence: an unexpected exception becomes one line for the user and a log file for a bug report."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

from . import __version__
from .files import write_first
from .paths import user_dir

OOM_HINT = "Try: a lower --resolution or --samples-per-step, --gradient-checkpointing, or --device cpu; "


def _log_folders() -> list[Path]:
    return [user_dir() / "logs", Path(tempfile.gettempdir()) / "imagic-lora-logs"]


def write_log(ex: BaseException) -> Path | None:
    """Write the traceback, the command line and the versions to a new log file; None if nothing is writable."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    modules = {name: getattr(sys.modules[name], "__version__", "?") for name in ("torch", "diffusers", "peft",
               "transformers") if name in sys.modules}
    text = "\n".join([
        f"imagic-lora {__version__}, Python {platform.python_version()}, {platform.platform()}",
        "libraries: " + (", ".join(f"{k} {v}" for k, v in modules.items()) or "none loaded"),
        "command: " + " ".join(sys.argv),
        "",
        "".join(traceback.format_exception(type(ex), ex, ex.__traceback__)),
    ])
    return write_first(_log_folders(), f"crash-{stamp}-{os.getpid()}", ".log", text.encode("utf-8"))


def crash_message(ex: BaseException) -> str:
    """``unexpected <Type>: <first line>. <hint>the traceback is in <log>; …`` for the ``Error:`` line."""
    first = (str(ex).strip().splitlines() or [""])[0][:300]
    summary = f"{type(ex).__name__}: {first}" if first else type(ex).__name__
    hint = OOM_HINT if "OutOfMemoryError" in type(ex).__name__ else ""
    log = write_log(ex)
    where = f"the full traceback is in {log}" if log else "no log file could be written"
    return f"unexpected {summary}. {hint}{where}; please attach it to a bug report"

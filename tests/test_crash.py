"""Nothing unexpected reaches the user as a traceback, and a finished training is never thrown away."""

import re
import sqlite3
from pathlib import Path

from helpers import error_line, run, store_snapshot

from imagic_lora import ProfileStore

TINY = ["--model", "builtin:tiny", "--embedding-steps", 1, "--lora-steps", 1]


def test_an_unexpected_exception_gives_one_line_and_a_log_with_the_traceback(image_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the kernel said no\nsecond line")

    monkeypatch.setattr("imagic_lora.api.encode_image", broken)
    result = run("train", "x", image_path, "--prompt", "a red ball", *TINY)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line = error_line(result)
    match = re.fullmatch(r"Error: unexpected RuntimeError: the kernel said no\. the full traceback is in (\S+); "
                         r"please attach it to a bug report", line)
    assert match, line
    log = Path(match.group(1)).read_text()
    assert "Traceback" in log and "the kernel said no" in log and "in broken" in log
    assert store_snapshot() == []


def test_out_of_memory_names_the_settings_that_help(image_path, monkeypatch):
    class OutOfMemoryError(RuntimeError):
        pass

    def out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("imagic_lora.api.optimize_embedding", out_of_memory)
    result = run("train", "x", image_path, "--prompt", "a red ball", *TINY)
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: unexpected OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                         "2.00 GiB. Try: a lower --resolution")


def test_a_store_failure_after_training_keeps_the_profile_in_a_file(image_path, monkeypatch):
    def disk_error(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(ProfileStore, "save", disk_error)
        result = run("train", "kept", image_path, "--prompt", "a red ball", *TINY)
    assert result.exit_code == 1
    line = error_line(result)
    match = re.fullmatch(r"Error: profile 'kept' was trained but not stored \(OperationalError: disk I/O error\); "
                         r"it is kept in (\S+)\. Try: imagic-lora profiles import \1", line)
    assert match, line
    assert store_snapshot() == []
    assert run("profiles", "import", match.group(1)).exit_code == 0
    assert ProfileStore().get("kept").metadata.source_prompt == "a red ball"

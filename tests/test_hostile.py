"""Hostile use: damaged, read-only, busy and newer stores; bad destinations; full disks; odd inputs.

Each gets one ``Error:`` line with a hint, exit code 1, no traceback, and changes nothing.
"""

import errno
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import PROMPT, error_line, run, store_snapshot, with_metadata_fields
from PIL import Image

from imagic_lora import ProfileStore, storedb

TINY = ["--model", "builtin:tiny", "--embedding-steps", 1, "--lora-steps", 1]


@pytest.fixture
def stored(trained):
    ProfileStore().save(trained)
    return ProfileStore().path


def refused(args, expected_start, env=None):
    result = run(*args, env=env)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = error_line(result)
    assert line.startswith(expected_start), line
    return line


def test_a_user_path_that_is_a_file_or_below_one(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for user_path in (afile, afile / "below"):
        line = refused(["profiles", "list"], f"Error: cannot keep the profile store in {user_path}: ",
                       env={"IMAGIC_LORA_USER_PATH": str(user_path)})
        assert line.endswith("Try: IMAGIC_LORA_USER_PATH=<a folder you can write to>")
    assert afile.read_text() == "x"


@pytest.mark.parametrize("damage", ["random", "truncated", "folder", "no table"])
def test_a_damaged_store_is_named_by_every_command(stored, damage):
    with sqlite3.connect(stored) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, none left in the WAL
    if damage == "random":
        stored.write_bytes(os.urandom(8192))
    elif damage == "truncated":
        stored.write_bytes(stored.read_bytes()[: 4096 + 100])
    elif damage == "folder":
        stored.unlink()
        stored.mkdir()
    else:
        with sqlite3.connect(stored) as conn:
            conn.execute("drop table profiles")
    before = sorted(p.name for p in stored.parent.iterdir())
    for args in (["profiles", "list"], ["profiles", "show", "ball"], ["profiles", "verify"],
                 ["profiles", "rm", "ball"], ["apply", "profile", "ball", "a dog"]):
        line = refused(args, f"Error: the profile store {stored} ")
        assert "Try: " in line
    assert sorted(p.name for p in stored.parent.iterdir()) == before


def test_metadata_that_is_not_json_and_blobs_that_are_not_bytes(stored):
    with sqlite3.connect(stored) as conn:
        conn.execute("update profiles set metadata = '{oops' where name = 'ball'")
    listed = run("profiles", "list", "--json")
    assert listed.exit_code == 0 and '"problem": "stored profile \'ball\' has damaged metadata' in listed.output
    refused(["profiles", "show", "ball"], "Error: stored profile 'ball' has damaged metadata in the store. "
            "Try: imagic-lora profiles verify")
    verify = run("profiles", "verify")
    assert verify.exit_code == 1 and "Problem: stored profile 'ball' has damaged metadata" in verify.stderr
    for value, kind in (("'text'", "str"), ("NULL", "NULL")):
        with sqlite3.connect(stored) as conn:
            conn.execute("drop table if exists p2")
            conn.execute("create table p2 as select * from profile_data")  # no NOT NULL constraint on the copy
            conn.execute("drop table profile_data")
            conn.execute("alter table p2 rename to profile_data")
            conn.execute(f"update profile_data set data = {value}")
        verify = run("profiles", "verify")
        assert verify.exit_code == 1 and f"Problem: profile 'ball': its data is {kind}, not a profile file" \
            in verify.stderr
        refused(["apply", "profile", "ball", "a dog"], f"Error: stored profile 'ball' is damaged: its data is {kind}")


def test_a_store_locked_by_another_process_says_busy(stored, monkeypatch):
    monkeypatch.setattr(storedb, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(stored, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        refused(["profiles", "rm", "ball"], f"Error: the profile store {stored} is busy: another process has held "
                "its write lock for 0.2 s. Try: again when that process finishes")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [row[0] for row in store_snapshot()] == ["ball"]


def test_a_store_from_a_newer_version_is_read_but_not_changed(stored):
    with sqlite3.connect(stored) as conn:
        conn.execute("insert into _sqlite_migrations (migration_set, name, applied_at) "
                     "values ('imagic-lora', 'm999_from_the_future', '2030-01-01')")
    snapshot = store_snapshot()
    assert run("profiles", "list").output.startswith("ball: ")
    line = refused(["profiles", "rm", "ball"], f"Error: the profile store {stored} was written by a newer imagic-lora "
                   "(it has migration m999_from_the_future; this version knows up to m002_profile_data)")
    assert line.endswith("Try: upgrading imagic-lora")
    assert store_snapshot() == snapshot
    assert "Problem: the profile store" in run("profiles", "verify").stderr


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import imagic_lora.cli"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_python(), reason="needs root and setpriv to act as another user")
def test_a_read_only_store_lists_shows_and_exports_but_refuses_changes(stored, tmp_path):
    ProfileStore().conn.close()
    for path in [stored.parent, *stored.parent.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for folder in stored.parent.parents:  # pytest's tmp folders are private to root; let the other user in
        if str(folder).startswith(tempfile.gettempdir() + "/"):
            folder.chmod(folder.stat().st_mode | 0o755)
    writable = tmp_path / "shared"
    writable.mkdir(mode=0o777)
    writable.chmod(0o777)
    env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(stored.parent), "HOME": str(writable)}

    def as_nobody(*args):
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "imagic_lora.cli", *map(str, args)], env=env, capture_output=True, text=True,
                              check=False)

    assert as_nobody("profiles", "list").stdout.startswith("ball: ")
    assert "source_prompt: " in as_nobody("profiles", "show", "ball").stdout
    assert as_nobody("profiles", "export", "ball", writable / "ball.safetensors").returncode == 0
    applied = as_nobody("apply", "profile", "ball", "a dog", "--steps", 1, "--out", writable / "out")
    assert applied.returncode == 0, applied.stderr
    assert len(list((writable / "out").glob("*.png"))) == 1
    removed = as_nobody("profiles", "rm", "ball")
    assert removed.returncode == 1 and "Traceback" not in removed.stderr
    assert removed.stderr.strip() == (f"Error: the profile store {stored} is read-only: profiles can be listed, "
                                      "shown, applied and exported, not changed. "
                                      "Try: IMAGIC_LORA_USER_PATH=<a folder you can write to>")
    assert [row[0] for row in store_snapshot()] == ["ball"]


def test_outputs_below_a_regular_file_are_refused_before_any_work(stored, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr("imagic_lora.api.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    refused(["apply", "profile", "ball", "a dog", "--out", afile / "sub"],
            f"Error: cannot write to --out '{afile / 'sub'}': {afile} is a file, not a folder. Try: another path")
    for extra in ([], ["--lora-only"], ["--format", "kohya"]):
        refused(["profiles", "export", "ball", afile / "x.safetensors", *extra],
                f"Error: cannot write {afile / 'x.safetensors'}: {afile} is a file, not a folder. Try: another path")
        refused(["profiles", "export", "ball", afile / "sub" / "x.safetensors", *extra],
                f"Error: cannot write to the folder of '{afile / 'sub'}': {afile} is a file, not a folder.")
    assert afile.read_text() == "x"


def test_a_full_disk_during_export_leaves_no_file_and_says_so(stored, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "ball.imagic.safetensors"
    monkeypatch.setattr(os, "fsync", full)
    for extra in ([], ["--lora-only"]):
        refused(["profiles", "export", "ball", target, *extra],
                f"Error: cannot write {target}: No space left on device. Try: free some disk space")
        assert list(tmp_path.glob("ball.*")) == []


def test_every_output_file_is_readable_by_others(stored, tmp_path):
    umask = os.umask(0o022)
    try:
        for extra in ([], ["--lora-only"], ["--format", "kohya"]):
            path = tmp_path / f"out{len(extra)}.safetensors"
            assert run("profiles", "export", "ball", path, *extra).exit_code == 0
            assert path.stat().st_mode & 0o777 == 0o644
            assert not path.with_name(path.name + ".part").exists()
    finally:
        os.umask(umask)


def test_a_stale_part_file_from_a_killed_export_is_reused(stored, tmp_path):
    target = tmp_path / "ball.imagic.safetensors"
    target.with_name(target.name + ".part").write_bytes(b"half a file")
    assert run("profiles", "export", "ball", target).exit_code == 0
    assert target.read_bytes() == ProfileStore().get_bytes("ball")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ball")] == [target.name]


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta"])
def test_devices_the_machine_lacks_are_refused(image_path, device):
    if device.startswith("cuda") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    expected = ("Error: --device must be auto, cpu, cuda or cuda:N, got 'meta'" if device == "meta"
                else f"Error: --device {device}: CUDA is not available here")
    refused(["train", "x", image_path, "--prompt", PROMPT, *TINY, "--device", device], expected)


def test_invalid_utf8_prompts_are_refused(stored, image_path):
    bad = b"a red \xff ball".decode("utf-8", "surrogateescape")
    refused(["train", "x", image_path, "--prompt", bad, *TINY],
            "Error: --prompt is not valid UTF-8 text (at character 7). Try: retyping it")
    refused(["apply", "profile", "ball", bad], "Error: the edit prompt is not valid UTF-8 text (at character 7)")


def test_a_prompt_past_the_token_limit_is_cut_with_a_warning(stored, tmp_path):
    result = run("apply", "profile", "ball", "a blue ball " * 30, "--steps", 1, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert re.search(r"Warning: the edit prompt is \d+ tokens, over the model's 77: everything after "
                     r'"\.\.\.[a-z ]+" is ignored', result.stderr), result.stderr


def test_a_multi_picture_jpeg_gives_its_first_picture(tmp_path):
    first = Image.new("RGB", (64, 64), (200, 20, 20))
    path = tmp_path / "phone.jpg"
    first.save(path, format="MPO", save_all=True, append_images=[Image.new("RGB", (64, 64), (20, 20, 200))])
    result = run("train", "phone", path, "--prompt", PROMPT, *TINY)
    assert result.exit_code == 0, result.output
    assert f"Warning: {path} holds 2 pictures (a multi-picture JPEG); using the first" in result.stderr


def test_exit_codes_follow_one_rule():
    """2: click could not parse the command line; 1: a parsed value or input was refused, or the work failed."""
    assert run("apply", "profile", "ball", "x", "--steps", "abc").exit_code == 2
    assert run("apply", "profile", "ball", "x", "--no-such-option").exit_code == 2
    assert run("apply", "profile", "ball", "x", "--steps", "0").exit_code == 1
    assert run("bench", "edits", "--cases", "0").exit_code == 1


def test_a_png_write_that_dies_half_way_leaves_no_file(stored, tmp_path, monkeypatch):
    def half_then_die(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_die)
    out = tmp_path / "out"
    line = refused(["apply", "profile", "ball", "a dog", "--steps", 1, "--out", out], "Error: cannot write ")
    assert line.endswith("No space left on device. Try: free some disk space")
    assert list(out.iterdir()) == []


def test_a_full_disk_during_backup_leaves_no_file(stored, tmp_path, monkeypatch):
    real_connect = sqlite3.connect
    target = tmp_path / "backup.db"

    def one_page_target(path, *args, **kwargs):
        conn = real_connect(path, *args, **kwargs)
        if str(path).startswith(str(target)):
            conn.execute("PRAGMA max_page_count = 1")  # SQLite's own "database or disk is full"
        return conn

    monkeypatch.setattr(sqlite3, "connect", one_page_target)
    refused(["profiles", "backup", target], f"Error: cannot write {target}: No space left on device. "
            "Try: free some disk space")
    assert list(tmp_path.glob("backup.db*")) == []


def test_control_characters_in_stored_text_are_shown_escaped(trained):
    profile = trained.renamed("ball")
    profile = with_metadata_fields(profile, source_prompt="a dog\x1b[2J\x07 \u202egod a\r")
    ProfileStore().save(profile)
    for args in (["profiles", "list"], ["profiles", "show", "ball"]):
        output = run(*args).stdout
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output and "\r" not in output
        assert "a dog\\x1b[2J\\x07 \\u202egod a\\r" in output, output

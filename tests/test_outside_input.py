"""Nothing lost, nothing forged on the newer paths: many outputs of one run, batch folders, rescue files,
text from outside shown on a terminal, line splitting, the model loaded once per batch, big files, imports."""

import errno
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from helpers import EXAMPLE_INPUT, error_line, rewrite, run, with_metadata
from huggingface_hub import constants as hub_constants
from PIL import Image

from imagic_lora import ProfileStore, files, models
from imagic_lora.api import read_prompts
from imagic_lora.batch import read_batch
from imagic_lora.images import file_sha256
from imagic_lora.outputs import OutputNames
from imagic_lora.store import read_profile_file
from imagic_lora.text import escape_controls, text_lines

TINY = ("--model", "builtin:tiny", "--embedding-steps", "1", "--lora-steps", "1")


@pytest.fixture
def stored(trained):
    ProfileStore().save(trained)
    return trained


def photo_batch(folder: Path, names=("a", "b")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image = Image.open(EXAMPLE_INPUT).convert("RGB")
        image.putpixel((0, 0), (i * 40, 0, 0))
        image.save(folder / f"{name}.png")
    lines = ["name,image,prompt", *(f"{name},{name}.png,a red ball" for name in names)]
    (folder / "batch.csv").write_text("\n".join(lines) + "\n")
    return folder / "batch.csv"


# --- 1. one run never overwrites its own outputs -----------------------------------------------------------

@pytest.mark.slow
def test_prompts_whose_names_collide_in_one_run_each_keep_their_files(stored, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("cat\ncat\ncat 2\nCAT!\n")
    result = run("apply", "profile", "ball", "--prompts-file", prompts, "--out", tmp_path / "out", "--no-keep")
    assert result.exit_code == 0, result.output
    printed = result.stdout.split()
    assert len(printed) == 4 and len(set(printed)) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(p).name for p in printed)


def test_alphas_that_print_alike_get_their_own_files(stored, tmp_path):
    result = run("apply", "profile", "ball", "a cat", "--alpha", "0.7", "--alpha", "0.705", "--alpha", "0.7",
                 "--out", tmp_path, "--no-grid")
    assert result.exit_code == 0, result.output
    names = [Path(p).name for p in result.stdout.split()]
    assert names == ["ball_a-cat_a0.70_s0.png", "ball_a-cat_a0.705_s0.png", "ball_a-cat_a0.70_s0-2.png"]
    assert all((tmp_path / name).is_file() for name in names)


def test_a_run_that_fails_late_has_printed_every_file_it_wrote(stored, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    (tmp_path / "out" / "ball_a-dog_a1.00_s0.png").mkdir(parents=True)  # the second prompt's file cannot be written
    result = run("apply", "profile", "ball", "--prompts-file", prompts, "--out", tmp_path / "out", "--no-keep")
    assert result.exit_code == 1 and error_line(result).startswith("Error: cannot write ")
    assert result.stdout == f"{tmp_path / 'out' / 'ball_a-cat_a1.00_s0.png'}\n"
    assert (tmp_path / "out" / "ball_a-cat_a1.00_s0.png").is_file()


def test_output_names_are_handed_out_once_ignoring_case():
    names = OutputNames()
    assert [names.prompt_stem("p", text) for text in ("cat", "cat", "cat 2", "CAT!")] == \
        ["p_cat", "p_cat-2", "p_cat-2-2", "p_cat-3"]
    assert [names.claim("X", ".png"), names.claim("x", ".png"), names.claim("p_cat", ".png")] == \
        ["X.png", "x-2.png", "p_cat.png"]


# --- 2. what a batch folder may replace; rescue when it cannot be written ---------------------------------

@pytest.mark.parametrize("kind", ["garbage", "newer version"])
def test_a_batch_folder_leaves_a_file_it_cannot_read_unless_replace(stored, trained, tmp_path, kind):
    batch = photo_batch(tmp_path / "photos", ["a"])
    out = tmp_path / "shared"
    out.mkdir()
    theirs = out / "a.imagic.safetensors"
    data = b"not a profile" if kind == "garbage" else rewrite(trained.to_bytes(), header={"format_version": "9"})
    theirs.write_bytes(data)
    result = run("train-batch", batch, *TINY, "--out-dir", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (failed,) = [line for line in result.stderr.splitlines() if line.startswith("Failed:")]
    assert failed.startswith(f"Failed: row 2 (a): {theirs} exists and is not a profile this version can read (")
    assert failed.endswith("; it was left alone. Try: --replace to overwrite it, or moving it away")
    assert theirs.read_bytes() == data
    result = run("train-batch", batch, *TINY, "--out-dir", out, "--replace")
    assert result.exit_code == 0, result.output
    assert read_profile_file(theirs).name == "a"


def test_a_batch_folder_file_holding_another_profile_is_not_this_rows(trained, tmp_path):
    batch = photo_batch(tmp_path / "photos", ["a"])
    out = tmp_path / "shared"
    out.mkdir()
    (out / "a.imagic.safetensors").write_bytes(trained.to_bytes())  # profile 'ball' under the name a
    result = run("train-batch", batch, *TINY, "--out-dir", out)
    assert result.exit_code == 1
    assert f"Failed: row 2 (a): {out / 'a.imagic.safetensors'} exists and holds the profile 'ball', not 'a'; it was " \
           "left alone." in result.stderr
    assert read_profile_file(out / "a.imagic.safetensors").name == "ball"


def test_a_full_batch_folder_rescues_the_trained_profile(tmp_path, monkeypatch, isolated_user_dir):
    batch = photo_batch(tmp_path / "photos", ["a"])
    out = tmp_path / "shared"
    original = files.atomic_write

    def full_out_dir(path, data, replace=True):
        if Path(path).parent == out:
            raise files.write_error(Path(path), OSError(errno.ENOSPC, "No space left on device"))
        return original(path, data, replace)

    monkeypatch.setattr(files, "atomic_write", full_out_dir)
    result = run("train-batch", batch, *TINY, "--out-dir", out)
    assert result.exit_code == 1
    (rescued,) = (isolated_user_dir / "rescued").iterdir()
    assert f"Failed: row 2 (a): profile 'a' was trained but not stored (cannot write {out / 'a.imagic.safetensors'}:" \
           f" No space left on device. Try: free some disk space); it is kept in {rescued}." in result.stderr
    assert read_profile_file(rescued).name == "a"


# --- 8. a rescue or log file on a full disk: none rather than an empty one -------------------------------

def test_a_full_disk_leaves_no_empty_rescue_file(tmp_path, monkeypatch):
    written = pathlib.Path.write_bytes

    def disk_full(self, data):
        written(self, b"")  # the file is made, then the disk refuses the bytes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    folders = [tmp_path / "rescued", tmp_path / "cwd"]
    assert files.write_first(folders, "ball-1", ".imagic.safetensors", b"profile") is None
    assert [p for folder in folders for p in folder.iterdir()] == []


def test_a_rescue_file_never_replaces_another(tmp_path):
    first = files.write_first([tmp_path], "ball-1", ".imagic.safetensors", b"first")
    second = files.write_first([tmp_path], "ball-1", ".imagic.safetensors", b"second")
    assert (first.name, second.name) == ("ball-1.imagic.safetensors", "ball-1-2.imagic.safetensors")
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


# --- 3. every line with outside text is escaped --------------------------------------------------------------

def _no_forged_lines(result) -> None:
    assert "\x1b" not in result.output
    forged = [line for line in result.output.splitlines() if line.startswith(("Error: all good", "Error: fake"))]
    assert forged == [], result.output


def test_a_file_name_cannot_forge_an_error_line(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "evil\nError: all good.safetensors").write_bytes(b"junk")
    result = run("profiles", "import", folder)
    assert result.exit_code == 1
    _no_forged_lines(result)
    assert "Refused: evil\\nError: all good.safetensors: " in result.stderr
    result = run("train", "x", folder / "evil\nError: all good.safetensors", "--prompt", "a ball", *TINY)
    _no_forged_lines(result)
    directory = tmp_path / "pics\nError: all good"
    directory.mkdir()
    result = run("train", "x", directory, "--prompt", "a ball")  # click's own usage error names the path
    assert result.exit_code == 2
    _no_forged_lines(result)


def test_a_user_path_with_control_characters_is_shown_escaped(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("profiles", "list", env={"IMAGIC_LORA_USER_PATH": f"{afile}/\x1b[2J\nError: fake"})
    assert result.exit_code == 1
    _no_forged_lines(result)
    assert error_line(result).startswith(f"Error: cannot keep the profile store in {afile}/\\x1b[2J\\nError: fake")


def test_a_shared_profile_cannot_write_to_the_terminal_through_its_base_model(trained, tmp_path):
    path = tmp_path / "shared.imagic.safetensors"
    path.write_bytes(with_metadata(trained.to_bytes(), base_model="/nowhere/\x1b[2J\nError: fake.safetensors"))
    result = run("apply", "file", path, "a cat", "--out", tmp_path / "out")
    assert result.exit_code == 1
    _no_forged_lines(result)
    assert "\\x1b[2J\\nError: fake.safetensors" in error_line(result)


def test_escape_controls_keeps_printable_text_of_any_script():
    assert escape_controls("un chien 犬 ✓") == "un chien 犬 ✓"
    assert escape_controls("a\u2028b\x0cc\u202ed\x00") == "a\\u2028b\\x0cc\\u202ed\\x00"


# --- 4. lines end at \n (and \r\n) only ------------------------------------------------------------------------

def test_unicode_line_separators_stay_inside_their_line(tmp_path):
    assert text_lines("a\u2028b\x0cc\r\nd\re\n") == ["a\u2028b\x0cc", "d\re"]
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text('{"name": "a", "image": "a.png", "prompt": "a dog\u2028on grass"}\n'
                     '{"name": "b", "image": "b.png", "prompt": "a cat"}\n', encoding="utf-8")
    rows = read_batch(jsonl)
    assert [(r.number, r.name, r.prompt, r.problem) for r in rows] == \
        [(1, "a", "a dog\u2028on grass", None), (2, "b", "a cat", None)]
    csv_file = tmp_path / "batch.csv"
    csv_file.write_text("name,image,prompt\na,a.png,a dog\u2028on grass\x0c!\n", encoding="utf-8")
    assert [(r.number, r.prompt) for r in read_batch(csv_file)] == [(2, "a dog\u2028on grass\x0c!")]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\u2028jumping\na cat\x0csitting\r\n", encoding="utf-8")
    assert read_prompts(prompts) == ["a dog\u2028jumping", "a cat\x0csitting"]


# --- 7. the model is loaded, or refused, once per batch, without hub retries -----------------------------

def test_a_model_that_cannot_load_stops_the_batch_once(tmp_path, monkeypatch):
    batch = photo_batch(tmp_path / "photos", ["a", "b", "c"])
    calls = []
    original = models._load_pipeline
    monkeypatch.setattr(models, "_load_pipeline", lambda *args: calls.append(args) or original(*args))
    result = run("train-batch", batch, "--model", "nobody/no-such-model")
    assert result.exit_code == 1 and len(calls) == 1
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "Error: 'nobody/no-such-model' is not in the local model cache and the hub is switched off "
        "(HF_HUB_OFFLINE). Try: a local diffusers folder or .safetensors file, or --model builtin:tiny offline"]


def test_an_unreachable_hub_is_asked_once_without_retries(image_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    probes = []

    def no_route(address, timeout=None, *args, **kwargs):
        probes.append(address)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    start = time.monotonic()
    result = run("train", "x", image_path, "--prompt", "a ball", "--model", "nobody/no-such-model")
    assert time.monotonic() - start < 30 and len(probes) == 1
    assert error_line(result) == (
        "Error: 'nobody/no-such-model' is not in the local model cache and the hub (huggingface.co) cannot be "
        "reached: Network is unreachable. Try: a local diffusers folder or .safetensors file, or --model "
        "builtin:tiny offline")
    assert "Retrying" not in result.output


def test_a_model_name_that_cannot_exist_is_refused_without_asking_anyone(image_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the hub was asked"))
    result = run("train", "x", image_path, "--prompt", "a ball", "--model", "my model!!")
    assert error_line(result) == ("Error: model 'my model!!' is neither a hub id (owner/name), a local folder nor "
                                  "a checkpoint file. Try: --model builtin:tiny to try the tool offline")


# --- 9. hashing an image streams it -------------------------------------------------------------------------

def test_hashing_a_huge_image_file_keeps_memory_bounded(tmp_path):
    path = tmp_path / "tail.png"
    Image.open(EXAMPLE_INPUT).save(path)
    with open(path, "ab") as handle:
        handle.truncate(path.stat().st_size + 96 * 2**20)  # a 96 MiB tail of zeros
    tracemalloc.start()
    try:
        digest = file_sha256(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"hashing held {peak / 2**20:.0f} MiB"
    assert len(digest) == 64


# --- 10. a folder holding two files of one profile --------------------------------------------------------

def test_import_replace_never_lets_one_file_of_a_folder_replace_another(trained, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    first = trained.to_bytes()
    (folder / "1.imagic.safetensors").write_bytes(first)
    (folder / "2.imagic.safetensors").write_bytes(with_metadata(first, source_prompt="another photo"))
    result = run("profiles", "import", folder, "--replace")
    assert result.exit_code == 1
    assert "Imported: 1.imagic.safetensors: profile 'ball'" in result.stdout
    assert ("Refused: 2.imagic.safetensors: profile 'ball' was imported from 1.imagic.safetensors just before, "
            "with other contents. Try: importing this file alone with --name NEW") in result.stderr
    assert ProfileStore().get("ball").metadata == trained.metadata
    assert run("profiles", "import", folder / "2.imagic.safetensors", "--replace").exit_code == 0


# --- 11. older holes: path, verify on a full disk, verify on text that is not UTF-8 ------------------------

def test_profiles_path_prints_the_path_even_when_no_store_can_be_opened(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("profiles", "path", env={"IMAGIC_LORA_USER_PATH": str(afile)})
    assert result.exit_code == 0 and result.stdout == f"{afile / 'profiles.db'}\n"


def test_verify_names_a_row_whose_text_is_not_utf8(stored):
    with sqlite3.connect(ProfileStore().path) as conn:
        conn.execute("update profile_data set data = cast(x'fffe41' as text) where name = 'ball'")
        conn.execute("update profiles set source_prompt = cast(x'ff41' as text) where name = 'ball'")
    result = run("profiles", "verify")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "Problem: profile 'ball': its data is str, not a profile file"
    listed = run("profiles", "list")
    assert listed.exit_code == 0 and listed.stdout.startswith('ball: "\ufffdA"')


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs (needs root, as on CI); filled by the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_store_on_a_full_disk_still_lists_and_verifies(stored, full_disk, trained):
    env = {"IMAGIC_LORA_USER_PATH": str(full_disk)}
    assert run("profiles", "import", _exported(trained, full_disk.parent), env=env).exit_code == 0
    with open(full_disk / "fill", "wb", buffering=0) as fill:  # unbuffered: nothing left to flush at close
        try:
            while True:
                fill.write(b"\0" * 65536)
        except OSError:
            pass
    verify = run("profiles", "verify", env=env)
    assert verify.exit_code == 0 and verify.stdout == "OK: integrity check passed, 1 profile(s) verified\n"
    assert run("profiles", "list", env=env).stdout.startswith("ball: ")
    removed = run("profiles", "rm", "ball", env=env)
    assert error_line(removed) == (f"Error: no space left to write the profile store {full_disk / 'profiles.db'}; "
                                   "nothing was changed. Try: free some disk space")


def _exported(profile, folder: Path) -> Path:
    path = folder / "ball.imagic.safetensors"
    path.write_bytes(profile.to_bytes())
    return path


# --- a broken pipe is not a crash -----------------------------------------------------------------------------

def test_a_closed_pipe_ends_the_command_without_a_crash_log(stored, isolated_user_dir):
    process = subprocess.Popen([sys.executable, "-m", "imagic_lora.cli", "profiles", "show", "ball"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "IMAGIC_LORA_USER_PATH": str(isolated_user_dir)})
    process.stdout.close()  # the reader is gone before the first line is written
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "unexpected" not in err and "Traceback" not in err, err
    assert not (isolated_user_dir / "logs").exists()

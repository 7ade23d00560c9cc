"""train-batch: rows from CSV/JSONL, skipped when done, failures isolated, split over processes by accelerate."""

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXAMPLE_INPUT, error_line, run, store_snapshot, with_metadata_fields
from PIL import Image

from imagic_lora import api
from imagic_lora.batch import read_batch
from imagic_lora.errors import InvalidConfig, TrainingDiverged
from imagic_lora.models import BaseModel

FAST = ("--model", "builtin:tiny", "--embedding-steps", "2", "--lora-steps", "2")
NAMES = ["a", "b", "c", "d", "e"]


def make_photos(folder: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    """Five distinct photos and one unreadable image, listed in photos.csv (the bad one is row 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES):
        image = Image.open(EXAMPLE_INPUT).convert("RGB")
        image.putpixel((0, 0), (i * 40, 0, 0))  # a different file, so a different sha256
        image.save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    rows = rows or [("a", "a.png"), ("b", "b.png"), ("broken", "broken.png"), ("c", "c.png"), ("d", "d.png"),
                    ("e", "e.png")]
    lines = ["name,image,prompt", *(f'{name},{image},"a red ball, on grass"' for name, image in rows)]
    (folder / "photos.csv").write_text("\n".join(lines) + "\n")
    return folder / "photos.csv"


def stored_names() -> list[str]:
    return [name for name, _ in store_snapshot()]


# --- the batch file ------------------------------------------------------------------------------------------

def test_csv_rows_resolve_images_next_to_the_file_and_name_bad_rows(tmp_path):
    batch = tmp_path / "b.csv"
    batch.write_text('prompt,name,image\n"a dog, sitting",dog,dog.png\nx,bad name,x.png\nx,dog,y.png\n'
                     "x,cat\nx,cow,/abs/cow.png\n\n")
    rows = read_batch(batch)
    assert [(r.number, r.name) for r in rows] == [(2, "dog"), (3, "bad name"), (4, "dog"), (5, ""), (6, "cow")]
    assert rows[0].problem is None and rows[0].image == tmp_path / "dog.png" and rows[0].prompt == "a dog, sitting"
    assert "invalid profile name" in rows[1].problem
    assert "uses the name 'dog' of row 2" in rows[2].problem
    assert "has 2 fields, the header 3" in rows[3].problem
    assert rows[4].problem is None and rows[4].image == Path("/abs/cow.png")


def test_jsonl_rows(tmp_path):
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"name": "dog", "image": "dog.png", "prompt": "a dog"}\n\nnot json\n'
                     '{"name": "cat", "image": "cat.png"}\n{"name": "cow", "image": "c.png", "prompt": ""}\n')
    rows = read_batch(batch)
    assert [(r.number, r.problem is None) for r in rows] == [(1, True), (3, False), (4, False), (5, False)]
    assert "not a JSON object" in rows[1].problem
    assert "needs exactly the keys" in rows[2].problem
    assert "--prompt must describe the image" in rows[3].problem


@pytest.mark.parametrize(("name", "content", "message"), [
    ("b.txt", "name,image,prompt\n", "must be .csv or .jsonl"),
    ("b.csv", "", "has no rows"),
    ("b.csv", "name,image,promt\ndog,dog.png,a dog\n", "it needs exactly name,image,prompt"),
    ("b.csv", "name,image,prompt,notes\n", "it needs exactly name,image,prompt"),
    ("b.csv", b"name,image,prompt\ndog,d\xff.png,x\n", "not UTF-8 text (line 2)"),
    ("missing.csv", None, "not found"),
])
def test_an_unreadable_batch_file_is_one_error(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidConfig, match=re.escape(message)):
        read_batch(path)
    result = run("train-batch", path, *FAST)
    assert result.exit_code == 1 and error_line(result).startswith("Error: ") and message in error_line(result)
    assert store_snapshot() == []


# --- one process -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_bad_row_fails_alone_and_a_rerun_trains_nothing_again(tmp_path, monkeypatch):
    batch = make_photos(tmp_path / "photos")
    loads = []
    real_load = api.load_model
    monkeypatch.setattr("imagic_lora.models.load_model", lambda *a: loads.append(a) or real_load(*a))
    result = run("train-batch", batch, *FAST)
    assert result.exit_code == 1
    assert stored_names() == NAMES
    assert len(loads) == 1  # one model for all rows
    failures = [line for line in result.stderr.splitlines() if line.startswith("Failed:")]
    assert len(failures) == 1 and failures[0].startswith("Failed: row 4 (broken): cannot read image")
    assert "6 rows: 5 done, 0 skipped, 1 failed" in result.stdout
    assert error_line(result).startswith("Error: 1 of 6 rows failed (row 4;")

    before = store_snapshot()
    trained, fingerprinted = [], []
    monkeypatch.setattr(api, "make_profile", lambda *a, **k: trained.append(a) or pytest.fail("retrained"))
    real_fingerprint = BaseModel.fingerprint
    monkeypatch.setattr(BaseModel, "fingerprint", lambda self: fingerprinted.append(1) or real_fingerprint(self))
    again = run("train-batch", batch, *FAST)
    assert again.exit_code == 1 and "0 done, 5 skipped, 1 failed" in again.stdout
    assert trained == [] and store_snapshot() == before
    assert len(fingerprinted) == 1  # the weights are walked once per batch, not once per skipped row


@pytest.mark.slow
def test_other_settings_are_refused_without_replace_and_retrained_with_it(tmp_path):
    batch = make_photos(tmp_path / "photos", [("a", "a.png"), ("b", "b.png")])
    assert run("train-batch", batch, *FAST).exit_code == 0
    before = dict(store_snapshot())
    changed = run("train-batch", batch, *FAST, "--seed", "1")
    assert changed.exit_code == 1 and "0 done, 0 skipped, 2 failed" in changed.stdout
    assert "exists, made from another image or with other settings. Try: --replace" in changed.stderr
    assert dict(store_snapshot()) == before
    replaced = run("train-batch", batch, *FAST, "--seed", "1", "--replace")
    assert replaced.exit_code == 0 and "2 done" in replaced.stdout
    assert all(data != before[name] for name, data in store_snapshot())
    assert run("train-batch", batch, *FAST, "--seed", "1").stdout.count("skipped") == 1  # "2 skipped" in summary


def test_a_diverged_row_is_reported_and_the_batch_goes_on(tmp_path, monkeypatch):
    batch = make_photos(tmp_path / "photos", [("a", "a.png"), ("b", "b.png"), ("c", "c.png")])
    real = api.make_profile

    def diverge_on_b(name, *args, **kwargs):
        if name == "b":
            raise TrainingDiverged("stage 1/2 embedding: loss became nan at step 2; nothing was saved. Try: a lower "
                                   "--embedding-lr")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(api, "make_profile", diverge_on_b)
    result = run("train-batch", batch, *FAST)
    assert result.exit_code == 1 and stored_names() == ["a", "c"]
    assert "Failed: row 3 (b): stage 1/2 embedding: loss became nan" in result.stderr


def test_out_dir_writes_one_file_per_row_and_import_dir_stores_them(tmp_path):
    batch = make_photos(tmp_path / "photos", [("a", "a.png"), ("b", "b.png")])
    out = tmp_path / "shared"
    result = run("train-batch", batch, *FAST, "--out-dir", out)
    assert result.exit_code == 0 and store_snapshot() == []
    assert sorted(p.name for p in out.iterdir()) == ["a.imagic.safetensors", "b.imagic.safetensors"]
    again = run("train-batch", batch, *FAST, "--out-dir", out)
    assert "0 done, 2 skipped" in again.stdout
    imported = run("profiles", "import", out)
    assert imported.exit_code == 0 and stored_names() == ["a", "b"]
    assert "2 files: 2 imported, 0 skipped, 0 refused" in imported.stdout


# --- profiles import DIR ------------------------------------------------------------------------------------

def test_import_dir_with_good_duplicate_and_hostile_files(tmp_path, trained):
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = trained.to_bytes()
    (folder / "ball.imagic.safetensors").write_bytes(good)
    (folder / "other.imagic.safetensors").write_bytes(trained.renamed("other").to_bytes())
    (folder / "random.safetensors").write_bytes(os.urandom(5000))
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (folder / "ball.imagic.safetensors.part").write_bytes(b"half written")  # ignored: not a .safetensors file
    (folder / "notes.txt").write_text("ignored")
    assert run("profiles", "import", folder / "other.imagic.safetensors").exit_code == 0
    assert run("profiles", "import", folder / "ball.imagic.safetensors", "--name", "x").exit_code == 0
    before = store_snapshot()

    result = run("profiles", "import", folder)
    assert result.exit_code == 1
    assert "Imported: ball.imagic.safetensors: profile 'ball'" in result.stdout
    assert "Skipped: other.imagic.safetensors: profile 'other' is stored already, identical" in result.stdout
    assert "Refused: random.safetensors:" in result.stderr and "Refused: truncated.safetensors:" in result.stderr
    assert "4 files: 1 imported, 1 skipped, 2 refused" in result.stdout
    assert error_line(result) == "Error: 2 file(s) refused (reasons above); the others were imported"
    assert sorted(stored_names()) == ["ball", "other", "x"]
    assert [row for row in store_snapshot() if row[0] != "ball"] == before


def test_import_dir_refuses_a_changed_profile_unless_replace(tmp_path, trained):
    folder = tmp_path / "incoming"
    folder.mkdir()
    assert run("profiles", "import", _write(folder / "ball.safetensors", trained.to_bytes())).exit_code == 0
    changed = with_metadata_fields(trained, source_prompt="other")
    _write(folder / "ball.safetensors", changed.to_bytes())
    before = store_snapshot()
    refused = run("profiles", "import", folder)
    assert refused.exit_code == 1 and "exists with other contents. Try: --replace" in refused.stderr
    assert store_snapshot() == before
    replaced = run("profiles", "import", folder, "--replace")
    assert replaced.exit_code == 0 and "1 imported" in replaced.stdout
    assert run("profiles", "show", "ball").stdout.count("source_prompt: other") == 1


def test_import_dir_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("profiles", "import", empty)
    assert result.exit_code == 1 and "holds no .safetensors files" in error_line(result)
    named = run("profiles", "import", empty, "--name", "x")
    assert named.exit_code == 1 and "--name renames one file, not a folder" in error_line(named)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- apply --prompts-file ----------------------------------------------------------------------------------------

def test_prompts_file_edits_every_prompt_with_one_model_load(tmp_path, trained, monkeypatch):
    from imagic_lora.store import ProfileStore

    ProfileStore().save(trained)
    prompts = tmp_path / "edits.txt"
    prompts.write_text("# edits for the ball\na blue ball\n\na blue ball!\na red cube\n")
    loads = []
    real_load = api.load_model
    monkeypatch.setattr(api, "load_model", lambda *a: loads.append(a) or real_load(*a))
    result = run("apply", "profile", "ball", "--prompts-file", prompts, "--steps", "2", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["ball_a-blue-ball-2_a1.00_s0.png", "ball_a-blue-ball_a1.00_s0.png", "ball_a-red-cube_a1.00_s0.png"]
    assert len(loads) == 1
    single = run("apply", "profile", "ball", "a red cube", "--steps", "2", "--out", tmp_path / "single")
    assert single.exit_code == 0
    assert (tmp_path / "single" / names[2]).read_bytes() == (tmp_path / "out" / names[2]).read_bytes()


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    ("# only a comment\n\n", "has no prompts"),
    (b"a dog\n\xff\n", "not UTF-8 text (line 2)"),
])
def test_a_bad_prompts_file_is_one_error(tmp_path, trained, content, message):
    path = tmp_path / "edits.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    profile_file = _write(tmp_path / "ball.safetensors", trained.to_bytes())
    result = run("apply", "file", profile_file, "--prompts-file", path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and message in error_line(result) and error_line(result).startswith("Error: ")
    assert not (tmp_path / "out").exists()


def test_apply_needs_a_prompt_or_a_prompts_file(tmp_path, trained):
    result = run("apply", "file", _write(tmp_path / "ball.safetensors", trained.to_bytes()))
    assert result.exit_code == 1 and "give an edit PROMPT or --prompts-file" in error_line(result)


# --- several processes with accelerate ---------------------------------------------------------------------------

LAUNCH_OPTIONS = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no")


def accelerate(*args, env, **popen):
    """``accelerate launch`` with 2 processes: on a machine without CUDA they run on the CPU over gloo."""
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", *LAUNCH_OPTIONS,
               "-m", "imagic_lora.cli", "train-batch", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def launch(*args, env):
    """The documented ``imagic-lora launch``, the same launcher run inside imagic-lora."""
    command = [sys.executable, "-m", "imagic_lora.cli", "launch", *LAUNCH_OPTIONS, "train-batch", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def launch_env(isolated_user_dir):
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (torchrun starts them in their own process groups)."""
    import psutil

    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=30)
    process.communicate()


def _rows_in_store(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return [row[0] for row in conn.execute("select name from profiles order by name")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_two_processes_train_each_row_once_and_report_the_bad_one(tmp_path, launch_env, isolated_user_dir):
    batch = make_photos(tmp_path / "photos")
    finished = launch(batch, *FAST, env=launch_env)
    out, err = finished.stdout, finished.stderr
    assert finished.returncode == 1 and "Traceback" not in err and "ChildFailedError" not in err, err
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [
        "Error: 1 of 6 rows failed (row 4; reasons above). Try: fixing them and running the same command again: "
        "finished rows are skipped"]
    assert "6 rows on 2 processes: 5 done, 0 skipped, 1 failed" in out, err
    assert stored_names() == NAMES
    done = [line for line in err.splitlines() if line.startswith("Done: ")]
    assert sorted(line.split("(")[1].split(")")[0] for line in done) == NAMES  # each row once, by one process
    failures = [line for line in err.splitlines() if line.startswith("Failed:")]
    assert len(failures) == 1 and failures[0].startswith("Failed: row 4 (broken): cannot read image")
    assert "Error: 1 of 6 rows failed (row 4;" in err


@pytest.mark.slow
def test_a_bad_batch_file_or_model_under_launch_is_one_error_line(tmp_path, launch_env):
    bad = tmp_path / "bad.csv"
    bad.write_text("nam,image\n")
    batch = make_photos(tmp_path / "photos")
    for args, expected in (([bad], "Error: batch file "), ([batch, "--model", "nobody/nothing"], "Error: 'nobody/")):
        finished = launch(*args, env={**launch_env, "HF_HUB_OFFLINE": "1"})
        errors = [line for line in finished.stderr.splitlines() if line.startswith("Error:")]
        assert finished.returncode == 1 and len(errors) == 1 and errors[0].startswith(expected), finished.stderr
        assert "Traceback" not in finished.stderr and "Failed: row" not in finished.stderr


@pytest.mark.slow
def test_a_killed_batch_finishes_on_rerun_without_retraining(tmp_path, launch_env, isolated_user_dir):
    batch = make_photos(tmp_path / "photos")
    db = isolated_user_dir / "profiles.db"
    slow = ("--model", "builtin:tiny", "--embedding-steps", "2", "--lora-steps", "100")  # seconds per row
    process = accelerate(batch, *slow, env=launch_env)
    deadline = time.monotonic() + 300
    while len(_rows_in_store(db)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    kill_all(process)
    finished = _rows_in_store(db)
    assert 2 <= len(finished) < 5, "the batch was not killed mid-way"
    before = {name: data for name, data in store_snapshot() if name in finished}

    out, err = accelerate(batch, *slow, env=launch_env).communicate(timeout=600)
    assert f"{5 - len(finished)} done, {len(finished)} skipped, 1 failed" in out, err
    skipped = sorted(line.split("(")[1].split(")")[0] for line in err.splitlines() if line.startswith("Skipped: "))
    assert skipped == sorted(finished)
    assert stored_names() == NAMES
    assert {name: data for name, data in store_snapshot() if name in finished} == before


@pytest.mark.slow
def test_two_processes_write_files_to_out_dir(tmp_path, launch_env):
    batch = make_photos(tmp_path / "photos", [(n, f"{n}.png") for n in NAMES])
    out_dir = tmp_path / "shared"
    out, err = accelerate(batch, *FAST, "--out-dir", out_dir, env=launch_env).communicate(timeout=600)
    assert "5 rows on 2 processes: 5 done" in out, err
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{n}.imagic.safetensors" for n in NAMES]
    assert store_snapshot() == []
    assert json.loads(run("profiles", "list", "--json").stdout) == []


@pytest.mark.slow
def test_bench_batch_times_one_and_two_processes_on_the_same_rows(tmp_path):
    result = run("bench", "batch", "--rows", "2", "--model", "builtin:tiny", "--no-per-row", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "batch.json").read_text())
    assert [v["processes"] for v in results["variants"]] == [1, 2]
    assert all(v["seconds"] > 0 and v["rows_per_hour"] == pytest.approx(2 * 3600 / v["seconds"], rel=0.01)
               for v in results["variants"])
    assert "train-batch, 2 processes" in result.stdout and "rows/hour" in result.stdout

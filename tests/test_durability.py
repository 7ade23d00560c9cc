"""The store under SIGKILL and concurrent writers, with real processes (bounded in count and time)."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import EXAMPLE_PROFILE, PROMPT, run, with_metadata_fields
from store_worker import IMPORTS, WRITES

from imagic_lora import ImagicError, ProfileStore
from imagic_lora import store as store_module

WORKER = Path(__file__).with_name("store_worker.py")
KILLS = 12
WRITERS = 8


def start_worker(mode, db, number):
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(db), str(EXAMPLE_PROFILE), str(number)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def assert_store_sound(db) -> int:
    store = ProfileStore(db)
    count, problems = store.verify()
    assert problems == []
    for row in store.list():
        assert store.get(row["name"]).name == row["name"]
    return count


@pytest.mark.slow
def test_the_store_survives_sigkill_at_random_points(tmp_path):
    db = tmp_path / "profiles.db"
    rng = random.Random(0)
    operations = 0
    for kill in range(KILLS):
        worker = start_worker("churn", db, kill)
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
        time.sleep(rng.uniform(0.0, 0.5))
        worker.send_signal(signal.SIGKILL)
        output, _ = worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        operations += output.count("op ")
        assert_store_sound(db)
    print(f"{KILLS} SIGKILLs survived during {operations} completed writes")
    assert operations > KILLS, "the kills must land while writes are going on"


@pytest.mark.slow
def test_concurrent_writers_lose_nothing_and_never_see_a_locked_database(tmp_path):
    db = tmp_path / "profiles.db"  # not created yet: the writers also race on the first migration
    workers = [start_worker("writer", db, i) for i in range(WRITERS)]
    for worker in workers:
        _, errors = worker.communicate(timeout=240)
        assert worker.returncode == 0, errors
        assert "locked" not in errors
    expected = {f"w{i}-{j}" for i in range(WRITERS) for j in range(WRITES)}
    expected |= {f"i{i}-{j}" for i in range(WRITERS) for j in range(IMPORTS)}
    assert {row["name"] for row in ProfileStore(db).list()} == expected
    assert assert_store_sound(db) == len(expected)


def wait_for(process, text: bytes, limit_s: float = 300) -> None:
    seen, deadline = b"", time.monotonic() + limit_s
    while text not in seen:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk and time.monotonic() < deadline, seen[-500:]
        seen += chunk


@pytest.mark.slow
@pytest.mark.parametrize("stage", [b"stage 1/2 embedding", b"stage 2/2 LoRA"])
def test_killing_training_leaves_the_store_as_it_was(tmp_path, stage, trained, isolated_user_dir):
    ProfileStore().save(trained)
    before = ProfileStore().get_bytes("ball")
    image = tmp_path / "in.png"
    image.write_bytes((Path(__file__).parent.parent / "profiles" / "example-input.png").read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "imagic_lora.cli", "train", "new", str(image), "--prompt", PROMPT,
         "--model", "builtin:tiny", "--embedding-steps", "40", "--lora-steps", "40"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_for(process, stage)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "training must still be running when killed"
    assert [row["name"] for row in ProfileStore().list()] == ["ball"]
    assert ProfileStore().get_bytes("ball") == before
    assert ProfileStore().verify() == (1, [])


def test_verify_reports_a_damaged_profile(trained, tmp_path):
    store = ProfileStore()
    store.save(trained)
    assert store.verify() == (1, [])
    store.conn.execute("update profile_data set data = substr(data, 1, 5000) where name = 'ball'")
    result = run("profiles", "verify")
    assert result.exit_code == 1
    assert "Problem: profile 'ball': its data does not match its stored checksum" in result.stderr


def test_backup_is_a_consistent_copy(trained, tmp_path):
    ProfileStore().save(trained)
    target = tmp_path / "backup.db"
    result = run("profiles", "backup", target)
    assert result.exit_code == 0, result.output
    assert ProfileStore(target).get_bytes("ball") == ProfileStore().get_bytes("ball")
    result = run("profiles", "backup", target)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {target} already exists. Try: another file name, or --replace"
    assert run("profiles", "backup", target, "--replace").exit_code == 0
    assert run("profiles", "verify").stdout.strip() == "OK: integrity check passed, 1 profile(s) verified"


def test_rename_holds_the_write_lock_from_its_read_to_its_write(trained, monkeypatch):
    """A writer arriving between rename's read and its write must wait, or its profile would be lost."""
    store = ProfileStore()
    store.save(trained.renamed("a"))
    real_with_name = store_module.with_name
    outcomes = []

    def renamed_with_a_concurrent_writer(data, name, source):
        other = sqlite3.connect(store.path, timeout=0.1)
        try:
            other.execute("update profiles set source_prompt = 'changed meanwhile' where name = 'a'")
            other.commit()
            outcomes.append("written")
        except sqlite3.OperationalError as ex:
            outcomes.append(str(ex))
        finally:
            other.close()
        return real_with_name(data, name, source)

    monkeypatch.setattr(store_module, "with_name", renamed_with_a_concurrent_writer)
    store.rename("a", "b")
    assert outcomes == ["database is locked"]
    assert [row["name"] for row in store.list()] == ["b"]


RACES = 200


def _race(*actions):
    """Run ``actions`` at once from their own threads (each with its own connection); their outcomes in order."""
    barrier = threading.Barrier(len(actions))
    outcomes = [None] * len(actions)

    def runner(index, action):
        store = ProfileStore()
        barrier.wait()
        try:
            action(store)
            outcomes[index] = "ok"
        except ImagicError as ex:
            outcomes[index] = type(ex).__name__

    threads = [threading.Thread(target=runner, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


@pytest.mark.slow
def test_rename_racing_import_and_rm_never_loses_or_resurrects_a_profile(trained, tmp_path):
    store = ProfileStore()
    original = trained.renamed("a")
    imported_prompt = "the imported copy"
    newer = tmp_path / "newer.imagic.safetensors"
    newer.write_bytes(with_metadata_fields(original, source_prompt=imported_prompt).to_bytes())
    for _ in range(RACES):
        for name in ("a", "b"):
            if store.exists(name):
                store.remove(name)
        store.save(original)
        _race(lambda s: s.rename("a", "b"), lambda s: s.import_file(newer, replace=True))
        prompts = {row["name"]: row["source_prompt"] for row in store.list()}
        assert imported_prompt in prompts.values(), f"the imported profile was lost: {prompts}"

        store.remove(next(iter(prompts)))
        for name in ("a", "b"):
            if store.exists(name):
                store.remove(name)
        store.save(original)
        renamed, removed = _race(lambda s: s.rename("a", "b"), lambda s: s.remove("a"))
        names = [row["name"] for row in store.list()]
        assert (renamed, removed) in (("ok", "ProfileNotFound"), ("ProfileNotFound", "ok")), (renamed, removed)
        assert names == (["b"] if renamed == "ok" else []), f"rename {renamed}, rm {removed}: left {names}"


def test_a_write_that_must_not_replace_leaves_a_file_made_meanwhile_alone(tmp_path):
    from imagic_lora.files import atomic_write

    path = tmp_path / "a.bin"
    assert atomic_write(path, b"first", replace=False) == path and path.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", replace=False)
    assert path.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    atomic_write(path, b"third")
    assert path.read_bytes() == b"third"


def test_a_batch_folder_keeps_a_profile_file_made_while_training_and_rescues_the_new_one(trained, tmp_path,
                                                                                        isolated_user_dir):
    from imagic_lora.batch import FolderTarget
    from imagic_lora.errors import ProfileNotSaved
    from imagic_lora.store import read_profile_file

    target = FolderTarget(tmp_path / "out")
    theirs = target.path(trained.name)
    theirs.parent.mkdir()
    theirs.write_bytes(b"another process's profile")  # appeared after the batch found no file there
    with pytest.raises(ProfileNotSaved, match="left alone") as caught:
        target.save(trained, replace=False)
    assert theirs.read_bytes() == b"another process's profile"
    (rescued,) = (isolated_user_dir / "rescued").iterdir()
    assert str(rescued) in str(caught.value)
    assert torch.equal(read_profile_file(rescued).e_opt, trained.e_opt)
    assert target.save(trained, replace=True) == f"written to {theirs}"
    assert read_profile_file(theirs).name == trained.name

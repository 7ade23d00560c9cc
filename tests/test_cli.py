"""The CLI end to end on the built-in model, as a user runs it."""

import json
import sqlite3

import numpy as np
from helpers import PROMPT, pixels, run, store_snapshot
from PIL import Image

from imagic_lora import TrainConfig
from imagic_lora.paths import user_dir

FAST = ["--embedding-steps", 3, "--lora-steps", 4, "--lora-lr", 1e-2, "--model", "builtin:tiny"]
APPLY = ["--steps", 3]


def test_train_list_show_apply_export_import_apply_file(image_path, tmp_path):
    # train
    result = run("train", "ball", image_path, "--prompt", PROMPT, *FAST)
    assert result.exit_code == 0, result.output
    assert "Saved profile 'ball'" in result.stdout
    assert "stage 2/2 LoRA" in result.stderr  # progress bars go to stderr

    with sqlite3.connect(user_dir() / "profiles.db") as conn:
        name, prompt, model, resolution = conn.execute(
            "select name, source_prompt, base_model, resolution from profiles").fetchone()
    assert (name, prompt, model, resolution) == ("ball", PROMPT, "builtin:tiny", 64)

    # list and show
    result = run("profiles", "list")
    assert result.exit_code == 0 and result.stdout.startswith(f'ball: "{PROMPT}"  builtin:tiny  64px')
    shown = json.loads(run("profiles", "show", "ball", "--json").stdout)
    assert shown["metadata"]["training"]["lora_steps"] == 4
    defaults = TrainConfig()
    lora = {"rank": defaults.rank, "alpha": defaults.lora_alpha, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert shown["metadata"]["lora"] == lora
    assert "base_fingerprint: " in run("profiles", "show", "ball").stdout

    # apply from the store: one PNG per (alpha, seed) plus a grid
    stored = tmp_path / "stored"
    result = run("apply", "profile", "ball", "a blue ball!", "--alpha", 0.6, "--alpha", 0.8, "--seeds", 2,
                 "--start", "noise", "--out", stored, *APPLY)
    assert result.exit_code == 0, result.output
    names = [line.rsplit("/", 1)[-1] for line in result.stdout.splitlines()]
    assert names == ["ball_a-blue-ball_a0.60_s0.png", "ball_a-blue-ball_a0.60_s1.png",
                     "ball_a-blue-ball_a0.80_s0.png", "ball_a-blue-ball_a0.80_s1.png", "ball_a-blue-ball_grid.png"]
    info = Image.open(stored / "ball_a-blue-ball_a0.80_s1.png").info
    params = json.loads(info["imagic-lora"])
    assert params["model"] == "builtin:tiny" and params["source_prompt"] == PROMPT
    assert (params["profile"], params["prompt"], params["alpha"], params["seed"], params["steps"],
            params["guidance"], params["start"], params["keep"]) == ("ball", "a blue ball!", 0.8, 1, 3, 2.0, "noise",
                                                                     0.25)
    assert not np.array_equal(pixels(stored / names[0]), pixels(stored / names[1])), "seeds must differ"
    assert not np.array_equal(pixels(stored / names[0]), pixels(stored / names[2])), "alphas must differ"

    # export, import under a new name, apply the shared file: same pixels
    shared = tmp_path / "ball.imagic.safetensors"
    assert run("profiles", "export", "ball", shared).exit_code == 0
    result = run("profiles", "import", shared, "--name", "buddy")
    assert result.exit_code == 0 and "Imported profile 'buddy'" in result.stdout
    assert [row[0] for row in store_snapshot()] == ["ball", "buddy"]
    from_file = tmp_path / "file"
    result = run("apply", "file", shared, "a blue ball!", "--alpha", 0.6, "--alpha", 0.8, "--seeds", 2,
                 "--start", "noise", "--out", from_file, *APPLY)
    assert result.exit_code == 0, result.output
    for name in names[:-1]:
        assert np.array_equal(pixels(stored / name), pixels(from_file / name)), name

    # rename and remove
    assert run("profiles", "rename", "buddy", "rex").exit_code == 0
    assert run("profiles", "rm", "ball").exit_code == 0
    assert [row[0] for row in store_snapshot()] == ["rex"]
    assert run("profiles", "path").stdout.strip() == str(user_dir() / "profiles.db")


def test_single_image_writes_no_grid_and_model_env_var_is_used(image_path, tmp_path):
    env = {"IMAGIC_LORA_MODEL": "builtin:tiny"}
    result = run("train", "ball", image_path, "--prompt", PROMPT, "--embedding-steps", 1, "--lora-steps", 1, env=env)
    assert result.exit_code == 0, result.output
    result = run("apply", "profile", "ball", "a ball", "--out", tmp_path / "out", *APPLY)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["ball_a-ball_a1.00_s0.png"]


def test_local_diffusers_folder_loads_as_a_model(image_path, tmp_path, tiny):
    folder = tmp_path / "tiny-sd"
    tiny.pipe.save_pretrained(folder)
    result = run("train", "ball", image_path, "--prompt", PROMPT, "--model", folder,
                 "--embedding-steps", 1, "--lora-steps", 1)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("profiles", "show", "ball", "--json").stdout)
    assert shown["base_model"] == str(folder)
    # an SD 1.x model that is not built in: its inversion and apply take the pipeline's guidance, 7.5
    assert shown["metadata"]["inversion"]["guidance"] == 7.5
    result = run("apply", "profile", "ball", "a ball", "--out", tmp_path / "own", "--alpha", 0, *APPLY)
    assert result.exit_code == 0, result.output
    params = json.loads(Image.open(tmp_path / "own" / "ball_a-ball_a0.00_s0.png").info["imagic-lora"])
    assert params["guidance"] == 7.5
    # same weights as the built-in model, so its fingerprint matches and the profile applies there, at the
    # built-in model's own guidance, 2
    result = run("apply", "profile", "ball", "a ball", "--model", "builtin:tiny", "--out", tmp_path, *APPLY)
    assert result.exit_code == 0, result.output
    params = json.loads(Image.open(tmp_path / "ball_a-ball_a1.00_s0.png").info["imagic-lora"])
    assert params["guidance"] == 2.0


def test_the_shipped_example_profile_applies_to_the_built_in_model(tmp_path):
    from helpers import EXAMPLE_PROFILE

    # the example is a format version 1 file (test_inversion.py): it samples from noise and keeps nothing back
    result = run("apply", "file", EXAMPLE_PROFILE, "a blue ball on green grass", "--alpha", 0, "--alpha", 0.7,
                 "--start", "noise", "--no-keep", "--out", tmp_path, *APPLY)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr, "the example must match the built-in model's fingerprint"
    grid = Image.open(tmp_path / "example_a-blue-ball-on-green-grass_grid.png")
    assert grid.size == (2 * 128, 2 * (128 + 14))


def test_checkout_shim_runs_the_cli():
    import subprocess
    import sys

    from helpers import REPO

    done = subprocess.run([sys.executable, "cli.py", "--version"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "imagic-lora, version 0.1.0"

"""The wheel a user installs holds every module and data file, and works from outside the checkout."""

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {"imagic_lora/data/README.md"}  # provenance notes for the repository, not package data


def tracked_package_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "imagic_lora"], cwd=REPO, capture_output=True, text=True, check=True)
    return {line for line in listed.stdout.split() if not line.endswith(".pyc")} - NOT_SHIPPED


@pytest.mark.slow
def test_the_wheel_installs_and_trains_and_applies_outside_the_checkout(tmp_path):
    # 1. build it, offline, and check its contents against the repository
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("imagic_lora-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = tracked_package_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"

    # 2. a fresh venv: the wheel itself, its dependencies borrowed from this environment's site-packages
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)

    # 3. run it as a user would, from a folder outside the checkout
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "profiles" / "example-input.png", work / "ball.png")
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "IMAGIC_LORA_USER_PATH": str(work / "user"),
           "HF_HUB_OFFLINE": "1", "HOME": str(work)}

    def cli(*args):
        done = subprocess.run([str(env_dir / "bin" / "imagic-lora"), *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done.stdout

    where = subprocess.run([python, "-c", "import imagic_lora; print(imagic_lora.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    assert "Usage: imagic-lora" in cli("--help")
    cli("train", "ball", "ball.png", "--prompt", "a red ball", "--model", "builtin:tiny", "--embedding-steps", 2,
        "--lora-steps", 2)
    printed = cli("apply", "profile", "ball", "a blue ball", "--steps", 2, "--out", "out")
    assert (work / "out" / Path(printed.strip()).name).is_file()
    subpackages = "import imagic_lora.bench.edits, imagic_lora.shapes.model"  # what the old wheel left out
    subprocess.run([python, "-c", subpackages], cwd=work, env=env, check=True, capture_output=True)

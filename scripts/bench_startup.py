"""How fast the CLI answers when it runs no model: median wall time of each command at 10 000 profiles.

    python scripts/bench_startup.py [--profiles 10000] [--runs 5]

Builds a throw-away store (the example profile imported once, its row copied under new names),
then times each command as a user's shell runs it, a fresh process each time, beside
``python -c pass`` for the interpreter's own start.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "profiles" / "example.imagic.safetensors"
CLI = [sys.executable, "-m", "imagic_lora.cli"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "--help": [*CLI, "--help"],
    "--version": [*CLI, "--version"],
    "profiles list": [*CLI, "profiles", "list"],
    "profiles show": [*CLI, "profiles", "show", "p05000"],
    "profiles rename": [*CLI, "profiles", "rename", "p00001", "renamed"],
    "profiles rm": [*CLI, "profiles", "rm", "renamed"],
    "profiles path": [*CLI, "profiles", "path"],
    "completion (TAB after 'profiles show p0')": [*CLI],
}
COMPLETION = {"_IMAGIC_LORA_COMPLETE": "bash_complete", "COMP_WORDS": "imagic-lora profiles show p0",
              "COMP_CWORD": "3"}


def fill_store(user: Path, count: int) -> None:
    env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(user)}
    subprocess.run([*CLI, "profiles", "import", str(EXAMPLE), "--name", "p00000"], env=env, check=True,
                   capture_output=True)
    with sqlite3.connect(user / "profiles.db") as conn:
        columns = [row[1] for row in conn.execute("pragma table_info(profiles)") if row[1] != "name"]
        listed = ", ".join(columns)
        for index in range(1, count):
            conn.execute(f"insert into profiles (name, {listed}) select ?, {listed} from profiles "
                         "where name = 'p00000'", [f"p{index:05d}"])


def time_command(command: list[str], env: dict[str, str], runs: int, restore=None) -> float:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        seconds.append(time.perf_counter() - start)
        if restore:
            restore()
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        user = Path(folder)
        fill_store(user, args.profiles)
        env = {**os.environ, "IMAGIC_LORA_USER_PATH": str(user)}
        undo = {  # rename and rm change the store: put it back after each run, untimed
            "profiles rename": lambda: subprocess.run([*CLI, "profiles", "rename", "renamed", "p00001"], env=env,
                                                      capture_output=True, check=False),
            "profiles rm": lambda: subprocess.run([*CLI, "profiles", "import", str(EXAMPLE), "--name", "renamed"],
                                                  env=env, capture_output=True, check=False),
        }
        print(f"{args.profiles} profiles, median of {args.runs} runs, {os.cpu_count()} cores\n")
        print("| command | median s |\n| --- | ---: |")
        for label, command in COMMANDS.items():
            if label == "profiles rm":
                undo["profiles rm"]()
            run_env = {**env, **COMPLETION} if label.startswith("completion") else env
            seconds = time_command(command, run_env, args.runs, undo.get(label))
            print(f"| `{label}` | {seconds:.3f} |")


if __name__ == "__main__":
    main()

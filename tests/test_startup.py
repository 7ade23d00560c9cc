"""Commands that run no model start without importing torch, diffusers or transformers."""

import os
import subprocess
import sys

from helpers import EXAMPLE_PROFILE, run

HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors", "gradio")  # gradio: only `ui` loads it
PROBE = """
import sys
from click.testing import CliRunner
from imagic_lora.cli import cli
for args in (["--help"], ["--version"], ["profiles", "list"], ["profiles", "list", "--json"],
             ["profiles", "show", "example"], ["profiles", "rename", "example", "renamed"], ["profiles", "path"],
             ["profiles", "rm", "renamed"], ["profiles", "show", "nope"]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == (1 if "nope" in args else 0), (args, result.output)
print(",".join(sorted(name for name in {HEAVY} if name in sys.modules)))
"""


def test_listing_and_managing_profiles_imports_no_model_library(isolated_user_dir):
    assert run("profiles", "import", EXAMPLE_PROFILE, "--name", "example").exit_code == 0
    done = subprocess.run([sys.executable, "-c", PROBE.replace("{HEAVY}", repr(HEAVY))], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "", f"imported: {done.stdout.strip()}"


def test_profile_names_complete_in_the_shell(isolated_user_dir):
    for name in ("dog", "Dolly", "cat"):
        assert run("profiles", "import", EXAMPLE_PROFILE, "--name", name).exit_code == 0
    env = {**os.environ, "_IMAGIC_LORA_COMPLETE": "bash_complete", "COMP_CWORD": "3"}
    cases = (("imagic-lora profiles show do", ["dog"]), ("imagic-lora apply profile ", ["Dolly", "cat", "dog"]),
             ("imagic-lora profiles rename D", ["Dolly"]), ("imagic-lora profiles rm x", []))
    for words, expected in cases:
        done = subprocess.run([sys.executable, "-m", "imagic_lora.cli"], env={**env, "COMP_WORDS": words},
                              capture_output=True, text=True, check=False)
        offered = [line.split(",", 1)[1] for line in done.stdout.split()]
        assert offered == expected, (words, done.stdout, done.stderr)

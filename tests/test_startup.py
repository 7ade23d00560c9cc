"""Commands that run no model start without importing torch, diffusers or transformers."""

import subprocess
import sys

from conftest import EXAMPLE_PROFILE
from helpers import run

HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors")
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

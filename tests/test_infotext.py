"""Output PNGs carry A1111 infotext that PNG Info / civitai parse back into every field, and the full JSON."""

import json
import re

from helpers import run, with_metadata_fields
from PIL import Image

from imagic_lora import ProfileStore

# AUTOMATIC1111's rules for the last line: `Key: value` pairs, a value either a JSON string or up to the next comma
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict:
    """Read infotext as A1111 does: prompt lines, an optional ``Negative prompt:`` line, then the pairs."""
    *lines, last = text.strip().split("\n")
    pairs = PAIR.findall(last)
    assert len(pairs) >= 3, "A1111 takes a last line of fewer than 3 pairs as part of the prompt"
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        fields[key] = json.loads(value) if value.startswith('"') and value.endswith('"') else value
    return fields


def test_png_parameters_read_back_with_a1111_rules(trained, tmp_path):
    source = 'a red ball, on green grass: "bright"'
    profile = trained.renamed("ball")
    profile = with_metadata_fields(profile, source_prompt=source)
    ProfileStore().save(profile)
    result = run("apply", "profile", "ball", "a blue ball", "--alpha", 0.8, "--seed", 7, "--steps", 3,
                 "--guidance", 5, "--negative-prompt", "blurry, dark", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    info = Image.open(tmp_path / "ball_a-blue-ball_a0.80_s7.png").info
    fields = parse_infotext(info["parameters"])
    assert fields == {
        "Prompt": "a blue ball", "Negative prompt": "blurry, dark", "Steps": "3", "Sampler": "DDIM",
        "CFG scale": "5", "Seed": "7", "Size": "64x64",
        "Model hash": profile.metadata.settings.base_fingerprint.split("-")[1][:10], "Model": "builtin:tiny",
        "Imagic profile": "ball", "Imagic source prompt": source, "Imagic alpha": "0.8", "Imagic start": "inversion",
        "Imagic keep": "0.25", "Version": "imagic-lora 0.1.0",
    }
    full = json.loads(info["imagic-lora"])
    assert (full["prompt"], full["source_prompt"], full["alpha"], full["seed"]) == ("a blue ball", source, 0.8, 7)

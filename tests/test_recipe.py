"""--memory: the recipe chosen for given free-memory figures, flags that win over it, and its record."""

import json
import re

import pytest
from helpers import FAST, PROMPT, error_line, rewrite, run

from imagic_lora import InvalidProfileFile, TrainConfig, train
from imagic_lora import recipe as recipes
from imagic_lora.profile import Profile
from imagic_lora.record import Recipe
from imagic_lora.validate import read_header

GIB = 2**30
# parameters of the published checkpoints (UNet; VAE and text encoders), held in fp16 / bf16: 2 bytes each
SIZES = {
    "sd15": (859_520_964, 83_653_863 + 123_060_480),
    "sd21": (865_910_724, 83_653_863 + 340_387_840),
    "sdxl": (2_567_463_684, 83_653_863 + 123_060_480 + 694_659_840),
}


def level(family: str, card_gib: float, memory: str = "auto", pixel_ratio: float = 1.0) -> str:
    unet, encoders = SIZES[family]
    needs = recipes.estimated_needs(2 * unet, 2 * encoders, pixel_ratio)
    return recipes.choose_level(memory, needs, int(card_gib * GIB))


@pytest.mark.parametrize(("family", "card_gib", "expected"), [
    ("sd15", 7.5, "fast"),  # an 8 GB card has room for SD 1.5 without any saving
    ("sd15", 5.3, "offloaded"),
    ("sd15", 3.5, "lean"),
    ("sd21", 5.5, "offloaded"),
    ("sd21", 7.5, "fast"),
    ("sdxl", 7.5, "lean"),  # an 8 GB card: every saving, as every earlier version did
    ("sdxl", 11.5, "lean"),
    ("sdxl", 15.5, "offloaded"),
    ("sdxl", 23.5, "fast"),  # a 24 GB card pays for none
    ("sdxl", 79.0, "fast"),
])
def test_auto_takes_the_fastest_recipe_that_fits_the_card(family, card_gib, expected):
    assert level(family, card_gib) == expected


def test_a_larger_picture_needs_more_and_low_and_high_ask_outright():
    assert level("sd15", 7.5, pixel_ratio=4.0) == "lean"  # 1024 px on SD 1.5: four times the activations
    assert level("sdxl", 79.0, "low") == "lean"
    assert level("sdxl", 7.5, "high") == "fast"
    assert recipes.choose_level("auto", {"fast": 1.0}, None) == "cpu"


def test_the_estimate_keeps_sd15_within_its_4_gib_target_on_an_8_gb_card():
    unet, encoders = SIZES["sd15"]
    fast = recipes.estimated_needs(2 * unet, 2 * encoders, 1.0)["fast"] / recipes.HEADROOM
    assert fast < 4 * GIB  # the fast recipe's estimated peak, without the headroom


def _resolved(tiny, monkeypatch, free_gib, **settings):
    monkeypatch.setattr(recipes, "device_free_bytes", lambda base: None if free_gib is None else int(free_gib * GIB))
    return recipes.resolve(TrainConfig(**settings), tiny, tiny.native_resolution)


def test_explicit_flags_win_over_the_chosen_recipe(tiny, monkeypatch):
    config, recipe = _resolved(tiny, monkeypatch, 0.001)
    assert recipe.level == "lean" and recipe.free_gib is not None
    assert (config.gradient_checkpointing, config.optimizer, config.offload_encoders) == (True, "adamw8bit", True)
    config, recipe = _resolved(tiny, monkeypatch, 0.001, gradient_checkpointing=False, optimizer="adamw")
    assert (config.gradient_checkpointing, config.optimizer, config.offload_encoders) == (False, "adamw", True)
    assert recipe.level == "lean" and recipe.optimizer == "adamw"  # the record says what ran
    config, recipe = _resolved(tiny, monkeypatch, 80, memory="low", gradient_checkpointing=False,
                               optimizer="adamw", offload_encoders=False)
    assert recipe.level == "explicit" and not config.gradient_checkpointing


def test_on_the_cpu_auto_keeps_what_the_cpu_always_ran(tiny, monkeypatch):
    config, recipe = _resolved(tiny, monkeypatch, None)
    assert (config.gradient_checkpointing, config.optimizer) == (False, "adamw8bit")
    assert recipe == Recipe(memory="auto", level="cpu", gradient_checkpointing=False, offload_encoders=True,
                            optimizer="adamw8bit", free_gib=None, needed_gib=None)
    assert recipe.line() == "memory auto on the CPU: no checkpointing, 8-bit AdamW"


def test_the_chosen_recipe_trains_and_is_kept_in_the_profile(tiny, image_path, monkeypatch):
    monkeypatch.setattr(recipes, "device_free_bytes", lambda base: 80 * GIB)
    lines = []
    profile = train("ball", image_path, PROMPT, model=tiny, config=FAST, progress=False, inform=lines.append)
    assert profile.metadata.recipe.level == "fast"
    assert profile.metadata.settings.training.optimizer == "adamw"  # what stage 2 ran with
    assert lines[0] == profile.metadata.recipe.line() and lines[1].startswith("trained in ") and len(lines) == 2
    assert lines[0].startswith("memory auto: fast recipe (80.")
    assert lines[0].endswith("GiB needed): no checkpointing, fp32 AdamW, encoders on the device")
    again = Profile.from_bytes(profile.to_bytes())
    assert again.metadata.recipe == profile.metadata.recipe and again.format_version == 5


def test_the_cli_prints_the_recipe_in_one_line(image_path):
    result = run("train", "ball", image_path, "--prompt", PROMPT, "--model", "builtin:tiny", "--embedding-steps", 1,
                 "--lora-steps", 1, "--inversion-steps", 2, "--memory", "low")
    assert result.exit_code == 0, result.output
    assert ("memory low: lean recipe: gradient checkpointing, 8-bit AdamW, encoders off the device"
            in result.stderr.splitlines())
    [timing] = [line for line in result.stderr.splitlines() if line.startswith("trained in ")]
    match = re.fullmatch(r"trained in ([\d.]+) s \(embedding ([\d.]+) s, LoRA ([\d.]+) s, inversion ([\d.]+) s\)",
                         timing)
    total, *parts = map(float, match.groups())
    assert total > 0 and abs(total - sum(parts)) <= 0.15, "the parts add up to the whole, to rounding"
    bad = run("train", "ball", image_path, "--prompt", PROMPT, "--memory", "lots")
    assert bad.exit_code == 2 and "'lots' is not one of 'auto', 'low', 'high'" in bad.stderr


def test_a_recipe_is_only_read_in_version_5_and_must_be_whole(trained, tmp_path):
    data = trained.to_bytes()
    assert trained.metadata.recipe and Profile.from_bytes(data).format_version == 5

    def edited(change, version="5"):
        profile = json.loads(read_header(data, "test")["profile"])
        change(profile)
        return rewrite(data, header={"profile": json.dumps(profile), "format_version": version})

    with pytest.raises(InvalidProfileFile, match="a 'recipe', which format version 4 does not hold"):
        Profile.from_bytes(edited(lambda profile: None, "4"))
    with pytest.raises(InvalidProfileFile, match=r"metadata lacks 'recipe' \(expected dict\)"):
        Profile.from_bytes(edited(lambda profile: profile.pop("recipe")))
    with pytest.raises(InvalidProfileFile, match=r"'recipe.gradient_checkpointing' \(expected true or false\)"):
        Profile.from_bytes(edited(lambda profile: profile["recipe"].update(gradient_checkpointing=1)))
    with pytest.raises(InvalidProfileFile, match="recipe has keys this version does not know: 'speed'"):
        Profile.from_bytes(edited(lambda profile: profile["recipe"].update(speed="max")))
    path = tmp_path / "ball.imagic.safetensors"
    path.write_bytes(edited(lambda profile: profile.pop("recipe")))
    assert error_line(run("profiles", "import", path)).startswith("Error: ")


def sampling_fits(family: str, card_gib: float, resolution: int, images: int = 1) -> bool:
    unet, others = SIZES[family]
    native = 1024 if family == "sdxl" else 512 if family == "sd15" else 768
    need = recipes.sampling_need(2 * unet, 2 * others, (resolution / native) ** 2, resolution**2, images)
    return need <= card_gib * GIB


def test_apply_keeps_everything_resident_only_where_the_estimate_fits():
    assert not sampling_fits("sdxl", 7.5, 1024), "an 8 GB card decodes SDXL's picture with the UNet off"
    assert sampling_fits("sdxl", 23.5, 1024, images=4)
    assert sampling_fits("sd15", 7.5, 512)
    assert not sampling_fits("sd15", 7.5, 512, images=16)


def test_apply_memory_auto_decides_from_the_free_memory_and_says_why(tiny, monkeypatch):
    def decide(memory, free_gib):
        free = None if free_gib is None else int(free_gib * GIB)
        monkeypatch.setattr(recipes, "device_free_bytes", lambda base: free)
        return recipes.decodes_apart(memory, tiny, 64, 1)

    assert decide("auto", None) == (False, None), "the CPU has no device memory to save"
    assert decide("auto", 80.0) == (False, None)
    apart, line = decide("auto", 0.0)
    assert apart and line.startswith("memory: low, chosen by auto (") and "GiB free" in line
    assert decide("low", None)[0] and decide("low", 80.0)[0]
    assert decide("high", 0.0) == (False, None)


def test_apply_prints_a_low_memory_choice_in_one_line(trained, tmp_path):
    from imagic_lora import ProfileStore

    ProfileStore().save(trained)
    result = run("apply", "profile", "ball", "a blue ball", "--memory", "low", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("memory: low") == 1
    assert run("apply", "profile", "ball", "a blue ball", "--memory", "sometimes").exit_code == 2

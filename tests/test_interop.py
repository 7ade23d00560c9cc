"""Plain LoRA exports load in diffusers' own loader and give our pixels."""

import numpy as np
import pytest
import torch
from helpers import run, with_lora_alpha
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from imagic_lora import ApplyConfig, ProfileStore, apply, load_model
from imagic_lora.conditioning import interpolate
from imagic_lora.method import encode_prompt

# sampling as plain diffusers does it: from seeded noise, every pixel generated
CONFIG = ApplyConfig(alphas=(0.7,), steps=4, guidance=7.5, start="noise", keep=False)


def plain_pipeline_image(profile, lora_file):
    """Sample with diffusers alone: load_lora_weights, then prompt_embeds from the profile's e_opt."""
    base = load_model("builtin:tiny")
    pipe = base.pipe
    pipe.load_lora_weights(str(lora_file))
    embeds = interpolate(encode_prompt(base, "a blue ball"), profile.condition, 0.7).embeds
    image = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=encode_prompt(base, "").embeds, num_inference_steps=4,
        guidance_scale=7.5, height=64, width=64, generator=[torch.Generator().manual_seed(0)],
    ).images[0]
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("lora_format", ["diffusers", "kohya"])
@pytest.mark.parametrize("lora_alpha", [4.0, 8.0])
def test_exported_adapter_loads_in_diffusers_and_matches_our_output(trained, tmp_path, lora_format, lora_alpha):
    profile = trained.renamed("ball")
    profile = with_lora_alpha(profile, lora_alpha)
    ProfileStore().save(profile)
    lora_file = tmp_path / f"ball-{lora_format}.safetensors"
    result = run("profiles", "export", "ball", lora_file, "--lora-only", "--format", lora_format)
    assert result.exit_code == 0, result.output
    [ours] = apply(profile, "a blue ball", out_dir=tmp_path / "ours", model="builtin:tiny", config=CONFIG,
                   progress=False)

    theirs = plain_pipeline_image(profile, lora_file)
    difference = np.abs(np.asarray(Image.open(ours)).astype(int) - theirs)
    assert difference.max() <= 1, difference.max()  # identical up to rounding


def test_kohya_file_names_and_alphas(trained, tmp_path):
    ProfileStore().save(trained)
    path = tmp_path / "k.safetensors"
    assert run("profiles", "export", "ball", path, "--format", "kohya").exit_code == 0
    state = load_file(path)
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") for k in state)
    assert all(state[k.replace(".lora_down.weight", ".alpha")].item() == trained.lora_alpha for k in downs)
    assert len(state) == 3 * len(downs)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["ss_network_module"] == "networks.lora"
    assert (header["ss_network_dim"], header["ss_network_alpha"]) == (str(trained.rank), str(trained.lora_alpha))
    assert "ss_base_model_version" not in header, "the built-in model is neither SD 1.x nor 2.x"


def test_export_to_a_folder_is_refused(trained, tmp_path):
    ProfileStore().save(trained)
    for extra in ([], ["--lora-only"]):
        result = run("profiles", "export", "ball", tmp_path, *extra)
        assert result.exit_code == 1
        assert result.stderr.strip().startswith(f"Error: {tmp_path} is a folder. Try: a file name")


def test_lora_alpha_changes_the_output_so_the_match_above_checks_the_scale(trained, tmp_path):
    images = []
    for lora_alpha in (4.0, 8.0):
        profile = trained.renamed("ball")
        profile = with_lora_alpha(profile, lora_alpha)
        [path] = apply(profile, "a blue ball", out_dir=tmp_path / str(lora_alpha), model="builtin:tiny",
                       config=CONFIG, progress=False)
        images.append(np.asarray(Image.open(path)))
    assert not np.array_equal(*images)


@pytest.fixture(scope="module")
def trained_xl(tmp_path_factory):
    """One profile trained on the tiny SDXL."""
    from helpers import EXAMPLE_INPUT, FAST, PROMPT

    from imagic_lora import train

    store = ProfileStore(tmp_path_factory.mktemp("xl") / "profiles.db")
    return train("xl", EXAMPLE_INPUT, PROMPT, model="builtin:tiny-xl", config=FAST, store=store, progress=False)


@pytest.mark.parametrize("lora_format", ["diffusers", "kohya"])
def test_sdxl_export_loads_in_the_sdxl_pipeline_and_matches_our_output(trained_xl, tmp_path, lora_format):
    """Kohya SDXL files use the original UNet's block names (input_blocks.4.1...), which diffusers maps back."""
    ProfileStore().save(trained_xl)
    lora_file = tmp_path / f"xl-{lora_format}.safetensors"
    result = run("profiles", "export", "xl", lora_file, "--lora-only", "--format", lora_format)
    assert result.exit_code == 0, result.output
    keys = load_file(lora_file).keys()
    if lora_format == "kohya":
        assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.") for k in keys)
        assert any(k.startswith("lora_unet_output_blocks_0_1_") for k in keys)
        assert not any("down_blocks" in k or "up_blocks" in k for k in keys)
    [ours] = apply(trained_xl, "a blue ball", out_dir=tmp_path / "ours", model="builtin:tiny-xl", config=CONFIG,
                   progress=False)

    base = load_model("builtin:tiny-xl")
    base.pipe.load_lora_weights(str(lora_file))
    e_new = encode_prompt(base, "a blue ball")
    mixed = interpolate(e_new, trained_xl.condition, 0.7)
    theirs = base.pipe(
        prompt_embeds=mixed.embeds, pooled_prompt_embeds=mixed.pooled, num_inference_steps=4, guidance_scale=7.5,
        height=64, width=64, generator=[torch.Generator().manual_seed(0)],
    ).images[0]
    difference = np.abs(np.asarray(Image.open(ours)).astype(int) - np.asarray(theirs).astype(int))
    assert difference.max() <= 1, difference.max()  # identical up to rounding

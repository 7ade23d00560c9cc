"""Every path that touches weights, at the real sizes: SD 1.5, SD 2.1 and SDXL built from their published configs.

Random weights (fixed seed), saved once per test session as fp16 diffusers folders and as
original-format single files; every command runs in bf16 at 64 px with 1 + 1 training steps and a
2-step inversion (sampling at 2 steps starts from it; the single-file test samples at 3, inverting again).
"""

import hashlib

import numpy as np
import pytest
import torch
from helpers import pixels, run
from ldm_checkpoint import write_single_file
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from imagic_lora import ProfileStore, load_model
from imagic_lora.api import check_compatible
from imagic_lora.bench.architectures import random_pipeline
from imagic_lora.lora import fused_lora
from imagic_lora.models import sample_indices

pytestmark = pytest.mark.slow
FAMILIES = {"sd15": (768, "epsilon"), "sd21": (1024, "v_prediction"), "sdxl": (2048, "epsilon")}
KOHYA = {"sd15": ("sd_v1", "stable-diffusion-v1/lora"), "sd21": ("sd_v2_v", "stable-diffusion-v2-768-v/lora"),
         "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora")}
FAST = ["--resolution", "64", "--embedding-steps", "1", "--lora-steps", "1", "--inversion-steps", "2",
        "--dtype", "bf16"]
APPLY = ["--steps", "2", "--dtype", "bf16"]


@pytest.fixture(scope="session", params=list(FAMILIES))
def real_model(request, tmp_path_factory):
    """``(family, diffusers folder, single .safetensors file)`` with the same random weights."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    pipe = random_pipeline(family, dtype=torch.float16)  # built in fp16: SDXL in fp32 would take 14 GB
    pipe.save_pretrained(folder / "diffusers", safe_serialization=True)
    single = write_single_file(pipe, folder / f"{family}-original.safetensors")
    del pipe
    return family, folder / "diffusers", single


def _train(model, image_path, name="real"):
    result = run("train", name, image_path, "--prompt", "a photo of a dog", "--model", model, *FAST)
    assert result.exit_code == 0, result.output
    return ProfileStore().get(name)


def test_sample_indices_are_exact_and_in_bounds_at_every_size():
    for numel in (1, 2, 5, 1000, 2**24 + 1, 29_491_200, 37_945_344):
        indices = sample_indices(numel)
        assert indices[0] == 0 and indices[-1] == numel - 1
        assert indices == sorted(indices)


def test_cli_end_to_end_on_the_real_architecture(real_model, image_path, tmp_path):
    """train, list, show, apply, export, import, apply file and both adapter exports, through the CLI."""
    family, folder, single = real_model
    width, prediction = FAMILIES[family]
    profile = _train(folder, image_path)
    assert profile.e_opt.shape == (1, 77, width)
    assert profile.resolution == 64
    assert profile.metadata.family == family
    assert (profile.e_opt_pooled is not None) == (family == "sdxl") and profile.format_version == 5
    assert profile.noise_maps.shape == (2, *profile.image_latents.shape[1:])  # trained with 2 inversion steps
    if family == "sdxl":
        assert profile.e_opt_pooled.shape == profile.source_pooled.shape == (1, 1280)

    listed = run("profiles", "list")
    assert listed.exit_code == 0 and listed.output.startswith("real: \"a photo of a dog\"")
    shown = run("profiles", "show", "real")
    assert f"base_fingerprint: {profile.metadata.settings.base_fingerprint}" in shown.output

    # the defaults: from the stored inversion (made at 2 steps), the photo kept where unchanged
    stored = run("apply", "profile", "real", "a photo of a cat", *APPLY, "--out", tmp_path / "stored")
    assert stored.exit_code == 0, stored.output
    [image] = [line for line in stored.stdout.split() if line.endswith(".png")]
    assert pixels(image).shape == (64, 64, 3)
    plain = run("apply", "profile", "real", "a photo of a cat", *APPLY, "--start", "noise", "--no-keep", "--out",
                tmp_path / "noise")
    assert plain.exit_code == 0, plain.output
    [from_noise] = [line for line in plain.stdout.split() if line.endswith(".png")]
    assert not np.array_equal(pixels(from_noise), pixels(image)), "the start and the keep change the output"

    shared = tmp_path / "real.imagic.safetensors"
    assert run("profiles", "export", "real", shared).exit_code == 0
    assert run("profiles", "import", shared, "--name", "copy").exit_code == 0
    assert ProfileStore().get_bytes("copy") != b"" and ProfileStore().get("copy").e_opt.equal(profile.e_opt)
    from_file = run("apply", "file", shared, "a photo of a cat", *APPLY, "--memory", "low", "--out", tmp_path / "file")
    assert from_file.exit_code == 0, from_file.output
    [image_from_file] = [line for line in from_file.stdout.split() if line.endswith(".png")]
    assert np.array_equal(pixels(image), pixels(image_from_file)), \
        "store and shared file give the same pixels, and so does decoding with the UNet off the device"

    for lora_format in ("diffusers", "kohya"):
        exported = run("profiles", "export", "real", tmp_path / f"{lora_format}.safetensors", "--format", lora_format)
        assert exported.exit_code == 0, exported.output
    with safe_open(str(tmp_path / "kohya.safetensors"), framework="pt") as handle:
        header = handle.metadata()
    assert (header["ss_base_model_version"], header["modelspec.architecture"]) == KOHYA[family]
    if family == "sdxl":
        _check_kohya_names_in_the_original_unet(tmp_path / "kohya.safetensors", single)
    _check_in_diffusers(folder, profile, tmp_path, prediction)


def _check_kohya_names_in_the_original_unet(kohya_file, single):
    """ComfyUI's rule for SDXL LoRAs (and A1111's fallback): ``lora_unet_<key>`` names the original UNet's
    ``model.diffusion_model.<key>.weight`` with dots as underscores; the adapter's shape must fit that weight."""
    with safe_open(str(single), framework="pt") as checkpoint:
        weights = {key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_"):
                   tuple(checkpoint.get_slice(key).get_shape())
                   for key in checkpoint.keys() if key.startswith("model.diffusion_model.")}  # noqa: SIM118
    state = load_file(kohya_file)
    downs = [key for key in state if key.endswith(".lora_down.weight")]
    assert len(downs) == 70 * 8, "every projection of SDXL's 70 transformer blocks"
    for key in downs:
        module = key.removeprefix("lora_unet_").removesuffix(".lora_down.weight")
        up = state[key.replace(".lora_down.", ".lora_up.")]
        assert weights.get(module) == (up.shape[0], state[key].shape[1]), key


def _check_in_diffusers(folder, profile, tmp_path, prediction):
    """Compatibility check, fuse and restore, and diffusers' own load_lora_weights, at real tensor sizes.

    One layer at a time: SDXL's full-size deltas of all 560 projections would take 15 GB at once.
    """
    base = load_model(str(folder), dtype="bf16")
    assert base.pipe.scheduler.config.prediction_type == prediction
    assert check_compatible(profile, base) is None
    unet = base.pipe.unet
    before = _digests(unet)
    with fused_lora(unet, profile.lora, profile.rank, profile.lora_alpha):
        changed = [name for name, digest in _digests(unet).items() if digest != before[name]]
    assert len(changed) == len(profile.lora) // 2, "the adapter's update lands in every target layer"
    assert _digests(unet) == before, "restored exactly"

    ours = _factors_from_profile(profile)
    for lora_format in ("diffusers", "kohya"):
        base.pipe.load_lora_weights(str(tmp_path / f"{lora_format}.safetensors"), adapter_name=lora_format)
        theirs = _peft_layers(unet, lora_format)
        assert theirs.keys() == ours.keys()
        for path, (scale, up, down) in ours.items():
            delta = scale * (up @ down)
            assert delta.norm() > 0
            assert (_peft_delta(theirs[path], lora_format) - delta).norm() <= 1e-2 * delta.norm(), (lora_format, path)


def _digests(module) -> dict[str, str]:
    """A SHA-256 of every weight's bytes: exact comparison without a second copy of the weights."""
    return {name: hashlib.sha256(value.detach().contiguous().view(torch.uint8).numpy()).hexdigest()
            for name, value in module.state_dict().items()}


def _factors_from_profile(profile):
    factors = {}
    for key, down in profile.lora.items():
        if key.endswith(".lora.down.weight"):
            up = profile.lora[key.replace(".lora.down.", ".lora.up.")]
            path = key.removeprefix("unet.").removesuffix(".lora.down.weight")
            factors[path] = (profile.lora_alpha / profile.rank, up.float(), down.float())
    return factors


def _peft_layers(unet, adapter):
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, LoraLayer) and adapter in module.lora_A}


def _peft_delta(module, adapter):
    down, up = module.lora_A[adapter].weight.float(), module.lora_B[adapter].weight.float()
    return module.scaling[adapter] * (up @ down)


def test_single_file_checkpoint_trains_and_applies_offline(real_model, image_path, tmp_path, monkeypatch):
    """An original-format file loads with no hub and an empty cache; its fingerprint is the folder's."""
    _, folder, single = real_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    profile = _train(single, image_path)
    assert profile.metadata.settings.base_fingerprint == load_model(str(folder), dtype="bf16").fingerprint()
    applied = run("apply", "profile", "real", "a photo of a cat", "--steps", "3", "--dtype", "bf16", "--out",
                  tmp_path / "out")
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.strip().endswith(".png")


def test_a_v_prediction_marker_in_the_file_is_followed(real_model, tmp_path):
    family, _, single = real_model
    if family != "sd15":
        pytest.skip("SD 2.x single files are v-prediction already")
    marked = tmp_path / "marked.safetensors"
    save_file({**load_file(single), "v_pred": torch.tensor([])}, marked)
    assert load_model(str(marked), dtype="bf16").pipe.scheduler.config.prediction_type == "v_prediction"

"""The input's latents and their inversion travel in the profile; apply can start there.

Format version 4 keeps the edit-friendly DDPM inversion (a start and one noise map per step, exact at the
guidance it was made for); versions 2 and 3 keep a DDIM inversion, which is still read and used.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import EXAMPLE_PROFILE, FORMAT_FILES, REPO, as_version_4, error_line, pixels, rewrite, run
from PIL import Image

from imagic_lora import ApplyConfig, ProfileStore, TrainConfig, apply, load_model, read_profile_file, train
from imagic_lora import api as api_module
from imagic_lora.bench.cases import make_cases, score
from imagic_lora.method import decode_latents
from imagic_lora.profile import Profile
from imagic_lora.record import EDIT_FRIENDLY, Inversion
from imagic_lora.shapes.analyze import psnr
from imagic_lora.shapes.model import SHAPES_MODEL


def started_from(path) -> str:
    return json.loads(Image.open(path).text["imagic-lora"])["start"]


# cases of make_cases(10, seed=0) whose α 0 reconstruction was measured before this test was written
RECONSTRUCTED = (0, 3)


def test_a_new_profile_is_version_5_and_keeps_its_latents_and_their_edit_friendly_inversion(trained):
    assert trained.format_version == 5 and trained.metadata.format_version == 5  # 4 plus the recipe's record
    assert trained.image_latents.shape == trained.start_latents.shape == (1, 4, 32, 32)  # builtin:tiny at 64 px
    assert trained.noise_maps.shape == (50, 4, 32, 32)
    assert not torch.equal(trained.image_latents, trained.start_latents)
    assert trained.noise_maps.abs().amax(dim=(1, 2, 3)).min() > 0  # every step adds noise
    again = Profile.from_bytes(trained.to_bytes())
    assert torch.equal(again.start_latents, trained.start_latents)  # made in fp16, stored in fp16: exact
    assert torch.equal(again.noise_maps, trained.noise_maps)
    assert torch.equal(again.image_latents, trained.image_latents.half().float())
    assert again.metadata.inversion == Inversion(steps=50, scheduler="DDIMScheduler", guidance=2.0,
                                                 method=EDIT_FRIENDLY, negative_prompt="")
    assert again.start.method == EDIT_FRIENDLY


def test_a_version_1_profile_still_applies_and_says_it_starts_from_noise(tmp_path):
    profile = read_profile_file(EXAMPLE_PROFILE)
    assert profile.format_version == 1 and profile.start_latents is None
    noise = run("apply", "file", EXAMPLE_PROFILE, "a blue ball", "--steps", 3, "--start", "noise", "--no-keep",
                "--out", tmp_path / "noise")
    defaults = run("apply", "file", EXAMPLE_PROFILE, "a blue ball", "--steps", 3, "--out", tmp_path / "inv")
    assert noise.exit_code == 0 and defaults.exit_code == 0, defaults.output
    assert "Warning" not in noise.stderr
    [warning] = [line for line in defaults.stderr.splitlines() if line.startswith("Warning")]
    assert warning == ("Warning: profile 'example' (format version 1) holds no inversion of its image; starting from "
                       "noise, and keeping nothing of it back. Try: training it again with this version")
    [a], [b] = (list((tmp_path / d).glob("*.png")) for d in ("noise", "inv"))
    assert (pixels(a) == pixels(b)).all()
    assert started_from(b) == "noise" and json.loads(Image.open(b).text["imagic-lora"])["keep"] == "off"
    imported = ProfileStore().import_file(EXAMPLE_PROFILE)  # and it is stored as version 1
    assert ProfileStore().info(imported.name)["format_version"] == 1


def _count_inversions(monkeypatch) -> list[tuple]:
    """Every inversion apply computes, as (start, steps, guidance)."""
    calls = []
    real = api_module.inverted_start

    def counted(base, latents, e_opt, config, progress=True):
        calls.append((config.start, config.steps, config.guidance))
        return real(base, latents, e_opt, config, progress)

    monkeypatch.setattr(api_module, "inverted_start", counted)
    return calls


def test_the_stored_inversion_is_used_at_its_steps_and_guidance_and_recomputed_at_others(trained, tmp_path,
                                                                                        monkeypatch):
    base = load_model("builtin:tiny")
    calls = _count_inversions(monkeypatch)
    [stored] = apply(trained, "a blue ball", out_dir=tmp_path / "a", model=base, config=ApplyConfig(steps=50),
                     progress=False)
    assert calls == []
    assert started_from(stored) == "inversion"
    for n, config in enumerate([ApplyConfig(steps=5), ApplyConfig(guidance=7.5), ApplyConfig(negative_prompt="x"),
                                ApplyConfig(start="ddim")]):
        apply(trained, "a blue ball", out_dir=tmp_path / f"b{n}", model=base, config=config, progress=False)
    assert calls == [("inversion", 5, 2.0), ("inversion", 50, 7.5), ("inversion", 50, 2.0), ("ddim", 50, 2.0)]
    seeds = [apply(trained, "a blue ball", out_dir=tmp_path / f"s{seed}", model=base, progress=False,
                   config=ApplyConfig(start="inversion", steps=5, seed=seed))[0] for seed in (0, 9)]
    assert (pixels(seeds[0]) == pixels(seeds[1])).all()  # the seed is not used: the start is fixed


@pytest.mark.parametrize("version", [2, 3])
def test_a_ddim_profile_gets_an_edit_friendly_inversion_at_apply_and_its_own_with_start_ddim(version, tmp_path,
                                                                                            monkeypatch):
    calls = _count_inversions(monkeypatch)
    path = FORMAT_FILES[version]
    model = "builtin:tiny-xl" if version == 3 else "builtin:tiny"
    steps = str(read_profile_file(path).metadata.inversion.steps)
    defaults = run("apply", "file", path, "a blue ball", "--steps", steps, "--model", model, "--out", tmp_path / "a")
    assert defaults.exit_code == 0, defaults.output
    [warning] = [line for line in defaults.stderr.splitlines() if line.startswith("Warning")]
    assert warning.startswith(f"Warning: profile 'v{version}' (format version {version}) holds a DDIM "
                              "inversion, which gives the photo back only at low guidance; computing its "
                              "edit-friendly inversion for this run")
    ddim = run("apply", "file", path, "a blue ball", "--steps", steps, "--model", model, "--start", "ddim",
               "--out", tmp_path / "b")
    assert ddim.exit_code == 0 and "Warning" not in ddim.stderr, ddim.output
    assert calls == [("inversion", int(steps), 2.0)]  # --start ddim used the stored one
    assert started_from(ddim.stdout.split()[0]) == "ddim"


def test_train_stores_the_inversion_at_the_steps_and_guidance_asked_and_apply_at_those_uses_it(image_path, tmp_path,
                                                                                             monkeypatch):
    fast = ["--embedding-steps", 2, "--lora-steps", 2, "--model", "builtin:tiny"]
    trained = run("train", "ball", image_path, "--prompt", "a red ball", *fast, "--inversion-steps", 3,
                  "--inversion-guidance", 7.5)
    assert trained.exit_code == 0, trained.output
    profile = ProfileStore().get("ball")
    assert profile.noise_maps.shape[0] == 3 and profile.metadata.inversion.steps == 3
    assert profile.metadata.inversion.guidance == 7.5
    calls = _count_inversions(monkeypatch)
    applied = run("apply", "profile", "ball", "a blue ball", "--steps", 3, "--guidance", 7.5, "--out", tmp_path)
    assert applied.exit_code == 0, applied.output
    assert calls == [] and started_from(applied.stdout.split()[0]) == "inversion"
    for option, value, message in (("--inversion-steps", 0, "--inversion-steps must be in [1, 1000], got 0"),
                                   ("--inversion-guidance", -1, "--inversion-guidance must be >= 0, got -1.0")):
        refused = run("train", "other", image_path, "--prompt", "a red ball", *fast, option, value)
        assert refused.exit_code == 1 and error_line(refused) == f"Error: {message}"
    assert ProfileStore().names() == ["ball"]


def test_several_seeds_from_an_inversion_are_refused(tmp_path, trained):
    path = tmp_path / "ball.safetensors"
    path.write_bytes(trained.to_bytes())
    result = run("apply", "file", path, "a blue ball", "--start", "inversion", "--seeds", 2)
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: --seeds 2 would give 2 identical images")


@pytest.mark.parametrize(("tensors", "header", "message"), [
    ({"start_latents": None}, {}, "missing tensor 'start_latents'"),
    ({"image_latents": None}, {}, "missing tensor 'image_latents'"),
    ({}, {"format_version": "1"}, "unexpected tensor '((image|start)_latents|noise_maps)'"),
    ({"start_latents": torch.zeros(1, 4, 32, 31)}, {}, "are not equal [1, channels, height, width]"),
    ({"start_latents": torch.full((1, 4, 32, 32), float("nan"))}, {}, "holds NaN or infinite values"),
    ({"start_latents": torch.zeros(1, 4, 2000, 8)}, {}, "of a supported size"),
    ({"noise_maps": None}, {}, "missing tensor 'noise_maps'"),
    ({"noise_maps": torch.zeros(49, 4, 32, 32)}, {}, "inversion's 50 steps"),
    ({"noise_maps": torch.zeros(50, 4, 32, 16)}, {}, "not one [channels, height, width] map like the latents'"),
    ({"noise_maps": torch.full((50, 4, 32, 32), float("inf"))}, {}, "holds NaN or infinite values"),
    ({}, {"format_version": "2"}, "unexpected tensor 'noise_maps'"),
])
def test_hostile_latents_are_refused(trained, tensors, header, message):
    from imagic_lora.errors import InvalidProfileFile

    with pytest.raises(InvalidProfileFile, match=message.replace("[", r"\[")):
        Profile.from_bytes(rewrite(as_version_4(trained.to_bytes()), tensors=tensors, header=header))


def test_version_2_needs_its_inversion_steps(trained):
    from imagic_lora.errors import InvalidProfileFile
    from imagic_lora.profile import read_header

    meta = json.loads(read_header(trained.to_bytes(), "t")["profile"])
    del meta["inversion"]
    with pytest.raises(InvalidProfileFile, match="no valid inversion steps"):
        Profile.from_bytes(rewrite(trained.to_bytes(), header={"profile": json.dumps(meta)}))


def test_a_version_4_file_whose_record_is_not_edit_friendly_is_refused(trained):
    from imagic_lora.errors import InvalidProfileFile
    from imagic_lora.profile import read_header

    meta = json.loads(read_header(trained.to_bytes(), "t")["profile"])
    del meta["inversion"]["method"]
    with pytest.raises(InvalidProfileFile, match="does not describe the edit-friendly DDPM inversion"):
        Profile.from_bytes(rewrite(trained.to_bytes(), header={"profile": json.dumps(meta)}))


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("guidance", [2.0, 7.5])
def test_the_edit_friendly_inversion_gives_the_photo_back_at_any_guidance_and_ddim_does_not(shapes, tmp_path,
                                                                                           guidance):
    case = make_cases(10, seed=0)[1]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    profile = train("case", image, case.source_prompt, model=shapes, store=ProfileStore(tmp_path / "p.db"),
                    config=TrainConfig(seed=1, inversion_steps=20, inversion_guidance=guidance), progress=False)
    photo = np.asarray(decode_latents(shapes, profile.image_latents), dtype=np.int16)
    differences = {}
    for start in ("inversion", "ddim"):
        [path] = apply(profile, case.edit_prompt, out_dir=tmp_path / start, model=shapes, progress=False,
                       config=ApplyConfig(alphas=(0.0,), steps=20, guidance=guidance, start=start, keep=False))
        differences[start] = np.abs(pixels(path).astype(np.int16) - photo)
    assert differences["inversion"].max() <= 1, differences["inversion"].max()  # measured 0
    if guidance > 2:  # DDIM drifts at the guidance real models need (measured: largest difference 200+ levels)
        assert differences["ddim"].max() > 64 and differences["ddim"].mean() > 10 * differences["inversion"].mean()


@pytest.mark.slow
@pytest.mark.parametrize("index", RECONSTRUCTED)
def test_the_inversion_gives_back_the_input_at_alpha_0(shapes, tmp_path, index):
    case = make_cases(10, seed=0)[index]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    profile = train(f"case{index}", image, case.source_prompt, model=shapes, config=TrainConfig(seed=index),
                    store=ProfileStore(tmp_path / "p.db"), progress=False)
    results = {}
    for start in ("inversion", "noise"):
        [path] = apply(profile, case.edit_prompt, out_dir=tmp_path / start, model=shapes, progress=False,
                       config=ApplyConfig(alphas=(0.0,), guidance=1.0, seed=index, start=start, keep=False))
        output = Image.open(path)
        results[start] = (psnr(output, case.input_image()), score(output, case)["preserved"])
    assert results["inversion"][0] >= 28 and results["inversion"][1], results  # measured 31.6-34.6 dB
    assert results["inversion"][0] >= results["noise"][0] + 5, results


@pytest.mark.parametrize(("family", "mib"), [("sd15", 1.5625), ("sd21", 3.515625), ("sdxl", 6.25)])
def test_the_noise_maps_add_what_format_md_says_at_each_familys_native_size(trained, family, mib):
    """50 steps of fp16 maps at the latent size of the published UNet config (512, 768 and 1024 px)."""
    unet = json.loads((REPO / "imagic_lora" / "data" / family / "unet" / "config.json").read_text())
    shape = (1, unet["in_channels"], unet["sample_size"], unet["sample_size"])
    latents = torch.zeros(shape)
    without = dataclasses.replace(trained, image_latents=latents, start_latents=latents, noise_maps=None)
    with_maps = dataclasses.replace(without, noise_maps=torch.zeros(50, *shape[1:]))
    added = len(with_maps.to_bytes()) - len(without.to_bytes())
    print(f"{family}: the noise maps add {added} bytes ({added / 2**20:.2f} MiB)")
    assert abs(added / 2**20 - mib) < 0.001

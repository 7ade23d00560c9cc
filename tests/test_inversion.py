"""Format version 2: the input's latents and their DDIM inversion travel in the profile; apply can start there."""

import json

import pytest
import torch
from helpers import EXAMPLE_PROFILE, error_line, pixels, rewrite, run
from PIL import Image

from imagic_lora import ApplyConfig, ProfileStore, TrainConfig, apply, load_model, read_profile_file, train
from imagic_lora import api as api_module
from imagic_lora.bench.cases import make_cases, score
from imagic_lora.profile import Profile
from imagic_lora.record import Inversion
from imagic_lora.shapes.analyze import psnr
from imagic_lora.shapes.model import SHAPES_MODEL


def started_from(path) -> str:
    return json.loads(Image.open(path).text["imagic-lora"])["start"]


# cases of make_cases(10, seed=0) whose α 0 reconstruction was measured before this test was written
RECONSTRUCTED = (0, 3)


def test_a_new_profile_is_version_2_and_keeps_its_latents_and_their_inversion(trained, tmp_path):
    assert trained.format_version == 2 and trained.inversion_steps == 50
    assert trained.image_latents.shape == trained.start_latents.shape == (1, 4, 32, 32)  # builtin:tiny at 64 px
    assert not torch.equal(trained.image_latents, trained.start_latents)
    again = Profile.from_bytes(trained.to_bytes())
    assert torch.equal(again.start_latents, trained.start_latents.half().float())  # stored in fp16
    assert torch.equal(again.image_latents, trained.image_latents.half().float())
    assert again.metadata.inversion == Inversion(steps=50, scheduler="DDIMInverseScheduler", guidance=1.0)


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


def test_the_stored_inversion_is_used_at_its_step_count_and_recomputed_at_another(trained, tmp_path, monkeypatch):
    base = load_model("builtin:tiny")
    calls = []
    real_invert = api_module.invert
    monkeypatch.setattr(api_module, "invert", lambda *a, **k: calls.append(a[3]) or real_invert(*a, **k))
    config = ApplyConfig(start="inversion", steps=50)
    [stored] = apply(trained, "a blue ball", out_dir=tmp_path / "a", model=base, config=config, progress=False)
    assert calls == []
    assert started_from(stored) == "inversion"
    apply(trained, "a blue ball", out_dir=tmp_path / "b", model=base, config=ApplyConfig(start="inversion", steps=5),
          progress=False)
    assert calls == [5]
    seeds = [apply(trained, "a blue ball", out_dir=tmp_path / f"s{seed}", model=base, progress=False,
                   config=ApplyConfig(start="inversion", steps=5, seed=seed))[0] for seed in (0, 9)]
    assert (pixels(seeds[0]) == pixels(seeds[1])).all()  # the seed is not used: the start is fixed


def test_train_stores_the_inversion_at_the_steps_asked_and_apply_at_those_steps_uses_it(image_path, tmp_path,
                                                                                      monkeypatch):
    fast = ["--embedding-steps", 2, "--lora-steps", 2, "--model", "builtin:tiny"]
    trained = run("train", "ball", image_path, "--prompt", "a red ball", *fast, "--inversion-steps", 3)
    assert trained.exit_code == 0, trained.output
    profile = ProfileStore().get("ball")
    assert profile.inversion_steps == 3 and profile.metadata.inversion.steps == 3
    calls = []
    real_invert = api_module.invert
    monkeypatch.setattr(api_module, "invert", lambda *a, **k: calls.append(a[3]) or real_invert(*a, **k))
    applied = run("apply", "profile", "ball", "a blue ball", "--steps", 3, "--out", tmp_path)
    assert applied.exit_code == 0, applied.output
    assert calls == [] and started_from(applied.stdout.split()[0]) == "inversion"
    refused = run("train", "other", image_path, "--prompt", "a red ball", *fast, "--inversion-steps", 0)
    assert refused.exit_code == 1 and error_line(refused) == "Error: --inversion-steps must be in [1, 1000], got 0"
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
    ({}, {"format_version": "1"}, "unexpected tensor '(image|start)_latents'"),
    ({"start_latents": torch.zeros(1, 4, 32, 31)}, {}, "are not equal [1, channels, height, width]"),
    ({"start_latents": torch.full((1, 4, 32, 32), float("nan"))}, {}, "holds NaN or infinite values"),
    ({"start_latents": torch.zeros(1, 4, 2000, 8)}, {}, "of a supported size"),
])
def test_hostile_latents_are_refused(trained, tensors, header, message):
    from imagic_lora.errors import InvalidProfileFile

    with pytest.raises(InvalidProfileFile, match=message.replace("[", r"\[")):
        Profile.from_bytes(rewrite(trained.to_bytes(), tensors=tensors, header=header))


def test_version_2_needs_its_inversion_steps(trained):
    from imagic_lora.errors import InvalidProfileFile
    from imagic_lora.profile import read_header

    meta = json.loads(read_header(trained.to_bytes(), "t")["profile"])
    del meta["inversion"]
    with pytest.raises(InvalidProfileFile, match="no valid inversion steps"):
        Profile.from_bytes(rewrite(trained.to_bytes(), header={"profile": json.dumps(meta)}))


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


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

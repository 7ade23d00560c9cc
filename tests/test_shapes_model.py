"""The shipped shapes model: it loads offline, and fixed-seed edits change the asked attribute.

The model cannot place shapes by position yet (see README), so no method preserves every detail;
these cases check the part that works: with the defaults, imagic-lora makes the asked change.
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
# Cases of make_cases(10, seed=0) whose asked attribute imagic-lora changed at α 0.7 in `bench edits`
# (size, colour, shape, size).
EDITED_CASES = (2, 4, 5, 6)


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


def test_the_shipped_model_loads_offline_with_stable_diffusion_components(shapes):
    pipe = shapes.pipe
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert shapes.native_resolution == 32
    assert WEIGHTS.stat().st_size <= 20 * 2**20


@pytest.mark.parametrize("index", EDITED_CASES)
def test_fixed_seed_edits_make_the_asked_change(shapes, tmp_path, index):
    case = make_cases(10, seed=0)[index]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    store = ProfileStore(tmp_path / "p.db")
    train(f"case{index}", image, case.source_prompt, model=shapes, config=TrainConfig(seed=index), store=store,
          progress=False)
    profile = store.get(f"case{index}")  # through the stored file, as the CLI does
    [path] = apply(profile, case.edit_prompt, out_dir=tmp_path, model=shapes,
                   config=ApplyConfig(alphas=(0.7,), seed=index), progress=False)
    result = score(Image.open(path), case)
    assert result["edit_success"], (case.edit, case.source_prompt, case.edit_prompt, result)

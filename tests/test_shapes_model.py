"""The shipped shapes model: it loads offline, and at the apply defaults fixed edits make the asked change
and keep the rest of the scene (other attributes, background tint, marker); α 0 gives the input back.

The cases are from the tuning split of `bench edits` (make_cases(48, seed=0)): for each of the six edit
types, the first case that the defaults edit and keep (17 cases run in that order, 12 of them successes;
the background edits are cases 4 and 10, the first of which loses its marker).
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
# case indices of make_cases(48, seed=0): a colour, shape, size, position, background and add edit
EDITED_AND_KEPT = (0, 1, 2, 3, 10, 11)


@pytest.fixture(scope="module")
def shapes():
    return load_model(SHAPES_MODEL, device="cpu")


def test_the_shipped_model_loads_offline_with_stable_diffusion_components(shapes):
    pipe = shapes.pipe
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert shapes.native_resolution == 32
    assert WEIGHTS.stat().st_size <= 20 * 2**20


def _edit(shapes, tmp_path, index: int, config: ApplyConfig) -> dict:
    case = make_cases(48, seed=0)[index]
    image = tmp_path / "input.png"
    case.input_image().save(image)
    store = ProfileStore(tmp_path / "p.db")
    train(f"case{index}", image, case.source_prompt, model=shapes, config=TrainConfig(seed=index), store=store,
          progress=False)
    profile = store.get(f"case{index}")  # through the stored file, as the CLI does
    [path] = apply(profile, case.edit_prompt, out_dir=tmp_path, model=shapes, config=config, progress=False)
    return score(Image.open(path), case) | {"edit": case.edit, "prompts": (case.source_prompt, case.edit_prompt)}


@pytest.mark.slow
@pytest.mark.parametrize("index", EDITED_AND_KEPT)
def test_edits_at_the_defaults_make_the_asked_change_and_keep_the_scene(shapes, tmp_path, index):
    result = _edit(shapes, tmp_path, index, ApplyConfig())
    assert result["edit_success"] and result["preserved"], result


@pytest.mark.slow
def test_alpha_0_at_the_defaults_gives_the_input_back(shapes, tmp_path):
    result = _edit(shapes, tmp_path, 10, ApplyConfig(alphas=(0.0,)))
    assert result["preserved"] and not result["edit_success"], result

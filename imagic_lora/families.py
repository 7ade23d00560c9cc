"""The Stable Diffusion families imagic-lora knows, their shipped config folders, and telling them apart.

Each family is a complete diffusers config folder under ``data/<family>/`` (every component's
config, the CLIP BPE tokenizer, no weights): enough to load an original-format single-file
checkpoint offline, or to build the architecture with random weights for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ModelLoadError

LDM_UNET = "model.diffusion_model."
# the first cross-attention key projection: its input width is the text encoder's width
CROSS_ATTENTION_KEY = LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CLIP_TEXT = "cond_stage_model.transformer."
OPEN_CLIP_TEXT = "cond_stage_model.model."
V_PREDICTION_MARKER = "v_pred"  # an empty tensor some tools write into v-prediction checkpoints


@dataclass(frozen=True)
class Family:
    """One architecture: its name, the text encoder it conditions on, what its UNet predicts, and the
    names other tools give it (sd-scripts' base model version, the model spec's architecture by prediction)."""

    name: str
    label: str
    text_width: int
    text_prefix: str
    prediction_type: str
    kohya_version: str
    modelspec: dict[str, str]


FAMILIES = {
    "sd15": Family("sd15", "SD 1.x (CLIP ViT-L, 768-d)", 768, CLIP_TEXT, "epsilon", "sd_v1",
                   {"epsilon": "stable-diffusion-v1", "v_prediction": "stable-diffusion-v1"}),
    "sd21": Family("sd21", "SD 2.x (OpenCLIP ViT-H, 1024-d)", 1024, OPEN_CLIP_TEXT, "v_prediction", "sd_v2",
                   {"epsilon": "stable-diffusion-v2-512", "v_prediction": "stable-diffusion-v2-768-v"}),
}
DRY_RUN_FAMILY = "tiny"  # the built-in test model, so benchmark scripts can be checked in seconds on a CPU
BENCH_FAMILIES = (*FAMILIES, DRY_RUN_FAMILY)


def family_of_width(width: int) -> Family | None:
    """The family whose text encoder is ``width`` wide (a profile's embedding width), if any."""
    return next((family for family in FAMILIES.values() if family.text_width == width), None)


@contextlib.contextmanager
def config_folder(family: str) -> Iterator[Path]:
    """The shipped diffusers config folder of ``family``, as a real path while the context lasts."""
    with resources.as_file(resources.files("imagic_lora") / "data" / family) as folder:
        yield folder


def supported() -> str:
    return " or ".join(family.label for family in FAMILIES.values())


def identify_checkpoint(shapes: Mapping[str, tuple[int, ...]], source: str) -> Family:
    """The family of an original-format (LDM) checkpoint, from its key names and tensor shapes."""
    unet_keys = sum(key.startswith(LDM_UNET) for key in shapes)
    if not unet_keys:
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion checkpoint (no '{LDM_UNET}*' weights). "
            f"Try: a single-file checkpoint of {supported()}, or a diffusers folder"
        )
    width = shapes.get(CROSS_ATTENTION_KEY, (None, None))[-1]
    has_clip = any(key.startswith(CLIP_TEXT) for key in shapes)
    has_open_clip = any(key.startswith(OPEN_CLIP_TEXT) for key in shapes)
    for family in FAMILIES.values():
        if width == family.text_width and any(key.startswith(family.text_prefix) for key in shapes):
            return family
    found = (f"{unet_keys} UNet weights, cross-attention width {width}, text encoder: "
             f"{'CLIP' if has_clip else 'OpenCLIP' if has_open_clip else 'none'}")
    raise ModelLoadError(
        f"{source} is a checkpoint imagic-lora cannot identify ({found}). Supported: {supported()}. "
        "Try: a diffusers folder of the model"
    )

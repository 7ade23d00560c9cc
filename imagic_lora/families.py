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
XL_CROSS_ATTENTION_KEY = LDM_UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # SDXL's first
CLIP_TEXT = "cond_stage_model.transformer."
OPEN_CLIP_TEXT = "cond_stage_model.model."
XL_OPEN_CLIP_TEXT = "conditioner.embedders.1.model."
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
    cross_attention_key: str = CROSS_ATTENTION_KEY
    pipeline: str = "StableDiffusionPipeline"

    @property
    def is_xl(self) -> bool:
        return self.pipeline == "StableDiffusionXLPipeline"


FAMILIES = {
    "sd15": Family("sd15", "SD 1.x (CLIP ViT-L, 768-d)", 768, CLIP_TEXT, "epsilon", "sd_v1",
                   {"epsilon": "stable-diffusion-v1", "v_prediction": "stable-diffusion-v1"}),
    "sd21": Family("sd21", "SD 2.x (OpenCLIP ViT-H, 1024-d)", 1024, OPEN_CLIP_TEXT, "v_prediction", "sd_v2",
                   {"epsilon": "stable-diffusion-v2-512", "v_prediction": "stable-diffusion-v2-768-v"}),
    "sdxl": Family("sdxl", "SDXL (CLIP ViT-L + OpenCLIP ViT-bigG, 2048-d)", 2048, XL_OPEN_CLIP_TEXT, "epsilon",
                   "sdxl_base_v1-0",
                   {"epsilon": "stable-diffusion-xl-v1-base", "v_prediction": "stable-diffusion-xl-v1-base"},
                   XL_CROSS_ATTENTION_KEY, "StableDiffusionXLPipeline"),
}
DRY_RUN_FAMILY = "tiny"  # the built-in test model, so benchmark scripts can be checked in seconds on a CPU
DRY_RUN_XL_FAMILY = "tiny-xl"
BENCH_FAMILIES = (*FAMILIES, DRY_RUN_FAMILY, DRY_RUN_XL_FAMILY)


def family_of_width(width: int) -> Family | None:
    """The family whose text encoders are ``width`` wide together (a profile's embedding width), if any."""
    return next((family for family in FAMILIES.values() if family.text_width == width), None)


def family_label(width: int) -> str:
    """A family's short name for messages (``SDXL``); other architectures by their embedding width."""
    family = family_of_width(width)
    return family.label.split(" (")[0] if family else f"a model with {width}-d text embeddings"


@contextlib.contextmanager
def config_folder(family: str) -> Iterator[Path]:
    """The shipped diffusers config folder of ``family``, as a real path while the context lasts."""
    with resources.as_file(resources.files("imagic_lora") / "data" / family) as folder:
        yield folder


def supported() -> str:
    labels = [family.label for family in FAMILIES.values()]
    return f"{', '.join(labels[:-1])} or {labels[-1]}"


def identify_checkpoint(shapes: Mapping[str, tuple[int, ...]], source: str) -> Family:
    """The family of an original-format (LDM) checkpoint, from its key names and tensor shapes."""
    unet_keys = sum(key.startswith(LDM_UNET) for key in shapes)
    if not unet_keys:
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion checkpoint (no '{LDM_UNET}*' weights). "
            f"Try: a single-file checkpoint of {supported()}, or a diffusers folder"
        )
    for family in FAMILIES.values():
        width = shapes.get(family.cross_attention_key, (None, None))[-1]
        if width == family.text_width and any(key.startswith(family.text_prefix) for key in shapes):
            return family
    width = shapes.get(CROSS_ATTENTION_KEY, shapes.get(XL_CROSS_ATTENTION_KEY, (None, None)))[-1]
    has_clip = any(key.startswith(CLIP_TEXT) for key in shapes)
    has_open_clip = any(key.startswith((OPEN_CLIP_TEXT, XL_OPEN_CLIP_TEXT)) for key in shapes)
    found = (f"{unet_keys} UNet weights, cross-attention width {width}, text encoder: "
             f"{'CLIP' if has_clip else 'OpenCLIP' if has_open_clip else 'none'}")
    raise ModelLoadError(
        f"{source} is a checkpoint imagic-lora cannot identify ({found}). Supported: {supported()}. "
        "Try: a diffusers folder of the model"
    )

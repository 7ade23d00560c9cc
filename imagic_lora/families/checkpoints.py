"""Original-format (LDM) single-file checkpoints: which family one is, and loading it with that family's
shipped config folder (every component's config and the tokenizers, no weights), so no hub is asked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ModelLoadError
from . import REGISTERED, supported
from .base import CROSS_ATTENTION_KEY, LDM_UNET, Family

V_PREDICTION_MARKER = "v_pred"  # an empty tensor some tools write into v-prediction checkpoints


def identify_checkpoint(shapes: Mapping[str, tuple[int, ...]], source: str) -> Family:
    """The family of an original-format checkpoint, from its key names and tensor shapes."""
    unet_keys = sum(key.startswith(LDM_UNET) for key in shapes)
    if not unet_keys:
        raise ModelLoadError(
            f"{source} is not a Stable Diffusion checkpoint (no '{LDM_UNET}*' weights). "
            f"Try: a single-file checkpoint of {supported()}, or a diffusers folder"
        )
    for family in REGISTERED:
        width = shapes.get(family.cross_attention_key, (None, None))[-1]
        if width == family.text_width and any(key.startswith(family.text_prefix) for key in shapes):
            return family
    keys = [CROSS_ATTENTION_KEY, *(family.cross_attention_key for family in REGISTERED)]
    width = next((shapes[key][-1] for key in keys if key in shapes), None)
    prefixes = [family.text_prefix for family in REGISTERED]
    found_prefixes = [prefix for prefix in prefixes if any(key.startswith(prefix) for key in shapes)]
    text = ("CLIP" if found_prefixes[0] == prefixes[0] else "OpenCLIP") if found_prefixes else "none"
    found = f"{unet_keys} UNet weights, cross-attention width {width}, text encoder: {text}"
    raise ModelLoadError(
        f"{source} is a checkpoint imagic-lora cannot identify ({found}). Supported: {supported()}. "
        "Try: a diffusers folder of the model"
    )


def load_single_file(path: Path, shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype):
    """The pipeline of the checkpoint at ``path`` (its tensor ``shapes`` already read), in ``dtype``."""
    from diffusers import DDIMScheduler

    family = identify_checkpoint(shapes, str(path))
    pipe = family.from_single_file(path, dtype)
    if V_PREDICTION_MARKER in shapes and family.prediction_type != "v_prediction":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe

"""Real Stable Diffusion architectures with random weights, built from the configs shipped in ``data/``.

What a step costs depends on the architecture, not on the weights, and every code path that walks
weights meets the real tensor sizes: benchmarks and the real-architecture tests build their models here.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import InvalidConfig
from ..families import BENCH_FAMILIES, DRY_RUN_FAMILY, DRY_RUN_XL_FAMILY, FAMILIES, config_folder
from ..tiny import tiny_pipeline, tiny_xl_pipeline

DRY_RUN_PIPELINES = {DRY_RUN_FAMILY: tiny_pipeline, DRY_RUN_XL_FAMILY: tiny_xl_pipeline}


def random_pipeline(
    family: str, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """``family``'s UNet, VAE and text encoder(s) with fixed-seed random weights, in ``dtype`` on ``device``.

    The tokenizers are the family's real CLIP BPE tokenizers, shipped with the configs. ``tiny`` and
    ``tiny-xl`` are the built-in test models (``builtin:tiny``, ``builtin:tiny-xl``), for dry runs.
    """
    if family in DRY_RUN_PIPELINES:
        return DRY_RUN_PIPELINES[family]().to(dtype=dtype)
    if family not in FAMILIES:
        raise InvalidConfig(f"unknown model family {family!r}. Try: one of {', '.join(BENCH_FAMILIES)}")
    xl = FAMILIES[family].is_xl
    with config_folder(family) as folder:
        # built in ``dtype`` directly: SDXL's 3.5 billion fp32 weights alone would take 14 GB
        with torch.random.fork_rng(devices=[]), torch.device(device), _default_dtype(dtype):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
            if xl:
                text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        if xl:
            return StableDiffusionXLPipeline(
                vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet, scheduler=scheduler,
                add_watermarker=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

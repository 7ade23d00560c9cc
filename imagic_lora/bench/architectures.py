"""Real Stable Diffusion architectures with random weights, built from the configs shipped in ``data/``.

What a step costs depends on the architecture, not on the weights, and every code path that walks
weights meets the real tensor sizes: benchmarks and the real-architecture tests build their models here.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..errors import InvalidConfig
from ..families import BENCH_FAMILIES, DRY_RUN_FAMILY, FAMILIES, config_folder
from ..tiny import tiny_pipeline


def random_pipeline(family: str, seed: int = 0, device: str = "cpu") -> StableDiffusionPipeline:
    """``family``'s UNet, VAE and text encoder with fixed-seed random weights, in fp32 on ``device``.

    The tokenizer is the family's real CLIP BPE tokenizer, shipped with the configs. ``tiny`` is
    the built-in test model (``builtin:tiny``), for dry runs.
    """
    if family == DRY_RUN_FAMILY:
        return tiny_pipeline()
    if family not in FAMILIES:
        raise InvalidConfig(f"unknown model family {family!r}. Try: one of {', '.join(BENCH_FAMILIES)}")
    with config_folder(family) as folder:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)

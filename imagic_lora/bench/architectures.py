"""Real Stable Diffusion architectures with random weights, built from the configs shipped in ``data/``.

For memory and speed only: what a step costs depends on the architecture, not on the weights.
"""

from __future__ import annotations

from importlib import resources

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import InvalidConfig
from ..tiny import tiny_tokenizer

FAMILIES = {"sd15": "Stable Diffusion 1.5"}  # each is a folder data/<family>/ of diffusers config files


def random_pipeline(family: str, seed: int = 0, device: str = "cpu") -> StableDiffusionPipeline:
    """``family``'s UNet, VAE and text encoder with fixed-seed random weights, in fp32 on ``device``.

    The tokenizer is the built-in character-level one: token ids only index the random embedding table.
    """
    if family not in FAMILIES:
        raise InvalidConfig(f"unknown model family {family!r}. Try: one of {', '.join(FAMILIES)}")
    with resources.as_file(resources.files("imagic_lora") / "data" / family) as folder:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder / "scheduler"))
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = text_encoder.config.max_position_embeddings
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)

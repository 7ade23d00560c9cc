"""The built-in tiny models: diffusers' tiny-test Stable Diffusion and SDXL made from config.

They need no download and run on a CPU in seconds; their images look like noise.
"""

from __future__ import annotations

from importlib import resources

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .families import SD15, SDXL

TINY_MODEL = "builtin:tiny"
TINY_XL_MODEL = "builtin:tiny-xl"
TINY_SEED = 0


def tiny_tokenizer() -> CLIPTokenizer:
    """The character-level CLIP tokenizer shipped as package data."""
    folder = resources.files("imagic_lora") / "data" / "tiny-tokenizer"
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(str(path), model_max_length=77)


def tiny_pipeline():
    """Build the tiny pipeline with fixed-seed random weights, identical on every run."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = _tiny_unet(cross_attention_dim=32)
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_text_config(tokenizer))
    return SD15.assemble(unet=unet, vae=vae, scheduler=_scheduler(), text_encoders=[text_encoder],
                         tokenizers=[tokenizer])


def tiny_xl_pipeline():
    """A tiny SDXL as diffusers' own SDXL tests build one: two CLIP text encoders (the second with a
    projection, giving the pooled embedding) and a UNet with ``text_time`` conditioning; fixed seed."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = _tiny_unet(
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 size values × 8 + the 32-d pooled embedding
            cross_attention_dim=64,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
    return SDXL.assemble(unet=unet, vae=vae, scheduler=_scheduler(), text_encoders=[text_encoder, text_encoder_2],
                         tokenizers=[tokenizer, tokenizer])


def _tiny_unet(**extra) -> UNet2DConditionModel:
    """The two-level UNet both tiny models share; ``extra`` sets cross-attention and SDXL's conditioning."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **extra,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )


def _text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        **extra,
    )


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )

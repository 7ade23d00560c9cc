"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, conditioned on its per-token embedding alone.

The behaviour is :class:`~imagic_lora.families.base.Family`'s own; the two differ in their text
encoder's width, what the UNet predicts and the names other tools give them.
"""

from __future__ import annotations

from .base import Family

SD15 = Family(
    "sd15", "SD 1.x (CLIP ViT-L, 768-d)", 768, "cond_stage_model.transformer.", "epsilon", "sd_v1",
    {"epsilon": "stable-diffusion-v1", "v_prediction": "stable-diffusion-v1"},
)
SD21 = Family(
    "sd21", "SD 2.x (OpenCLIP ViT-H, 1024-d)", 1024, "cond_stage_model.model.", "v_prediction", "sd_v2",
    {"epsilon": "stable-diffusion-v2-512", "v_prediction": "stable-diffusion-v2-768-v"},
)

"""SDXL: two text encoders side by side, a pooled embedding and size conditioning (``time_ids``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .base import LDM_UNET, Family

if TYPE_CHECKING:
    import torch

    from ..conditioning import Condition

LAYERS_PER_BLOCK = 2  # two resnets (and attentions) per level, plus a down/upsampler
DOWN_ATTENTION = re.compile(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_")
UP_ATTENTION = re.compile(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_")


def time_ids(height: int, width: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning for an uncropped image generated at its own size, as the pipeline makes it."""
    import torch

    ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
    return ids.repeat(batch, 1)


def sgm_name(key: str) -> str:
    """A kohya key in the original (SGM/LDM) UNet's block names, as sd-scripts writes SDXL LoRAs:
    ``down_blocks.1.attentions.0`` is ``input_blocks.4.1``, ``mid_block.attentions.0`` is ``middle_block.1``,
    ``up_blocks.0.attentions.2`` is ``output_blocks.2.1``. A1111 and ComfyUI map these onto SDXL."""
    per_level = LAYERS_PER_BLOCK + 1
    key = DOWN_ATTENTION.sub(
        lambda m: f"lora_unet_input_blocks_{1 + int(m[1]) * per_level + int(m[2])}_1_", key)
    key = UP_ATTENTION.sub(lambda m: f"lora_unet_output_blocks_{int(m[1]) * per_level + int(m[2])}_1_", key)
    return key.replace("lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_")


@dataclass(frozen=True)
class StableDiffusionXL(Family):
    cross_attention_key: str = LDM_UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    pipeline: str = "StableDiffusionXLPipeline"
    pooled: bool = True
    profile_format_version: int = 3  # 2 plus the pooled embeddings
    profile_pipeline: str | None = "StableDiffusionXLPipeline"
    default_guidance: float = 5.0  # StableDiffusionXLPipeline's own

    def accepts_index(self, class_name: str) -> bool:
        return "XL" in class_name and "Refiner" not in class_name and "Img2Img" not in class_name

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def tokenizer_pairs(self, pipe) -> list[tuple[str, object, torch.nn.Module]]:
        return [*super().tokenizer_pairs(pipe), ("tokenizer_2", pipe.tokenizer_2, pipe.text_encoder_2)]

    def pooled_width(self, pipe) -> int | None:
        return pipe.text_encoder_2.config.projection_dim

    def loader_kwargs(self) -> dict:
        return {"add_watermarker": False}

    def assemble(self, *, unet, vae, scheduler, text_encoders: list, tokenizers: list):
        first, second = text_encoders
        return self.pipeline_class()(vae=vae, text_encoder=first, text_encoder_2=second, tokenizer=tokenizers[0],
                                     tokenizer_2=tokenizers[-1], unet=unet, scheduler=scheduler,
                                     add_watermarker=False)

    def _text_folders(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2")

    def _random_text_encoder(self, folder: Path, sub: str):
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        if sub == "text_encoder":
            return super()._random_text_encoder(folder, sub)
        return CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / sub))

    def encode_prompt(self, pipe, device: torch.device, prompt: str) -> Condition:
        """Both encoders' hidden states side by side ``[1, 77, 2048]`` and the pooled ``[1, 1280]``, as fp32."""
        import torch

        from ..conditioning import Condition

        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        return Condition(embeds.float(), pooled.float())

    def encode_negative(self, pipe, device: torch.device, prompt: str) -> Condition:
        """Zeros for an empty negative prompt, as the pipeline's ``force_zeros_for_empty_prompt`` makes it."""
        if not prompt and pipe.config.force_zeros_for_empty_prompt:
            import torch

            return self.encode_prompt(pipe, device, prompt).map(torch.zeros_like)
        return self.encode_prompt(pipe, device, prompt)

    def unet_kwargs(self, condition: Condition, height: int, width: int, dtype: torch.dtype) -> dict:
        embeds = condition.embeds.to(dtype)
        added = {"text_embeds": condition.pooled.to(dtype),
                 "time_ids": time_ids(height, width, embeds.shape[0], embeds.device, dtype)}
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": added}

    def pipeline_kwargs(self, condition: Condition, negative: Condition, dtype: torch.dtype) -> dict:
        return super().pipeline_kwargs(condition, negative, dtype) | {
            "pooled_prompt_embeds": condition.pooled.to(dtype),
            "negative_pooled_prompt_embeds": negative.pooled.to(dtype)}

    def kohya_key(self, key: str) -> str:
        return sgm_name(key)


SDXL = StableDiffusionXL(
    "sdxl", "SDXL (CLIP ViT-L + OpenCLIP ViT-bigG, 2048-d)", 2048, "conditioner.embedders.1.model.", "epsilon",
    "sdxl_base_v1-0", {"epsilon": "stable-diffusion-xl-v1-base", "v_prediction": "stable-diffusion-xl-v1-base"},
)

"""What the UNet is conditioned on: per-token text embeddings and, for SDXL, the pooled text embedding.

SD 1.x/2.x condition on ``embeds`` ``[batch, 77, dim]`` alone. SDXL adds the second text encoder's
pooled projection ``[batch, 1280]`` and the micro-conditioning ``time_ids`` (original size, crop
corner, target size), passed to the UNet as ``added_cond_kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Condition:
    """One prompt's conditioning; Imagic optimizes and interpolates every tensor of it alike."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Condition:
        """``fn`` applied to every tensor."""
        return Condition(fn(self.embeds), None if self.pooled is None else fn(self.pooled))

    def tensors(self) -> list[torch.Tensor]:
        return [self.embeds] if self.pooled is None else [self.embeds, self.pooled]

    def expand(self, batch: int) -> Condition:
        """The same condition for ``batch`` samples (views, no copies)."""
        return self.map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))

    def trainable(self) -> Condition:
        """An fp32 copy whose tensors take gradients, for stage 1."""
        return self.map(lambda tensor: tensor.detach().clone().float().requires_grad_(True))

    def detach(self) -> Condition:
        return self.map(torch.Tensor.detach)


def interpolate(e_new: Condition, e_opt: Condition, alpha: float) -> Condition:
    """Imagic step C: ``α·e_new + (1−α)·e_opt``, for the token and the pooled embeddings alike."""
    embeds = alpha * e_new.embeds + (1 - alpha) * e_opt.embeds
    if e_new.pooled is None or e_opt.pooled is None:
        return Condition(embeds)
    return Condition(embeds, alpha * e_new.pooled + (1 - alpha) * e_opt.pooled)


def concat(conditions: Sequence[Condition]) -> Condition:
    """Conditions stacked along the batch dimension."""
    embeds = torch.cat([c.embeds for c in conditions])
    pooled = [c.pooled for c in conditions]
    return Condition(embeds, None if any(p is None for p in pooled) else torch.cat(pooled))


def time_ids(height: int, width: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning for an uncropped image generated at its own size, as the pipeline makes it."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
    return ids.repeat(batch, 1)


def unet_kwargs(condition: Condition, height: int, width: int, dtype: torch.dtype) -> dict:
    """The UNet's conditioning arguments for a batch at ``height`` × ``width`` pixels."""
    embeds = condition.embeds.to(dtype)
    if condition.pooled is None:
        return {"encoder_hidden_states": embeds}
    batch = embeds.shape[0]
    added = {"text_embeds": condition.pooled.to(dtype),
             "time_ids": time_ids(height, width, batch, embeds.device, dtype)}
    return {"encoder_hidden_states": embeds, "added_cond_kwargs": added}

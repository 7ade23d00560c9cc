"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023): the noise each sampling step adds.

A stochastic sampler (DDIM at η 1, which is DDPM on a subset of timesteps) adds noise at every step.
The edit-friendly inversion picks that noise so that the sampler, started from the stored start latents
with the source condition, lands exactly on the photo's latents: the noise of step ``i`` is the gap
between an independently noised copy of the photo at the next timestep and the sampler's mean step.
Sampled again with another condition, the same noise keeps the photo's structure and background.

This module holds what sampling needs; the inversion itself is :func:`imagic_lora.method.invert_edit_friendly`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .record import EDIT_FRIENDLY

DDIM = "DDIM"


@dataclass
class Start:
    """Where sampling starts: the inverted latents ``[1, C, h, w]`` and, for the edit-friendly inversion, the
    noise each of the sampler's steps adds, ``[steps, C, h, w]`` (None: deterministic DDIM from ``latents``)."""

    latents: torch.Tensor
    noise_maps: torch.Tensor | None = None

    @property
    def method(self) -> str:
        return DDIM if self.noise_maps is None else EDIT_FRIENDLY


class NoiseMapScheduler(DDIMScheduler):
    """DDIM at η 1 whose step ``i`` adds ``noise_maps[i]`` in place of fresh noise.

    Without noise maps, :meth:`mean_step` is the step's noiseless part, which the inversion needs too.
    """

    noise_maps: torch.Tensor | None = None

    def mean_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """The η 1 step without its noise: where the sampler goes before the noise is added.

        Written out rather than taken from ``DDIMScheduler.step(eta=1)``, whose direction term takes the
        square root of a difference that rounds below zero at a zero-SNR first step (NaN).
        """
        x0 = super().step(model_output, timestep, sample, eta=0.0).pred_original_sample
        previous = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha = self.alphas_cumprod[timestep].to(sample.device, torch.float32)
        alpha_prev = (self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha_cumprod)
        alpha_prev = torch.as_tensor(alpha_prev).to(sample.device, torch.float32)
        epsilon = (sample - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        direction = (1 - alpha_prev - variance).clamp(min=0).sqrt()
        return (alpha_prev.sqrt() * x0 + direction * epsilon).to(sample.dtype)

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):
        """The pipeline's step: the mean step plus this step's stored noise (``eta`` and ``generator`` unused)."""
        index = int((self.timesteps == timestep).nonzero()[0, 0])
        noise = self.noise_maps[index].to(sample.device, sample.dtype)
        prev_sample = self.mean_step(model_output, timestep, sample) + noise.expand_as(sample)
        if not return_dict:
            return (prev_sample, None)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=None)


@contextlib.contextmanager
def sampling_with(pipe, start: Start | None) -> Iterator[None]:
    """``pipe`` sampling with ``start``'s noise maps, if it has any; its own scheduler back afterwards."""
    if start is None or start.noise_maps is None:
        yield
        return
    own = pipe.scheduler
    scheduler = NoiseMapScheduler.from_config(own.config)
    scheduler.noise_maps = start.noise_maps.to(pipe.device)  # once, not at every step
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = own

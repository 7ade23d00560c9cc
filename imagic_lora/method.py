"""The Imagic method (Kawar et al. 2022) with a LoRA adapter in place of full fine-tuning.

Three stages share one :func:`diffusion_loss`: optimize the text embedding (A), fine-tune a
LoRA adapter on the UNet (B), interpolate embeddings and generate (C).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import Condition, concat, interpolate
from .config import ApplyConfig, TrainConfig
from .errors import InvalidConfig, TrainingDiverged
from .keep import keep_unchanged
from .lora import add_lora, lora_state_dict, remove_lora
from .models import BaseModel
from .noise_maps import NoiseMapScheduler, Start, sampling_with
from .placement import unet_parked
from .progress import report


@dataclass
class StageResult:
    """What one training stage leaves behind: its losses per step."""

    losses: list[float]

    @property
    def final_loss(self) -> float | None:
        tail = self.losses[-50:]
        return sum(tail) / len(tail) if tail else None


def _autocast(base: BaseModel):
    if base.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(base.device.type, dtype=base.dtype)


def encode_prompt(base: BaseModel, prompt: str) -> Condition:
    """The text conditioning of ``prompt`` via the pipeline's own encoder(s), as fp32 (the family says which)."""
    return base.family.encode_prompt(base.pipe, base.device, prompt)


def encode_negative(base: BaseModel, prompt: str) -> Condition:
    """The unconditional side of guidance, as the family's pipeline makes it."""
    return base.family.encode_negative(base.pipe, base.device, prompt)


@contextlib.contextmanager
def _vae_in_fp32(base: BaseModel):
    """SDXL's VAE overflows in fp16 (its config says ``force_upcast``): run it in fp32 meanwhile."""
    vae = base.pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def encode_image(base: BaseModel, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents of ``pixels`` in [-1, 1], scaled by the VAE's ``scaling_factor``, as fp32."""
    with _vae_in_fp32(base) as vae:
        latents = vae.encode(pixels.to(base.device, vae.dtype)).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict at ``timesteps``: ε or v, as ``scheduler.config.prediction_type`` says."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise InvalidConfig(f"prediction_type {prediction_type!r} is not supported (epsilon or v_prediction)")


def predict(base: BaseModel, latents: torch.Tensor, timesteps, condition: Condition) -> torch.Tensor:
    """The UNet's prediction for ``latents`` at ``timesteps`` under ``condition`` (and what else its family needs)."""
    scale = base.pipe.vae_scale_factor
    height, width = latents.shape[-2] * scale, latents.shape[-1] * scale
    kwargs = base.family.unet_kwargs(condition, height, width, latents.dtype)
    return base.denoiser(latents, timesteps, **kwargs).sample


def diffusion_loss(
    base: BaseModel, latents: torch.Tensor, embedding: Condition, timesteps: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``‖target − f(x_t, t, e)‖²`` with the target ε or v as the scheduler predicts."""
    scheduler = base.pipe.scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    with _autocast(base):
        prediction = predict(base, noisy, timesteps, embedding)
    return F.mse_loss(prediction.float(), target.float())


def random_loss_fn(
    base: BaseModel, latents: torch.Tensor, embedding: Condition, generator: torch.Generator, samples: int = 1
) -> Callable[[], torch.Tensor]:
    """A closure drawing ``samples`` fresh (t, ε) pairs from ``generator`` each call and returning the mean loss."""
    num_timesteps = base.pipe.scheduler.config.num_train_timesteps
    latents = latents.repeat(samples, 1, 1, 1)

    def loss() -> torch.Tensor:
        timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        conditioning = embedding.expand(latents.shape[0])
        return diffusion_loss(base, latents, conditioning, timesteps.to(base.device), noise.to(base.device))

    return loss


def _optimize(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, steps: int, stage: str, lr_option: str,
    progress: bool, scaler: torch.amp.GradScaler,
) -> StageResult:
    """The one training loop: step ``optimizer`` on ``loss_fn`` and stop on a non-finite loss.

    ``scaler`` scales the loss when frozen weights are fp16, so small gradients do not underflow.
    """
    losses: list[float] = []
    bar = tqdm(range(steps), desc=stage, disable=not progress, leave=None, dynamic_ncols=True)  # kept unless nested
    for step in bar:
        loss = loss_fn()
        value = loss.item()
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"{stage}: loss became {value} at step {step + 1}; nothing was saved. Try: a lower {lr_option}"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        report(stage, step + 1, steps, value)
    return StageResult(losses)


@contextlib.contextmanager
def _with_training_mode(base: BaseModel, checkpointing: bool):
    """The denoiser in train mode (checkpointing only acts there), back to eval mode afterwards."""
    denoiser = base.denoiser
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    try:
        yield
    finally:
        denoiser.eval()
        if checkpointing:
            denoiser.disable_gradient_checkpointing()


def _grad_scaler(base: BaseModel) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(base.device.type, enabled=base.dtype == torch.float16)


def _checkpointing(base: BaseModel, config: TrainConfig) -> bool:
    if config.gradient_checkpointing is None:
        return base.device.type == "cuda"
    return config.gradient_checkpointing


def optimize_embedding(
    base: BaseModel, latents: torch.Tensor, embedding: Condition, config: TrainConfig,
    generator: torch.Generator, progress: bool = True,
) -> tuple[Condition, StageResult]:
    """Imagic step A: with the UNet frozen, fit the text embedding (SDXL: and the pooled one) to the image (Adam)."""
    e_opt = embedding.trainable()
    optimizer = torch.optim.Adam(e_opt.tensors(), lr=config.embedding_lr)
    loss_fn = random_loss_fn(base, latents, e_opt, generator, config.samples_per_step)
    with _with_training_mode(base, _checkpointing(base, config)):
        result = _optimize(
            loss_fn, optimizer, config.embedding_steps, "stage 1/2 embedding", "--embedding-lr", progress,
            _grad_scaler(base),
        )
    return e_opt.detach(), result


def finetune_lora(
    base: BaseModel, latents: torch.Tensor, e_opt: Condition, config: TrainConfig,
    generator: torch.Generator, progress: bool = True,
) -> tuple[dict[str, torch.Tensor], StageResult]:
    """Imagic step B: with e_opt frozen, train a LoRA adapter on the UNet's attention projections."""
    with torch.random.fork_rng(devices=[]):  # the adapter's random init follows config.seed too
        torch.manual_seed(config.seed)
        params = add_lora(base.denoiser, config.rank, config.lora_alpha)
    try:
        optimizer = make_optimizer(params, config)
        loss_fn = random_loss_fn(base, latents, e_opt.detach(), generator, config.samples_per_step)
        with _with_training_mode(base, _checkpointing(base, config)):
            result = _optimize(
                loss_fn, optimizer, config.lora_steps, "stage 2/2 LoRA", "--lora-lr", progress, _grad_scaler(base)
            )
        return lora_state_dict(base.denoiser), result
    finally:
        remove_lora(base.denoiser)


def finetune_full(
    base: BaseModel, latents: torch.Tensor, e_opt: Condition, steps: int, lr: float,
    generator: torch.Generator, progress: bool = True,
) -> StageResult:
    """Classic Imagic step B, for comparison: fine-tune every UNet weight with fp32 Adam, no checkpointing.

    Changes ``base.denoiser`` in place; callers keep a copy of its weights to restore.
    """
    denoiser = base.denoiser
    denoiser.requires_grad_(True)
    try:
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
        loss_fn = random_loss_fn(base, latents, e_opt.detach(), generator)
        with _with_training_mode(base, checkpointing=False):
            return _optimize(loss_fn, optimizer, steps, "classic UNet", "the learning rate", progress,
                             _grad_scaler(base))
    finally:
        denoiser.requires_grad_(False)


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """bitsandbytes ``AdamW8bit`` (default) or torch ``AdamW`` over the LoRA parameters."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lora_lr)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise InvalidConfig(
            "--optimizer adamw8bit needs bitsandbytes. Try: pip install bitsandbytes, or --optimizer adamw"
        ) from None
    return bnb.optim.AdamW8bit(params, lr=config.lora_lr)


@torch.no_grad()
def invert(base: BaseModel, latents: torch.Tensor, e_opt: Condition, steps: int,
           progress: bool = True) -> Start:
    """DDIM inversion of ``latents`` under ``e_opt`` without guidance: the start that deterministic DDIM
    sampling with ``steps`` steps takes back to the image at low guidance. Fuse the adapter first, as for
    sampling.

    The scheduler is diffusers' ``DDIMInverseScheduler`` built from the model's own scheduler config.
    """
    accepted = inspect.signature(DDIMInverseScheduler.__init__).parameters  # SDXL's config has Euler-only keys
    config = {key: value for key, value in base.pipe.scheduler.config.items() if key in accepted}
    scheduler = DDIMInverseScheduler.from_config(config)
    scheduler.set_timesteps(steps, device=base.device)
    x = latents.to(base.device, base.dtype)
    condition = e_opt.map(lambda tensor: tensor.to(base.device, base.dtype))
    with _autocast(base):
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="inverting", disable=not progress, leave=None,
                                   dynamic_ncols=True)):
            prediction = predict(base, x, t, condition)
            x = scheduler.step(prediction, t, x).prev_sample
            report("inverting", i + 1, steps)
    return Start(x.float().cpu())


def guided_prediction(base: BaseModel, latents: torch.Tensor, t, condition: Condition, negative: Condition,
                      guidance: float) -> torch.Tensor:
    """The prediction the pipeline samples with: classifier-free guidance above 1, the condition alone else."""
    if guidance <= 1:
        return predict(base, latents, t, condition)
    both = predict(base, torch.cat([latents, latents]), t, concat([negative, condition]))
    unconditional, conditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


@torch.no_grad()
def invert_edit_friendly(
    base: BaseModel, latents: torch.Tensor, e_opt: Condition, negative: Condition, steps: int, guidance: float,
    seed: int = 0, progress: bool = True,
) -> Start:
    """The edit-friendly DDPM inversion of ``latents`` under ``e_opt`` at ``guidance`` (negative: ``negative``):
    a start and one noise map per step with which the pipeline, sampling ``steps`` steps at that guidance from
    ``e_opt``, gives ``latents`` back. Fuse the adapter first, as for sampling.

    The photo is noised independently to every timestep (noise drawn from ``seed``); each map is what the
    sampler's mean step misses of the next one. Maps are rounded to fp16, as stored, before the next step, so
    sampling with the stored maps follows this very path.
    """
    scheduler = NoiseMapScheduler.from_config(base.pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=base.device)
    x0 = latents.to(base.device, base.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    noised = [scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator).to(x0), t.reshape(1))
              for t in scheduler.timesteps]
    condition, negative = (c.map(lambda tensor: tensor.to(base.device, base.dtype)) for c in (e_opt, negative))
    stored_start = noised[0].half()  # sampling starts from the stored fp16 copy, so the inversion does too
    x, maps = stored_start.to(x0.dtype), []
    with _autocast(base):
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="inverting", disable=not progress, leave=None,
                                   dynamic_ncols=True)):
            target = noised[i + 1] if i + 1 < len(noised) else x0
            mean = scheduler.mean_step(guided_prediction(base, x, t, condition, negative, guidance), t, x)
            noise = (target - mean).half()
            x = mean + noise.to(mean.dtype)
            maps.append(noise)
            report("inverting", i + 1, steps)
    return Start(stored_start.float().cpu(), torch.cat(maps).float().cpu())


def inverted_start(base: BaseModel, latents: torch.Tensor, e_opt: Condition, config: ApplyConfig,
                   progress: bool = True) -> Start | None:
    """The start ``config.start`` names, computed from the photo's ``latents`` for ``config``'s steps, guidance
    and negative prompt (None: seeded noise). Fuse the adapter first."""
    if config.start == "noise":
        return None
    config = config.for_model(base.default_guidance)
    if config.start == "ddim":
        return invert(base, latents, e_opt, config.steps, progress)
    negative = encode_negative(base, config.negative_prompt)
    return invert_edit_friendly(base, latents, e_opt, negative, config.steps, config.guidance, progress=progress)


REGION_STEP = 0.7  # where in the noise schedule the two conditions' predictions are compared (0: clean, 1: noise)
REGION_DRAWS = 4  # noisings of the photo averaged over


@torch.no_grad()
def edit_region(base: BaseModel, latents: torch.Tensor, e_opt: Condition, condition: Condition,
                seed: int = 0) -> torch.Tensor:
    """``[h, w]`` on the latent grid, in [0, 1]: where the edit's ``condition`` changes what the model predicts
    for the photo, relative to the most it changes anywhere (DiffEdit, Couairon et al. 2022).

    The photo's ``latents`` are noised :data:`REGION_DRAWS` times at :data:`REGION_STEP` of the schedule (noise
    from ``seed``); the mean absolute difference of the predictions under ``e_opt`` and under ``condition``,
    over channels and draws, is scaled so its smallest value is 0 and its largest 1. A local prompt gives a
    peak where it applies; a prompt about the whole picture a spread map. Fuse the adapter first.
    """
    scheduler = base.pipe.scheduler
    x0 = latents.to(base.device, base.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    timesteps = torch.full((2,), int(REGION_STEP * scheduler.config.num_train_timesteps), device=base.device)
    both = concat([e.map(lambda tensor: tensor.to(base.device, base.dtype)) for e in (e_opt, condition)])
    difference = torch.zeros(x0.shape[-2:], device=base.device)
    for _ in range(REGION_DRAWS):  # one pair at a time: no more memory than a step of guided sampling
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        noisy = scheduler.add_noise(x0, noise, timesteps[:1]).expand(2, -1, -1, -1)
        with _autocast(base):
            under_photo, under_edit = predict(base, noisy, timesteps, both).float().chunk(2)
        difference += (under_photo - under_edit).abs().mean(dim=(0, 1)) / REGION_DRAWS
    low, high = difference.min(), difference.max()
    return ((difference - low) / (high - low).clamp_min(1e-8)).cpu()


@torch.no_grad()
def decode_latents(base: BaseModel, latents: torch.Tensor) -> Image.Image:
    """The image of scaled VAE ``latents`` ``[1, C, h, w]``, as the pipeline decodes its own."""
    with _vae_in_fp32(base) as vae:
        pixels = vae.decode(latents.to(base.device, vae.dtype) / vae.config.scaling_factor).sample
    return base.pipe.image_processor.postprocess(pixels, output_type="pil")[0]  # in the VAE's dtype, as it does


@torch.no_grad()
def generate(
    base: BaseModel, e_opt: Condition, prompt: str, config: ApplyConfig, resolution: int, progress: bool = True,
    start: Start | None = None, photo: Image.Image | None = None, photo_latents: torch.Tensor | None = None,
) -> list[tuple[float, int, Image.Image]]:
    """Imagic step C: sample every (α, seed) through the standard pipeline via ``prompt_embeds`` (SDXL: and
    ``pooled_prompt_embeds``).

    Fuse an adapter into ``base`` first (:func:`imagic_lora.lora.fused_lora`) to edit with it. Sampling
    starts from seeded noise, or from ``start`` (the input's inversion, with its noise maps) when given. With
    ``photo`` (the input as the model sees it) and ``config.keep``, its pixels are put back where the edit left
    it alone; with its ``photo_latents`` too, the keep step also knows the region the edit's condition changes
    (:func:`edit_region`, four more model calls in pairs per α). With ``config.memory`` low
    (:func:`imagic_lora.api.apply_prompts` decides auto), each image is decoded apart with the UNet off the
    device; otherwise the pipeline decodes the batch with everything resident.
    """
    apart = config.memory == "low"
    config = config.for_model(base.default_guidance)
    e_new = encode_prompt(base, prompt)
    negative = encode_negative(base, config.negative_prompt)
    e_opt = e_opt.map(lambda tensor: tensor.to(base.device))
    jobs = [(alpha, seed) for alpha in config.alphas for seed in config.seed_list]
    results, regions = [], {}
    bar = tqdm(total=len(jobs), desc="generating", unit="image", disable=not progress, leave=None, dynamic_ncols=True)
    for first in range(0, len(jobs), config.batch_size):
        batch = jobs[first : first + config.batch_size]
        condition = concat([interpolate(e_new, e_opt, alpha) for alpha, _ in batch])
        latents = None if start is None else start.latents.to(base.device, base.dtype).expand(len(batch), -1, -1, -1)
        with sampling_with(base.pipe, start):
            images = base.pipe(
                **pipeline_conditioning(base, condition, negative.expand(len(batch))),
                num_inference_steps=config.steps,
                guidance_scale=config.guidance,
                generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in batch],
                latents=latents,
                height=resolution,
                width=resolution,
                output_type="latent" if apart else "pil",
            ).images
        if apart:
            with unet_parked(base):
                images = [decode_latents(base, latent[None]) for latent in images]
        if photo is not None and config.keep:
            for alpha in {alpha for alpha, _ in batch} - regions.keys():
                regions[alpha] = None if photo_latents is None else edit_region(
                    base, photo_latents, e_opt, interpolate(e_new, e_opt, alpha))
            images = [keep_unchanged(image, photo, config.keep_threshold, regions[alpha])
                      for image, (alpha, _) in zip(images, batch, strict=True)]
        results += [(alpha, seed, image) for (alpha, seed), image in zip(batch, images, strict=True)]
        bar.update(len(batch))
        report("generating", len(results), len(jobs))
    bar.close()
    return results


def pipeline_conditioning(base: BaseModel, condition: Condition, negative: Condition) -> dict:
    """The pipeline's embedding arguments for ``condition`` and the unconditional ``negative``, in its dtype."""
    return base.family.pipeline_kwargs(condition, negative, base.dtype)

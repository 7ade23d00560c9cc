"""The training recipe: which memory savings a run pays for, chosen from the model, the size and the device.

Each saving costs time: gradient checkpointing recomputes the UNet's forward pass in backward, the 8-bit
optimizer dequantizes its state every step, and offloading moves the encoders off the device and back.
An 8 GB card needs them all; a 24 or 80 GB card needs none. ``--memory auto`` (the default) estimates
what the fastest recipe needs and takes the first of these that fits the free memory with headroom:

- ``fast``: no checkpointing, fp32 AdamW, encoders left on the device;
- ``offloaded``: the same with the VAE and text encoders off the device while the UNet trains;
- ``lean``: checkpointing, 8-bit AdamW, encoders off the device: the recipe every earlier version used.

``--memory low`` and ``--memory high`` ask for ``lean`` and ``fast`` outright; an explicit
``--[no-]gradient-checkpointing``, ``--optimizer`` or ``--[no-]offload-encoders`` always wins. On the CPU,
``auto`` keeps what the CPU always ran (no checkpointing, 8-bit AdamW): there is no device memory to save.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .record import Recipe

if TYPE_CHECKING:
    from .config import TrainConfig
    from .models import BaseModel

GIB = 2**30
# Activations of a frozen UNet's forward and backward without checkpointing, per byte of its weights at its
# native size: 0.48 (SD 1.5), 0.98 (SD 2.1) and 1.06 (SDXL) from the classic recipe's stage-1 peaks on an H100
# (docs/bench/train-*-h100.json, fp32, minus every fp32 weight); rounded up, as an estimate until measured.
ACTIVATIONS_PER_WEIGHT_BYTE = 1.1
HEADROOM = 1.5  # the estimate times this must be free: fragmentation, the LoRA's state, an estimate's error
LEVELS = {  # name: (gradient checkpointing, optimizer, offload encoders), fastest first
    "fast": (False, "adamw", False),
    "offloaded": (False, "adamw", True),
    "lean": (True, "adamw8bit", True),
}
SWITCHES = {**LEVELS, "cpu": (False, "adamw8bit", True)}  # the CPU: what it always ran (offloading is a no-op)


def weight_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def model_bytes(base: BaseModel) -> tuple[int, int]:
    """The bytes of the loaded UNet's weights, and of the VAE's and text encoders' together."""
    return weight_bytes([base.denoiser]), weight_bytes([base.pipe.vae, *base.text_encoders])


def estimated_needs(unet_bytes: int, encoder_bytes: int, pixel_ratio: float) -> dict[str, float]:
    """Bytes the fast and offloaded levels are estimated to need, headroom included, for a UNet and encoders of
    these sizes at ``pixel_ratio`` times the native pixel count; the lean level is what remains when neither fits."""
    activations = ACTIVATIONS_PER_WEIGHT_BYTE * unet_bytes * pixel_ratio
    fast = unet_bytes + encoder_bytes + activations
    return {"fast": fast * HEADROOM, "offloaded": (fast - encoder_bytes) * HEADROOM}


def choose_level(memory: str, needs: dict[str, float], free: int | None) -> str:
    """The level ``memory`` asks for, given each level's need and the bytes the run may use (None: the CPU)."""
    if memory == "low":
        return "lean"
    if memory == "high":
        return "fast"
    if free is None:
        return "cpu"
    return next((level for level, need in needs.items() if need <= free), "lean")


def resolve(config: TrainConfig, base: BaseModel, resolution: int) -> tuple[TrainConfig, Recipe]:
    """``config`` with its three memory switches decided, and the record of how."""
    free = device_free_bytes(base)
    unet_bytes, encoder_bytes = model_bytes(base)
    needs = estimated_needs(unet_bytes, encoder_bytes, (resolution / base.native_resolution) ** 2)
    resident = 0 if free is None else unet_bytes + encoder_bytes  # loaded already: not in the free figure
    level = choose_level(config.memory, needs, None if free is None else free + resident)
    checkpointing, optimizer, offload = SWITCHES[level]
    explicit = {"gradient_checkpointing": config.gradient_checkpointing, "optimizer": config.optimizer,
                "offload_encoders": config.offload_encoders}
    chosen = {"gradient_checkpointing": checkpointing, "optimizer": optimizer, "offload_encoders": offload}
    decided = {key: chosen[key] if value is None else value for key, value in explicit.items()}
    if all(value is not None for value in explicit.values()):
        level = "explicit"
    needed = needs.get(level)
    recipe = Recipe(memory=config.memory, level=level, **decided,
                    free_gib=None if free is None else round((free + resident) / GIB, 2),
                    needed_gib=None if needed is None or free is None else round(needed / GIB, 2))
    return replace(config, **decided), recipe


def device_free_bytes(base: BaseModel) -> int | None:
    """The free memory of the model's CUDA device; None elsewhere (the CPU has no device memory to save)."""
    if base.device.type != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(base.device)
    return free



# Sampling: the UNet's inference activations per image and per byte of its weights at the native size (guidance
# doubles the batch), an estimate; and the fp32 VAE decoder's per output pixel, from plain SDXL sampling of two
# 1024 px images on an H100, which peaked 4.1 GiB above its weights (docs/bench/gpu-check-h100.json). The two
# are not alive at once: the pipeline decodes after its last step.
SAMPLING_ACTIVATIONS_PER_WEIGHT_BYTE = 0.1
DECODE_BYTES_PER_PIXEL = 2048


def sampling_need(unet_bytes: int, other_bytes: int, pixel_ratio: float, pixels: int, images: int) -> float:
    """Bytes sampling ``images`` at once is estimated to need with every part of the pipeline resident,
    headroom included."""
    sampling = SAMPLING_ACTIVATIONS_PER_WEIGHT_BYTE * unet_bytes * pixel_ratio * 2 * images
    return (unet_bytes + other_bytes + max(sampling, DECODE_BYTES_PER_PIXEL * pixels * images)) * HEADROOM


def decodes_apart(memory: str, base: BaseModel, resolution: int, images: int) -> tuple[bool, str | None]:
    """Whether apply should decode each image with the UNet off the device (``memory`` low, or auto on a GPU
    whose free memory the estimate for everything resident exceeds), and the line that says why (None: no)."""
    if memory == "high":
        return False, None
    if memory == "low":
        return True, "memory: low (the UNet leaves the device while the VAE decodes)"
    free = device_free_bytes(base)
    if free is None:
        return False, None
    unet_bytes, other_bytes = model_bytes(base)
    need = sampling_need(unet_bytes, other_bytes, (resolution / base.native_resolution) ** 2, resolution**2, images)
    available = free + unet_bytes + other_bytes
    if need <= available:
        return False, None
    return True, (f"memory: low, chosen by auto ({available / GIB:.1f} GiB free, about {need / GIB:.1f} needed "
                  "with everything resident): the UNet leaves the device while the VAE decodes")

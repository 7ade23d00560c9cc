"""The PEFT LoRA adapter on the UNet's attention projections, in diffusers key naming."""

from __future__ import annotations

import contextlib

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from .errors import IncompatibleProfile

ADAPTER = "imagic"
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
PREFIX = "unet."


def lora_config(rank: int, alpha: float) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES)
    )


def add_lora(unet: torch.nn.Module, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """Attach a fresh adapter; return its parameters, kept in fp32 whatever the UNet's dtype."""
    unet.add_adapter(lora_config(rank, alpha), adapter_name=ADAPTER)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    return params


def remove_lora(unet: torch.nn.Module) -> None:
    """Detach the adapter, leaving the base UNet exactly as it was."""
    if getattr(unet, "_hf_peft_config_loaded", False) and ADAPTER in unet.peft_config:
        unet.delete_adapters(ADAPTER)


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with diffusers key names (``unet.<module>.lora.down.weight``)."""
    peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    return {PREFIX + key: value.detach().float().cpu().clone()
            for key, value in convert_state_dict_to_diffusers(peft_state).items()}


DOWN, UP = ".lora.down.weight", ".lora.up.weight"


def _target_linears(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The attention projections an adapter trains, by module path (inside PEFT's wrappers, if any are left)."""
    found = {}
    for name, module in unet.named_modules():
        if name.endswith(tuple("." + t for t in TARGET_MODULES)):
            layer = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if isinstance(layer, torch.nn.Linear):
                found[name] = layer
    return found


def _pairs(unet: torch.nn.Module, state: dict[str, torch.Tensor], rank: int):
    """``(linear, down, up)`` for every target layer, refusing a key or shape that does not fit ``unet``."""
    linears = _target_linears(unet)
    expected = {}
    for path, linear in linears.items():
        expected[PREFIX + path + DOWN] = (rank, linear.in_features)
        expected[PREFIX + path + UP] = (linear.out_features, rank)
    given = {key: tuple(value.shape) for key, value in state.items()}
    for key in sorted(set(expected) | set(given)):
        if expected.get(key) != given.get(key):
            raise IncompatibleProfile(
                f"the profile's adapter does not fit this model ({key}: profile {given.get(key)}, "
                f"model {expected.get(key)}). Try: the base model the profile was trained on"
            )
    return [(linear, state[PREFIX + path + DOWN], state[PREFIX + path + UP]) for path, linear in linears.items()]


ROOM_LEFT = 0.5  # the share of the accelerator that must stay free for the originals to wait on it


def keeps_room(needed: int, free: int, total: int) -> bool:
    """Whether a copy of ``needed`` bytes leaves at least :data:`ROOM_LEFT` of the device's ``total`` free."""
    return free - needed >= ROOM_LEFT * total


def originals_device(weights: list[torch.Tensor]) -> torch.device:
    """Where the original weights wait while an adapter is fused: on their own CUDA device when a copy leaves
    half of it free (no round trip through host memory), otherwise on the CPU, so that a small card never
    holds two copies."""
    device = weights[0].device if weights else torch.device("cpu")
    if device.type != "cuda":
        return torch.device("cpu")
    free, total = torch.cuda.mem_get_info(device)
    needed = sum(weight.numel() * weight.element_size() for weight in weights)
    return device if keeps_room(needed, free, total) else torch.device("cpu")


@contextlib.contextmanager
def fused_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], rank: int, alpha: float,
               low_memory: bool = False):
    """Add the adapter's update ``alpha/rank · up @ down`` into the UNet's weights for sampling.

    Sampling then costs what plain sampling costs. The original weights wait where
    :func:`originals_device` says (beside them on a roomy GPU, else on the CPU; with ``low_memory``
    always on the CPU) and are put back exactly afterwards: copies, not an inverse, since adding the update
    in half precision rounds.
    """
    pairs = _pairs(unet, state, rank)
    weights = [linear.weight for linear, _, _ in pairs]
    place = torch.device("cpu") if low_memory else originals_device(weights)
    originals: list[tuple[torch.nn.Linear, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for linear, down, up in pairs:
                weight = linear.weight.data
                update = (alpha / rank) * (up.float() @ down.float())
                originals.append((linear, weight.to(place, copy=True)))
                linear.weight.data = (weight.float() + update.to(weight.device)).to(weight.dtype)
        yield
    finally:
        for linear, original in originals:
            linear.weight.data = original.to(linear.weight.device)

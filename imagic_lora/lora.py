"""The PEFT LoRA adapter on the UNet's attention projections, in diffusers key naming."""

from __future__ import annotations

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

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


def expected_shapes(unet: torch.nn.Module, rank: int, alpha: float) -> dict[str, tuple[int, ...]]:
    """The key names and shapes an adapter of this rank must have on ``unet``."""
    add_lora(unet, rank, alpha)
    try:
        return {key: tuple(value.shape) for key, value in lora_state_dict(unet).items()}
    finally:
        remove_lora(unet)


def load_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
    """Attach an adapter to ``unet`` and load ``state`` into it, refusing any shape mismatch."""
    expected = expected_shapes(unet, rank, alpha)
    given = {key: tuple(value.shape) for key, value in state.items()}
    for key in sorted(set(expected) | set(given)):
        if expected.get(key) != given.get(key):
            raise IncompatibleProfile(
                f"the profile's adapter does not fit this model ({key}: profile {given.get(key)}, "
                f"model {expected.get(key)}). Try: the base model the profile was trained on"
            )
    add_lora(unet, rank, alpha)
    peft_state = convert_unet_state_dict_to_peft({k[len(PREFIX):]: v for k, v in state.items()})
    set_peft_model_state_dict(unet, peft_state, adapter_name=ADAPTER)
    unet.requires_grad_(False)

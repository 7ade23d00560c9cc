"""The profile's adapter as a plain LoRA file for other Stable Diffusion tools."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
from safetensors.torch import save_file

from .errors import InvalidConfig
from .lora import PREFIX, lora_config
from .profile import Profile

LORA_FORMATS = ("diffusers", "kohya")


def _peft_state(profile: Profile) -> dict[str, torch.Tensor]:
    """The adapter in PEFT naming (``<module>.lora_A.weight``), fp16, without the ``unet.`` prefix."""
    unprefixed = {key[len(PREFIX) :]: value.half() for key, value in profile.lora.items()}
    return convert_unet_state_dict_to_peft(unprefixed)


def export_lora(profile: Profile, path: str | Path, format: str = "diffusers") -> Path:
    """Write the adapter alone: ``diffusers`` for ``load_lora_weights``, ``kohya`` for A1111 and ComfyUI.

    The optimized embedding is not part of a plain LoRA file; see profiles/FORMAT.md.
    """
    path = Path(path)
    if format not in LORA_FORMATS:
        raise InvalidConfig(f"--format must be one of {', '.join(LORA_FORMATS)}, got {format!r}")
    if path.is_dir():
        raise InvalidConfig(f"{path} is a folder. Try: a file name ending in .safetensors")
    state = _peft_state(profile)
    if format == "diffusers":
        config = lora_config(profile.rank, profile.lora_alpha).to_dict()
        StableDiffusionPipeline.save_lora_weights(
            path.parent, unet_lora_layers=state, weight_name=path.name, unet_lora_adapter_metadata=config
        )
        return path
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in state.items()})
    # diffusers writes alpha = rank; the profile's own alpha keeps the adapter's scale.
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(profile.lora_alpha))
    save_file(kohya, path, metadata={"ss_network_dim": str(profile.rank), "ss_network_alpha": str(profile.lora_alpha)})
    return path

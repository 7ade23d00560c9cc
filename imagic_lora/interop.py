"""The profile's adapter as a plain LoRA file for other Stable Diffusion tools."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
from safetensors.torch import save_file

from .errors import InvalidConfig
from .families import published
from .files import atomic_write, check_file
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
    if format not in LORA_FORMATS:
        raise InvalidConfig(f"--format must be one of {', '.join(LORA_FORMATS)}, got {format!r}")
    path = check_file(path, f"{profile.name}-lora.safetensors")
    state = _peft_state(profile)
    family = profile.family
    if format == "diffusers":
        config = lora_config(profile.rank, profile.lora_alpha).to_dict()
        return atomic_write(path, lambda part: family.pipeline_class().save_lora_weights(
            part.parent, unet_lora_layers=state, weight_name=part.name, unet_lora_adapter_metadata=config))
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in state.items()})
    kohya = {family.kohya_key(key): value for key, value in kohya.items()}
    # diffusers writes alpha = rank; the profile's own alpha keeps the adapter's scale.
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(profile.lora_alpha))
    return atomic_write(path, lambda part: save_file(kohya, part, metadata=kohya_metadata(profile)))


def kohya_metadata(profile: Profile) -> dict[str, str]:
    """The header sd-scripts writes, so A1111, ComfyUI and model sites classify the file.

    The base model version follows sd-scripts (``sd_v1``, ``sd_v2``, ``sdxl_base_v1-0``, ``_v`` for v-prediction) and
    the architecture the Stability AI model spec; both are left out for a base of neither family.
    """
    resolution = profile.resolution
    metadata = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(profile.rank),
        "ss_network_alpha": str(profile.lora_alpha), "ss_output_name": profile.name,
        "modelspec.sai_model_spec": "1.0.0", "modelspec.title": profile.name,
        "modelspec.resolution": f"{resolution}x{resolution}",
    }
    family = published(profile.family, profile.e_opt.shape[-1])
    if family is not None:
        prediction = profile.metadata.settings.training.prediction_type or family.prediction_type
        metadata["ss_base_model_version"] = family.kohya_version + ("_v" if prediction == "v_prediction" else "")
        metadata["modelspec.architecture"] = f"{family.modelspec[prediction]}/lora"
    return metadata

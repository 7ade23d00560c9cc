"""Write a diffusers SD 1.x, 2.x or XL pipeline as an original-format (LDM / CompVis / SGM) single-file checkpoint.

The inverse of what ``from_single_file`` reads, for tests: a user's ``.safetensors`` checkpoint is
in this layout. Key names follow the original Stable Diffusion repository.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _rename_parts(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, layers: int = 2, attended_up_blocks: frozenset[int] = frozenset({1, 2, 3})) -> str:
    """A diffusers UNet key in the LDM UNet's naming (without the ``model.diffusion_model.`` prefix).

    ``attended_up_blocks``: the up blocks with attentions, whose upsampler comes third in its slot.
    """
    parts = key.split(".")
    for new, old in UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
        slot = block * (layers + 1) + index + 1
        return f"input_blocks.{slot}.0.{_rename_parts(rest, RESNET)}" if kind == "resnets" \
            else f"input_blocks.{slot}.1.{rest}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return f"middle_block.{2 * index}.{_rename_parts(rest, RESNET)}" if kind == "resnets" \
            else f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":
            slot = block * (layers + 1) + layers
            return f"output_blocks.{slot}.{2 if block in attended_up_blocks else 1}.{rest}"
        slot = block * (layers + 1) + index
        return f"output_blocks.{slot}.0.{_rename_parts(rest, RESNET)}" if kind == "resnets" \
            else f"output_blocks.{slot}.1.{rest}"
    raise KeyError(key)


def vae_key(key: str, blocks: int = 4) -> str:
    """A diffusers VAE key in the LDM autoencoder's naming (without the ``first_stage_model.`` prefix)."""
    side, rest = key.split(".", 1) if key.startswith(("encoder.", "decoder.")) else ("", key)
    parts = rest.split(".")
    prefix = side + "." if side else ""
    if parts[0] in ("conv_norm_out",):
        return prefix + "norm_out." + ".".join(parts[1:])
    if parts[0] in ("down_blocks", "up_blocks"):
        block = int(parts[1]) if parts[0] == "down_blocks" else blocks - 1 - int(parts[1])
        name = "down" if parts[0] == "down_blocks" else "up"
        if parts[2] in ("downsamplers", "upsamplers"):
            return f"{prefix}{name}.{block}.{name}sample.{'.'.join(parts[4:])}"
        tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{prefix}{name}.{block}.block.{parts[3]}.{tail}"
    if parts[0] == "mid_block" and parts[1] == "resnets":
        tail = ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
        return f"{prefix}mid.block_{int(parts[2]) + 1}.{tail}"
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return f"{prefix}mid.attn_1.{_rename_parts('.'.join(parts[3:]), VAE_ATTENTION)}"
    return prefix + rest


OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
OPEN_CLIP_FIXED = {"embeddings.token_embedding.weight": "token_embedding.weight",
                   "embeddings.position_embedding.weight": "positional_embedding",
                   "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """SD 1.x: OpenAI CLIP under ``cond_stage_model.transformer.text_model.``."""
    return {"cond_stage_model.transformer.text_model." + key.removeprefix("text_model."): value
            for key, value in text_encoder.state_dict().items()}


def open_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """SD 2.x: OpenCLIP under ``cond_stage_model.model.``, q/k/v packed into one ``in_proj``."""
    state = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()
             if not key.startswith("text_projection.")}  # SDXL writes its projection in OpenCLIP's form
    out = {}
    for key, value in state.items():
        if key in OPEN_CLIP_FIXED:
            out[OPEN_CLIP_FIXED[key]] = value
            continue
        layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
        block = f"transformer.resblocks.{layer}."
        if rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[block + f"attn.in_proj_{kind}"] = torch.cat(parts)
        elif not rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            out[block + _rename_parts(rest, OPEN_CLIP_LAYER)] = value
    return {"cond_stage_model.model." + key: value for key, value in out.items()}


def sdxl_text_state_dict(pipe) -> dict[str, torch.Tensor]:
    """SDXL: CLIP ViT-L under ``conditioner.embedders.0.transformer.``, OpenCLIP bigG under
    ``conditioner.embedders.1.model.`` with its projection as the matrix OpenCLIP multiplies by."""
    first = {key.replace("cond_stage_model.", "conditioner.embedders.0.", 1): value
             for key, value in clip_state_dict(pipe.text_encoder).items()}
    second = {key.replace("cond_stage_model.", "conditioner.embedders.1.", 1): value
              for key, value in open_clip_state_dict(pipe.text_encoder_2).items()}
    second["conditioner.embedders.1.model.text_projection"] = pipe.text_encoder_2.text_projection.weight.T
    return {**first, **second}


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder weights under original SD 1.x / 2.x / XL key names."""
    layers = pipe.unet.config.layers_per_block
    attended = frozenset(i for i, kind in enumerate(pipe.unet.config.up_block_types) if kind.startswith("CrossAttn"))
    state = {"model.diffusion_model." + unet_key(k, layers, attended): v for k, v in pipe.unet.state_dict().items()}
    for key, value in pipe.vae.state_dict().items():
        if ".mid_block.attentions." in key and value.dim() == 2:
            value = value[:, :, None, None]  # the original autoencoder's attention projections are 1x1 convs
        state["first_stage_model." + vae_key(key, len(pipe.vae.config.block_out_channels))] = value
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(sdxl_text_state_dict(pipe))
    elif pipe.text_encoder.config.hidden_size == 1024:
        state.update(open_clip_state_dict(pipe.text_encoder))
    else:
        state.update(clip_state_dict(pipe.text_encoder))
    return {key: value.contiguous() for key, value in state.items()}


def write_single_file(pipe, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    save_file({**ldm_state_dict(pipe), **(extra or {})}, str(path))
    return path

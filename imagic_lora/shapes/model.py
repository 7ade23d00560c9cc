"""The shapes model: Stable Diffusion's component types at miniature size, weights shipped as package data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..errors import ModelLoadError
from ..families import SD15

SHAPES_MODEL = "builtin:shapes"
CONTEXT = 32  # tokens: the longest caption is 26
WEIGHTS = "shapes-model.safetensors"


def _data(*parts: str):
    return resources.files("imagic_lora").joinpath("data", "shapes", *parts)


def shapes_tokenizer() -> CLIPTokenizer:
    with resources.as_file(_data("tokenizer")) as path:
        return CLIPTokenizer.from_pretrained(str(path), model_max_length=CONTEXT)


def build_components(scaling_factor: float = 1.0) -> dict:
    """Untrained components with the shapes model's architecture."""
    tokenizer = shapes_tokenizer()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=32, scaling_factor=scaling_factor,
    )
    unet = UNet2DConditionModel(
        # four levels, as in SD, down to 2x2: the deepest features see the whole image, so position can be learnt
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CONTEXT, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    # SD's betas rescaled to zero terminal SNR, with v-prediction (Lin et al. 2023): the last noise level
    # holds no trace of the image, so the layout must come from the prompt, and v's loss weights the
    # high-noise steps where layout is decided.
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                              timestep_spacing="trailing", steps_offset=1)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_weights(components: dict, path) -> None:
    """All trainable weights in one fp16 safetensors file, the VAE scaling factor in its metadata."""
    tensors = {}
    for name in ("vae", "unet", "text_encoder"):
        for key, value in components[name].state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().half().contiguous()
    save_file(tensors, str(path), metadata={"scaling_factor": str(components["vae"].config.scaling_factor)})


def shapes_pipeline(weights: str | Path | None = None):
    """The trained shapes model, loaded offline from package data (or from another ``weights`` file)."""
    with resources.as_file(_data(WEIGHTS)) as shipped:
        path = Path(weights) if weights else shipped
        if not path.is_file():
            raise ModelLoadError(f"the shapes model weights are missing ({path}). Try: python scripts/train_shapes.py")
        with safe_open(str(path), framework="pt") as f:
            scaling_factor = float(f.metadata()["scaling_factor"])
        tensors = load_file(str(path))
    components = build_components(scaling_factor)
    for name in ("vae", "unet", "text_encoder"):
        prefix = name + "."
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        components[name].load_state_dict(state)
    return SD15.assemble(unet=components["unet"], vae=components["vae"], scheduler=components["scheduler"],
                         text_encoders=[components["text_encoder"]], tokenizers=[components["tokenizer"]])


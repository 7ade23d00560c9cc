"""On a CUDA GPU: the half-precision training path, 8-bit AdamW on the device, and apply restoring weights.

Skipped without CUDA; ``scripts/gpu_check.py`` runs these on a lent GPU machine.
"""

import pytest
import torch
from helpers import PROMPT, pixels, run

from imagic_lora import ProfileStore, TrainConfig, load_model, train
from imagic_lora.lora import fused_lora

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:tiny-xl"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_training_on_cuda_in_half_precision_gives_a_finite_adapter_and_restores_weights(image_path, dtype, model):
    base = load_model(model, device="cuda", dtype=dtype)
    before = {k: v.clone() for k, v in base.pipe.unet.state_dict().items()}
    config = TrainConfig(embedding_steps=5, lora_steps=10, lora_lr=1e-2)
    profile = train("gpu", image_path, PROMPT, model=base, config=config, store=ProfileStore(), progress=False)
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for k, v in profile.lora.items() if "up" in k)
    with fused_lora(base.pipe.unet, profile.lora, profile.rank, profile.lora_alpha):
        pass
    # PEFT leaves its (now empty) wrappers behind, so the same weights sit under ``.base_layer.`` names
    after = {k.replace(".base_layer.", "."): v for k, v in base.pipe.unet.state_dict().items()}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(base.pipe.unet.parameters()).device.type == "cuda"
    assert base.pipe.vae.dtype == base.dtype, "the VAE is back in its dtype after encoding in fp32"
    assert all(torch.isfinite(t).all() for t in (profile.start_latents, *profile.condition.tensors()))


def test_sd15_architecture_trains_and_applies_on_cuda_at_512(image_path, tmp_path):
    from imagic_lora.bench.architectures import random_pipeline

    folder = tmp_path / "sd15"
    random_pipeline("sd15").to(dtype=torch.float16).save_pretrained(folder, safe_serialization=True)
    trained = run("train", "real", image_path, "--prompt", PROMPT, "--model", folder, "--device", "cuda",
                  "--embedding-steps", 2, "--lora-steps", 2)
    assert trained.exit_code == 0, trained.output
    applied = run("apply", "profile", "real", "a blue ball", "--steps", 4, "--device", "cuda", "--out", tmp_path)
    assert applied.exit_code == 0, applied.output
    assert ProfileStore().get("real").metadata.settings.training.device == "cuda"


@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:tiny-xl"])
def test_low_memory_commands_on_cuda_move_parts_off_and_back_and_give_the_same_pixels(image_path, tmp_path, model):
    from imagic_lora import ApplyConfig, apply

    base = load_model(model, device="cuda")
    before = {k: v.clone() for k, v in base.pipe.unet.state_dict().items()}
    config = TrainConfig(embedding_steps=2, lora_steps=2, memory="low")
    profile = train("low", image_path, PROMPT, model=base, config=config, store=ProfileStore(), progress=False)
    assert profile.metadata.recipe.level == "lean"
    images = {memory: pixels(apply(profile, "a blue ball", model=base, out_dir=tmp_path / memory, progress=False,
                                   config=ApplyConfig(memory=memory))[0]) for memory in ("high", "low")}
    assert (images["high"] == images["low"]).all()
    modules = [base.pipe.unet, base.pipe.vae, *base.text_encoders]
    assert all(p.device.type == "cuda" for module in modules for p in module.parameters())
    after = {k.replace(".base_layer.", "."): v for k, v in base.pipe.unet.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)

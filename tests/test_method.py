import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft
from helpers import EXAMPLE_INPUT, FAST, PROMPT

from imagic_lora import ApplyConfig, IncompatibleProfile, TrainConfig, TrainingDiverged
from imagic_lora.conditioning import Condition, interpolate
from imagic_lora.images import fit_image, load_image, to_tensor
from imagic_lora.lora import fused_lora, remove_lora
from imagic_lora.method import (
    diffusion_loss,
    encode_image,
    encode_negative,
    encode_prompt,
    finetune_lora,
    generate,
    optimize_embedding,
)
from imagic_lora.models import _named_weights


def _latents(base):
    return encode_image(base, to_tensor(fit_image(load_image(EXAMPLE_INPUT), base.native_resolution)))


def _eval_set(base, latents, count=16):
    generator = torch.Generator().manual_seed(123)
    timesteps = torch.randint(0, base.pipe.scheduler.config.num_train_timesteps, (count,), generator=generator)
    noise = torch.randn((count, *latents.shape[1:]), generator=generator)
    return timesteps, noise


@torch.no_grad()
def _eval_loss(base, latents, embedding, eval_set):
    timesteps, noise = eval_set
    count = len(timesteps)
    return diffusion_loss(
        base, latents.expand(count, -1, -1, -1), embedding.expand(count), timesteps, noise
    ).item()


def _base_weights(base):
    return {name: param.detach().clone() for name, param in _named_weights(base.pipe)}


def _image(base, embedding, alpha=1.0):
    config = ApplyConfig(alphas=(alpha,), steps=4)
    [(_, _, image)] = generate(base, embedding, PROMPT, config, base.native_resolution, progress=False)
    return np.asarray(image)


def test_stage1_lowers_the_loss_on_a_fixed_evaluation_set(tiny):
    latents = _latents(tiny)
    source = encode_prompt(tiny, PROMPT)
    eval_set = _eval_set(tiny, latents)
    before = _eval_loss(tiny, latents, source, eval_set)
    # The random tiny UNet barely listens to its text input, so a high rate makes the effect measurable.
    config = TrainConfig(embedding_steps=60, embedding_lr=1e-1)
    e_opt, result = optimize_embedding(tiny, latents, source, config, torch.Generator().manual_seed(0), False)
    after = _eval_loss(tiny, latents, e_opt, eval_set)
    assert len(result.losses) == 60
    assert after < before - 3e-3, (before, after)
    assert not torch.equal(e_opt.embeds, source.embeds)


def test_stage1_leaves_the_unet_frozen(tiny):
    latents = _latents(tiny)
    weights = _base_weights(tiny)
    optimize_embedding(tiny, latents, encode_prompt(tiny, PROMPT), FAST, torch.Generator().manual_seed(0), False)
    assert all(torch.equal(weights[name], param) for name, param in _named_weights(tiny.pipe))


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adamw"])
def test_stage2_keeps_base_weights_and_changes_the_output(tiny, optimizer):
    latents = _latents(tiny)
    e_opt = encode_prompt(tiny, PROMPT)
    weights = _base_weights(tiny)
    before = _image(tiny, e_opt)
    config = TrainConfig(lora_steps=6, lora_lr=1e-2, optimizer=optimizer)
    lora, result = finetune_lora(tiny, latents, e_opt, config, torch.Generator().manual_seed(0), False)

    assert all(torch.equal(weights[name], param) for name, param in _named_weights(tiny.pipe))
    assert np.array_equal(_image(tiny, e_opt), before), "removing the adapter must restore the base model"
    assert len(result.losses) == 6 and all(key.startswith("unet.") for key in lora)
    assert any(value.abs().sum() > 0 for key, value in lora.items() if ".lora.up." in key)

    with fused_lora(tiny.pipe.unet, lora, config.rank, config.lora_alpha):
        assert not np.array_equal(_image(tiny, e_opt), before), "the trained adapter must change the output"
    assert all(torch.equal(weights[name], param) for name, param in _named_weights(tiny.pipe))
    assert np.array_equal(_image(tiny, e_opt), before), "unfusing must restore the base weights exactly"


def test_lora_fused_twice_gives_the_identical_image(tiny, trained):
    with fused_lora(tiny.pipe.unet, trained.lora, trained.rank, trained.lora_alpha):
        first = _image(tiny, trained.condition, alpha=0.7)
    with fused_lora(tiny.pipe.unet, trained.lora, trained.rank, trained.lora_alpha):
        assert np.array_equal(_image(tiny, trained.condition, alpha=0.7), first)


def test_fused_adapter_matches_the_peft_adapter(tiny, trained):
    """Fusing is only a faster way to run the same adapter: outputs agree with PEFT's unfused layers."""
    from peft.utils import set_peft_model_state_dict

    from imagic_lora.lora import ADAPTER, PREFIX, add_lora

    latents = _latents(tiny)
    t = torch.tensor([400])
    with fused_lora(tiny.pipe.unet, trained.lora, trained.rank, trained.lora_alpha), torch.no_grad():
        fused = tiny.pipe.unet(latents, t, trained.e_opt).sample
    add_lora(tiny.pipe.unet, trained.rank, trained.lora_alpha)
    try:
        peft_state = convert_unet_state_dict_to_peft({k[len(PREFIX):]: v for k, v in trained.lora.items()})
        set_peft_model_state_dict(tiny.pipe.unet, peft_state, adapter_name=ADAPTER)
        with torch.no_grad():
            unfused = tiny.pipe.unet(latents, t, trained.e_opt).sample
    finally:
        remove_lora(tiny.pipe.unet)
    plain = tiny.pipe.unet(latents, t, trained.e_opt).sample.detach()
    assert torch.allclose(fused, unfused, atol=1e-5)
    assert not torch.allclose(fused, plain, atol=1e-3), "the adapter must matter for this check to mean anything"


def test_fused_lora_refuses_an_adapter_of_another_shape(tiny, trained):
    state = dict(trained.lora)
    key = next(k for k in state if k.endswith(".lora.down.weight"))
    state[key] = torch.zeros(trained.rank + 1, state[key].shape[1])
    with pytest.raises(IncompatibleProfile, match="adapter does not fit this model"), \
            fused_lora(tiny.pipe.unet, state, trained.rank, trained.lora_alpha):
        pass


def test_parity_with_the_plain_pipeline_when_adapter_is_off_and_alpha_is_one(tiny):
    """With no adapter and α = 1 our generate equals StableDiffusionPipeline(prompt=...)."""
    unused_e_opt = Condition(torch.randn(1, 77, tiny.embedding_dim))
    config = ApplyConfig(alphas=(1.0,), steps=5, guidance=7.5)
    ours = generate(tiny, unused_e_opt, PROMPT, config, 64, progress=False)[0][2]
    c = tiny.pipe.components
    plain = StableDiffusionPipeline(**c)
    plain.set_progress_bar_config(disable=True)
    theirs = plain(
        prompt=PROMPT, negative_prompt="", num_inference_steps=5, guidance_scale=7.5, height=64, width=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("pooled", [False, True])
def test_interpolate_endpoints(pooled):
    e_new = Condition(torch.randn(1, 77, 8), torch.randn(1, 4) if pooled else None)
    e_opt = Condition(torch.randn(1, 77, 8), torch.randn(1, 4) if pooled else None)
    for alpha in (0.0, 0.7, 1.0):
        mixed = interpolate(e_new, e_opt, alpha)
        for ours, new, opt in zip(mixed.tensors(), e_new.tensors(), e_opt.tensors(), strict=True):
            assert torch.allclose(ours, alpha * new + (1 - alpha) * opt)
    assert torch.equal(interpolate(e_new, e_opt, 0.0).embeds, e_opt.embeds)
    assert (interpolate(e_new, e_opt, 1.0).pooled is None) == (not pooled)


def test_loss_target_follows_prediction_type(tiny):
    latents = _latents(tiny)
    embedding = encode_prompt(tiny, PROMPT)
    timesteps, noise = torch.tensor([500]), torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    scheduler = tiny.pipe.scheduler
    with torch.no_grad():
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = tiny.pipe.unet(noisy, timesteps, embedding.embeds).sample
        epsilon = diffusion_loss(tiny, latents, embedding, timesteps, noise)
        scheduler.register_to_config(prediction_type="v_prediction")
        velocity = diffusion_loss(tiny, latents, embedding, timesteps, noise)
    expected_v = torch.mean((prediction - scheduler.get_velocity(latents, noise, timesteps)) ** 2)
    assert torch.allclose(epsilon, torch.mean((prediction - noise) ** 2))
    assert torch.allclose(velocity, expected_v)
    assert not torch.allclose(epsilon, velocity)


def test_nan_loss_stops_training_with_a_clear_error(tiny):
    latents = _latents(tiny) * float("nan")
    expected = "stage 1/2 embedding: loss became nan at step 1; nothing was saved. Try: a lower --embedding-lr"
    with pytest.raises(TrainingDiverged, match=f"^{re.escape(expected)}$"):
        optimize_embedding(tiny, latents, encode_prompt(tiny, PROMPT), FAST, torch.Generator(), False)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_frozen_weights_train_fp32_adapters_and_match_the_fp32_fingerprint(dtype, trained):
    from imagic_lora import check_compatible, load_model
    from imagic_lora.lora import add_lora

    base = load_model("builtin:tiny", dtype=dtype)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert base.pipe.unet.dtype == base.pipe.text_encoder.dtype == expected
    assert check_compatible(trained, base) is None, "the same weights in lower precision are the same model"
    params = add_lora(base.pipe.unet, 4, 4)
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    remove_lora(base.pipe.unet)
    latents = _latents(base)
    lora, result = finetune_lora(base, latents, encode_prompt(base, PROMPT), FAST, torch.Generator(), False)
    assert all(np.isfinite(result.losses)) and all(v.dtype == torch.float32 for v in lora.values())


def test_xl_parity_with_the_plain_pipeline_when_adapter_is_off_and_alpha_is_one(tiny_xl):
    """SDXL: with no adapter and α = 1 our generate equals StableDiffusionXLPipeline given the same embeddings."""
    from diffusers import StableDiffusionXLPipeline

    unused_e_opt = Condition(torch.randn(1, 77, tiny_xl.embedding_dim), torch.randn(1, tiny_xl.pooled_dim))
    config = ApplyConfig(alphas=(1.0,), steps=5, guidance=7.5)
    ours = generate(tiny_xl, unused_e_opt, PROMPT, config, 64, progress=False)[0][2]
    plain = StableDiffusionXLPipeline(**tiny_xl.pipe.components)
    plain.set_progress_bar_config(disable=True)
    embeds, _, pooled, _ = plain.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    theirs = plain(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=5, guidance_scale=7.5,
        height=64, width=64, generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs)), "and the pipeline's own negative: zeros"
    negative = encode_negative(tiny_xl, "")
    assert not negative.embeds.any() and not negative.pooled.any()
    assert encode_negative(tiny_xl, "blurry").embeds.any(), "a negative prompt given is encoded"


def test_xl_stage1_optimizes_the_pooled_embedding_too(tiny_xl):
    latents = _latents(tiny_xl)
    source = encode_prompt(tiny_xl, PROMPT)
    assert source.embeds.shape == (1, 77, 64) and source.pooled.shape == (1, 32)
    eval_set = _eval_set(tiny_xl, latents)
    before = _eval_loss(tiny_xl, latents, source, eval_set)
    config = TrainConfig(embedding_steps=40, embedding_lr=1e-1)
    e_opt, _ = optimize_embedding(tiny_xl, latents, source, config, torch.Generator().manual_seed(0), False)
    assert _eval_loss(tiny_xl, latents, e_opt, eval_set) < before
    assert not torch.equal(e_opt.pooled, source.pooled), "the pooled embedding is optimized with the tokens"
    pooled_only = Condition(source.embeds, e_opt.pooled)
    assert _eval_loss(tiny_xl, latents, pooled_only, eval_set) != before, "and the UNet listens to it"


@pytest.mark.parametrize(("needed_gib", "free_gib", "total_gib", "kept"), [
    (1.9, 70.0, 80.0, True),  # SDXL's adapted projections in fp16 on an 80 GB card: no host round trip
    (1.9, 16.0, 24.0, True),
    (1.9, 5.0, 12.0, False),  # a 12 GB card with SDXL loaded: the copies go to the CPU, as before
    (0.4, 2.5, 8.0, False),
])
def test_the_original_weights_wait_on_the_gpu_only_when_half_of_it_stays_free(needed_gib, free_gib, total_gib,
                                                                               kept):
    from imagic_lora.lora import keeps_room

    gib = 2**30
    assert keeps_room(int(needed_gib * gib), int(free_gib * gib), int(total_gib * gib)) is kept


def test_on_the_cpu_the_original_weights_are_copied_on_the_cpu(tiny):
    from imagic_lora.lora import originals_device

    assert originals_device([param for param in tiny.pipe.unet.parameters()][:3]) == torch.device("cpu")
    assert originals_device([]) == torch.device("cpu")

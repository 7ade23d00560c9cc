"""The low-memory training path is really taken: dtypes, checkpointing, SDPA, 8-bit AdamW, encoders off."""

from dataclasses import replace
from unittest import mock

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from helpers import FAST, PROMPT, pixels

from imagic_lora import ApplyConfig, ProfileStore, TrainConfig, apply, load_model, train
from imagic_lora.method import _checkpointing
from imagic_lora.models import BaseModel, choose_dtype
from imagic_lora.placement import encoders_offloaded, is_parked


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_gpus_get_half_precision_frozen_weights(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_dtype(torch.device("cuda")) == expected
    assert choose_dtype(torch.device("cpu")) == torch.float32


def test_checkpointing_is_on_by_default_on_gpus_and_switchable(tiny):
    on_gpu = BaseModel(tiny.model_id, tiny.pipe, torch.device("cuda"), torch.float16)
    assert _checkpointing(on_gpu, TrainConfig()) is True
    assert _checkpointing(on_gpu, TrainConfig(gradient_checkpointing=False)) is False
    assert _checkpointing(tiny, TrainConfig()) is False
    assert _checkpointing(tiny, TrainConfig(gradient_checkpointing=True)) is True


def _mock_pipeline() -> mock.Mock:
    """A stand-in SD pipeline whose modules record where they are moved."""
    pipe = mock.Mock()
    pipe.__class__ = StableDiffusionPipeline  # the families ask isinstance
    pipe.text_encoder.config.hidden_size = 768
    return pipe


def test_encoders_leave_the_accelerator_while_training_and_come_back():
    pipe = _mock_pipeline()
    base = BaseModel("x", pipe, torch.device("cuda"), torch.float16)
    with encoders_offloaded(base):
        pipe.vae.to.assert_called_once_with("cpu")
        pipe.text_encoder.to.assert_called_once_with("cpu")
    pipe.vae.to.assert_called_with(torch.device("cuda"))
    pipe.text_encoder.to.assert_called_with(torch.device("cuda"))
    kept = _mock_pipeline()
    with encoders_offloaded(BaseModel("x", kept, torch.device("cuda"), torch.float16), enabled=False):
        pass
    kept.vae.to.assert_not_called()


def test_training_runs_the_lean_path(image_path, monkeypatch):
    """Spy on every UNet call during a real train(): what the low-memory switches promise is what runs."""
    base = load_model("builtin:tiny", dtype="bf16")
    unet = base.pipe.unet
    seen, optimizers = [], []
    encoder_calls = []

    def spy(module, args, kwargs):
        if torch.is_grad_enabled():
            lora = [p for n, p in module.named_parameters() if "lora_" in n]
            frozen = [p for n, p in module.named_parameters() if "lora_" not in n]
            seen.append({
                "checkpointing": module.is_gradient_checkpointing and module.training,
                "frozen": {p.dtype for p in frozen} | {p.requires_grad for p in frozen},
                "lora": {p.dtype for p in lora},
                "sdpa": all(isinstance(p, AttnProcessor2_0) for p in module.attn_processors.values()),
            })

    unet.register_forward_pre_hook(spy, with_kwargs=True)
    base.pipe.vae.encoder.register_forward_pre_hook(lambda *a: encoder_calls.append("vae"))
    base.pipe.vae.decoder.register_forward_pre_hook(lambda *a: encoder_calls.append("decode"))
    base.pipe.text_encoder.register_forward_pre_hook(lambda *a: encoder_calls.append("text"))
    real_optimizer = bnb.optim.AdamW8bit
    monkeypatch.setattr(bnb.optim, "AdamW8bit", lambda *a, **k: optimizers.append(real_optimizer(*a, **k))
                        or optimizers[-1])

    config = TrainConfig(embedding_steps=FAST.embedding_steps, lora_steps=FAST.lora_steps, lora_lr=1e-2,
                         gradient_checkpointing=True)
    train("lean", image_path, PROMPT, model=base, config=config, store=ProfileStore(), progress=False)

    assert len(seen) == config.embedding_steps + config.lora_steps
    assert all(s["checkpointing"] and s["sdpa"] for s in seen)
    assert all(s["frozen"] == {torch.bfloat16, False} for s in seen), "frozen weights stay bf16, without grads"
    assert all(s["lora"] == set() for s in seen[: config.embedding_steps]), "stage 1 trains no adapter"
    assert all(s["lora"] == {torch.float32} for s in seen[config.embedding_steps :]), "adapters train in fp32"
    assert len(optimizers) == 1 and isinstance(optimizers[0], real_optimizer)
    assert sorted(encoder_calls) == ["text", "text", "vae"], \
        "the image, the prompt and the inversion's negative prompt are encoded once, nothing decoded"


def _record_parked_unet(base, calls: list):
    """Hooks on the VAE and the text encoder recording, per call, whether the UNet was off the device."""
    unet = base.pipe.unet
    for name, module in (("encode", base.pipe.vae.encoder), ("decode", base.pipe.vae.decoder),
                         ("text", base.pipe.text_encoder)):
        module.register_forward_pre_hook(lambda *a, name=name: calls.append((name, is_parked(unet))))


@pytest.mark.parametrize(("offload", "parked"), [(True, True), (False, False)])
def test_a_small_cards_recipe_encodes_the_photo_and_prompts_with_the_unet_off_the_device(image_path, offload,
                                                                                          parked):
    base = load_model("builtin:tiny")
    calls, training = [], []
    _record_parked_unet(base, calls)
    encoders = [base.pipe.vae, base.pipe.text_encoder]
    base.pipe.unet.register_forward_pre_hook(lambda *a: training.append([is_parked(m) for m in encoders]))
    train("placed", image_path, PROMPT, model=base, config=replace(FAST, offload_encoders=offload),
          store=ProfileStore(), progress=False)
    assert sorted(calls) == [("encode", parked), ("text", parked), ("text", parked)]
    assert training and all(flags == [offload, offload] for flags in training), "the encoders wait off it"
    assert not any(is_parked(m) for m in [base.pipe.unet, *encoders]), "every part is back afterwards"


def test_apply_low_decodes_with_the_unet_off_the_device_and_gives_the_same_pixels(trained, tmp_path):
    base = load_model("builtin:tiny")
    calls = []
    _record_parked_unet(base, calls)
    outputs = {}
    for memory in ("high", "low"):
        calls.clear()
        [path] = apply(trained, "a blue ball on green grass", model=base, out_dir=tmp_path / memory,
                       config=ApplyConfig(memory=memory), progress=False)
        outputs[memory] = pixels(path)
        decodes = [parked for name, parked in calls if name == "decode"]
        assert decodes == [memory == "low"] * 2, "the photo to keep and the edit: both decoded"
    assert np.array_equal(outputs["high"], outputs["low"])


def test_low_decodes_a_batch_one_image_at_a_time(trained, tmp_path):
    base = load_model("builtin:tiny")
    calls = []
    _record_parked_unet(base, calls)
    paths = apply(trained, "a blue ball on green grass", model=base, out_dir=tmp_path, progress=False,
                  config=ApplyConfig(memory="low", alphas=(0.5, 1.0), keep=False))
    assert [parked for name, parked in calls if name == "decode"] == [True, True]
    assert len(paths) == 3  # two images and their grid

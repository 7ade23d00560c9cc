"""The memory benchmark's parts: the tensor-peak tracker and the shipped SD 1.5 configs."""

import pytest
import torch

from imagic_lora import InvalidConfig
from imagic_lora.bench.architectures import random_pipeline
from imagic_lora.bench.memory import TensorPeak, module_tensors, peak_rss_bytes
from imagic_lora.families import config_folder

MIB = 2**20


def test_tensor_peak_counts_live_bytes_and_their_peak():
    existing = torch.zeros(MIB // 4)  # 1 MiB made before the tracker
    with TensorPeak() as tracker:
        tracker.track([existing, existing[:10]])  # a view shares its storage: counted once
        assert tracker.current == MIB
        a = torch.ones(MIB // 2)  # 2 MiB
        b = a * 2  # 2 MiB
        a.add_(1)  # in place: nothing new
        assert tracker.current == 5 * MIB
        del a, b
        assert tracker.current == MIB
        assert tracker.peak == 5 * MIB


def test_tensor_peak_sees_what_autograd_saves_for_backward():
    weight = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(64, 256)
    with TensorPeak() as kept:
        kept.track([weight, x])
        loss = torch.tanh(torch.tanh(x @ weight) @ weight).sum()  # tanh outputs are saved for backward
        saved = kept.current
        loss.backward()
    with TensorPeak() as dropped, torch.no_grad():
        dropped.track([weight, x])
        torch.tanh(torch.tanh(x @ weight) @ weight).sum()
        assert dropped.current < saved, "without autograd the activations are freed at once"
    assert kept.peak >= saved + weight.numel() * 4, "the weight's gradient comes on top"


def test_module_tensors_and_rss():
    layer = torch.nn.BatchNorm1d(8)
    assert len(module_tensors(layer)) == 2 + 3  # weight, bias; running mean, var, count
    assert peak_rss_bytes() > 10 * MIB


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shipped_sd15_configs_build_sd15_exactly():
    """Parameter counts of SD 1.5's published UNet, VAE and CLIP text encoder (built on meta: no memory)."""
    pipe = random_pipeline("sd15", device="meta")
    assert (_count(pipe.unet), _count(pipe.vae), _count(pipe.text_encoder)) == (859_520_964, 83_653_863, 123_060_480)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 512
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768


def test_shipped_sdxl_configs_build_sdxl_exactly():
    """Parameter counts of SDXL base 1.0's published UNet, VAE and two text encoders (on meta: no memory)."""
    pipe = random_pipeline("sdxl", device="meta")
    counts = (_count(pipe.unet), _count(pipe.vae), _count(pipe.text_encoder), _count(pipe.text_encoder_2))
    assert counts == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 1024
    assert pipe.unet.config.cross_attention_dim == 768 + 1280 == pipe.text_encoder_2.config.hidden_size + 768
    assert pipe.unet.config.projection_class_embeddings_input_dim == 6 * 256 + pipe.text_encoder_2.config.projection_dim


def test_unknown_family_is_refused():
    with pytest.raises(InvalidConfig, match="unknown model family 'sd3'"):
        random_pipeline("sd3")


@pytest.mark.parametrize(("folder", "pad_id"), [("sd15/tokenizer", 49407), ("sd21/tokenizer", 0),
                                                ("sdxl/tokenizer", 49407), ("sdxl/tokenizer_2", 0)])
def test_shipped_tokenizers_are_clip_bpe_with_each_models_padding(folder, pad_id):
    from transformers import CLIPTokenizer

    family, name = folder.split("/")
    with config_folder(family) as path:
        tokenizer = CLIPTokenizer.from_pretrained(path / name)
    assert len(tokenizer) == 49_408
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tokenizer.pad_token_id == pad_id

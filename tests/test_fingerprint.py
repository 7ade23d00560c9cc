"""Fingerprints: exact integer sampling, and every fingerprint made before it keeps its value."""

import pytest
import torch
from helpers import EXAMPLE_PROFILE

from imagic_lora import TINY_MODEL, load_model, read_profile_file
from imagic_lora.models import _named_weights
from imagic_lora.shapes.model import SHAPES_MODEL


def linspace_sample(base) -> torch.Tensor:
    """The float32 ``linspace`` indices the first fingerprints used (out of bounds past 2^24 values)."""
    values = []
    for _, param in _named_weights(base.pipe):
        flat = param.detach().reshape(-1)
        values.append(flat[torch.linspace(0, flat.numel() - 1, 4).long()].float())
    return torch.cat(values)


@pytest.mark.parametrize("model", [TINY_MODEL, SHAPES_MODEL])
def test_built_in_models_keep_their_fingerprints(model):
    base = load_model(model)
    assert torch.equal(base.weight_sample(), linspace_sample(base))


def test_the_shipped_example_profile_still_matches_its_base_model():
    profile = read_profile_file(EXAMPLE_PROFILE)
    base = load_model(profile.metadata.base_model)
    assert base.fingerprint() == profile.metadata.settings.base_fingerprint
    assert torch.equal(base.weight_sample().half().float(), profile.base_sample)

"""Keeping the photo's pixels where the edit did not change it."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagic_lora.config import ApplyConfig
from imagic_lora.errors import InvalidConfig
from imagic_lora.keep import changed_mask, keep_unchanged


def _picture(size=64, square=None, tint=(40, 40, 60), drift=0):
    pixels = np.full((size, size, 3), np.array(tint) + drift, dtype=np.uint8)
    pixels[2:4, 2:4] = (250, 200, 0)  # a small marker in the corner
    if square:
        (x0, y0, x1, y1), colour = square
        pixels[y0:y1, x0:x1] = colour
    return Image.fromarray(pixels)


def test_an_edited_region_is_kept_and_everything_else_comes_back_from_the_photo():
    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    # the edit turned the square red, shifted the background a little and lost the marker
    edited = np.asarray(_picture(square=((24, 24, 40, 40), (240, 0, 0)), drift=12)).copy()
    edited[2:4, 2:4] = edited[10, 10]
    result = np.asarray(keep_unchanged(Image.fromarray(edited), photo, 0.3)).astype(int)
    assert (result[28:36, 28:36] == (228, 0, 0)).all(), "the edited square is kept, less the drift"
    assert (result[2:4, 2:4] == (250, 200, 0)).all(), "the marker comes back"
    assert (result[50:, 50:] == np.asarray(photo)[50:, 50:]).all(), "the background comes back exactly"


def test_the_kept_edit_meets_the_restored_photo_without_a_seam():
    """The sampler drifted the whole picture 12 levels: the edit's own background, kept around the edited
    square, is shifted back to the photo's, so no ring is left where the two meet."""
    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    edited = _picture(square=((24, 24, 40, 40), (200, 0, 0)), drift=12)
    result = np.asarray(keep_unchanged(edited, photo, 0.3)).astype(int)
    mask = changed_mask(edited, photo, 0.3)[0, 0].numpy()
    ring = (mask > 0) & (np.asarray(photo).astype(int) == (40, 40, 60)).all(-1)  # the edit's background, kept
    assert ring.sum() > 100
    assert np.abs(result[ring] - (40, 40, 60)).max() <= 1, "the kept background matches the photo's"
    unmatched = np.asarray(_picture(square=((24, 24, 40, 40), (200, 0, 0)), drift=12)).astype(int)[ring]
    assert np.abs(unmatched - (40, 40, 60)).max() == 12, "without matching it would be 12 levels off"


def test_no_drift_is_measured_when_the_photo_comes_back_nowhere():
    from imagic_lora.keep import colour_offset

    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    other = _picture(tint=(200, 10, 10))
    pixels = [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255) for image in (other, photo)]
    assert torch.equal(colour_offset(*pixels, torch.ones(1, 1, 64, 64)), torch.zeros(3))
    assert np.array_equal(np.asarray(keep_unchanged(other, photo, 0.3)), np.asarray(other))


def test_an_unchanged_edit_gives_the_photo_back_and_a_wholly_new_one_is_left_alone():
    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    assert np.array_equal(np.asarray(keep_unchanged(photo, photo, 0.3)), np.asarray(photo))
    assert changed_mask(photo, photo, 0.3).max() == 0
    other = Image.fromarray(255 - np.asarray(photo))
    assert np.array_equal(np.asarray(keep_unchanged(other, photo, 0.3)), np.asarray(other))


def test_the_mask_grows_with_the_image_so_a_large_photo_keeps_its_edit_whole():
    photo = _picture(size=512, square=((200, 200, 300, 300), (255, 255, 255)))
    edited = _picture(size=512, square=((200, 200, 300, 300), (0, 0, 255)))
    mask = changed_mask(edited, photo, 0.3)[0, 0]
    assert mask[200:300, 200:300].min() == 1 and mask[:150, :150].max() == 0


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, float("nan")])
def test_a_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(InvalidConfig, match="--keep-threshold must be in"):
        ApplyConfig(keep_threshold=threshold)

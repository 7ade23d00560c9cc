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


def _everywhere(size=64):
    return torch.ones(size // 8, size // 8)


def _region(size, box):
    """A latent-grid region (1/8 of the size) acting on ``box`` (x0, y0, x1, y1 in pixels)."""
    grid = torch.zeros(size // 8, size // 8)
    x0, y0, x1, y1 = (v // 8 for v in box)
    grid[y0:y1, x0:x1] = 1
    return grid


def test_a_whole_picture_edit_is_left_whole_and_its_lost_detail_comes_back_in_its_colours():
    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    warmer = np.clip(np.asarray(photo).astype(int) + np.array((30, 10, -20)), 0, 255).astype(np.uint8)
    lost = warmer.copy()
    lost[2:4, 2:4] = lost[10, 10]  # the sampler lost the marker
    result = np.asarray(keep_unchanged(Image.fromarray(lost), photo, 0.3, _everywhere())).astype(int)
    assert np.abs(result[8:, 8:] - warmer[8:, 8:]).max() <= 1, "the tint is the edit: nothing of it is undone"
    assert np.abs(result[2:4, 2:4] - warmer[2:4, 2:4]).max() <= 2, "the marker comes back, tinted too"
    today = np.asarray(keep_unchanged(Image.fromarray(lost), photo, 0.3)).astype(int)
    assert np.abs(today[40:, 40:] - np.asarray(photo)[40:, 40:]).max() == 0, "taken as local, the tint is undone"


def test_a_whole_picture_change_that_is_no_colour_map_comes_back_as_the_edit():
    from PIL import ImageOps

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    posterized = ImageOps.posterize(photo, 2)
    assert np.array_equal(np.asarray(keep_unchanged(posterized, photo, 0.3, _everywhere())), np.asarray(posterized))


def test_the_models_region_keeps_a_local_edit_the_pixels_alone_would_undo():
    """A circle turned square changes only its corners: too little, blurred, for the threshold; the region
    where the model's prediction changes keeps them."""
    photo = np.asarray(_picture(square=((24, 24, 40, 40), (255, 255, 255)))).copy()
    photo[24:26, 24:26] = photo[39:41, 39:41] = (40, 40, 60)  # the "circle": the square without its corners
    edited = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    by_pixels = np.asarray(keep_unchanged(edited, Image.fromarray(photo), 0.3))
    assert (by_pixels[24:26, 24:26] == (40, 40, 60)).all(), "the pixel test alone puts the corner back"
    kept = np.asarray(keep_unchanged(edited, Image.fromarray(photo), 0.3, _region(64, (24, 24, 40, 40))))
    assert (kept[24:26, 24:26] == (255, 255, 255)).all() and (kept[50:, 50:] == photo[50:, 50:]).all()


def test_edit_region_is_empty_for_the_photos_own_condition_and_peaks_at_one_otherwise(tiny, trained):
    from imagic_lora.conditioning import interpolate
    from imagic_lora.lora import fused_lora
    from imagic_lora.method import edit_region, encode_prompt

    with fused_lora(tiny.pipe.unet, trained.lora, trained.rank, trained.lora_alpha):
        same = edit_region(tiny, trained.image_latents, trained.condition, trained.condition)
        other = interpolate(encode_prompt(tiny, "a blue cube"), trained.condition, 1.0)
        region = edit_region(tiny, trained.image_latents, trained.condition, other)
        again = edit_region(tiny, trained.image_latents, trained.condition, other)
    assert region.shape == trained.image_latents.shape[-2:] and torch.equal(region, again)
    assert same.max() == 0 and region.max() == 1 and region.min() == 0


@pytest.mark.slow
def test_on_real_photographs_whole_picture_edits_stay_whole_and_a_pasted_object_keeps_the_rest():
    """The real-photo guard (no model): three bundled photographs at 512 px, each edited as a whole (tint,
    darker, black and white, negative, posterized, blurred) with the region everywhere, and with an object
    pasted in (its region on it) while the rest drifted and got noise as a sampler's output does."""
    from imagic_lora.bench.photos import PHOTOS, WHOLE_PICTURE_EDITS, measure

    rows = measure(ApplyConfig().keep_threshold)
    whole = [row for row in rows if row["edit"] in WHOLE_PICTURE_EDITS]
    assert len(whole) == len(PHOTOS) * len(WHOLE_PICTURE_EDITS)
    assert all(row["restored"] < 0.01 for row in whole), [r for r in whole if r["restored"] >= 0.01]
    pasted = [row for row in rows if row["edit"] == "pasted object"]
    assert len(pasted) == len(PHOTOS) and all(row["object_whole"] and row["restored"] >= 0.9 for row in pasted)


def test_a_new_background_is_kept_with_the_photos_object_and_its_lost_marker_in_the_new_colours():
    photo = _picture(square=((24, 24, 40, 40), (255, 255, 255)))
    edited = np.asarray(_picture(square=((24, 24, 40, 40), (250, 250, 250)), tint=(20, 80, 70))).copy()
    edited[2:4, 2:4] = (20, 80, 70)  # the sampler lost the marker
    around = torch.ones(8, 8)
    around[3:5, 3:5] = 0  # the model reads the prompt as acting on the background, not the square
    result = np.asarray(keep_unchanged(Image.fromarray(edited), photo, 0.3, around)).astype(int)
    assert (result[50:, 50:] == (20, 80, 70)).all(), "the new background is the edit"
    assert (result[30:34, 30:34] == (255, 255, 255)).all(), "the square the prompt left alone is the photo's"
    assert np.abs(result[2:4, 2:4] - np.array((250 - 20, 200 + 40, 0 + 10))).max() <= 3, \
        "the marker comes back, carried into the new background's colours"


def test_apply_gives_the_keep_step_the_models_region_once_per_alpha_and_none_without_keep(trained, tmp_path,
                                                                                        monkeypatch):
    from imagic_lora import apply, method

    calls, regions = [], []
    real_region, real_keep = method.edit_region, method.keep_unchanged
    monkeypatch.setattr(method, "edit_region", lambda *a, **k: calls.append(1) or real_region(*a, **k))
    monkeypatch.setattr(method, "keep_unchanged",
                        lambda *a: regions.append(a[3]) or real_keep(*a))
    apply(trained, "a blue ball", model="builtin:tiny", out_dir=tmp_path / "kept", progress=False,
          config=ApplyConfig(alphas=(0.5, 1.0)))
    assert len(calls) == 2 and len(regions) == 2
    assert all(r.shape == trained.image_latents.shape[-2:] and r.max() == 1 for r in regions)
    calls.clear()
    apply(trained, "a blue ball", model="builtin:tiny", out_dir=tmp_path / "raw", progress=False,
          config=ApplyConfig(keep=False))
    assert calls == [], "no region is computed when nothing is kept"

import numpy as np
import pytest
from PIL import Image

from imagic_lora import InvalidImage
from imagic_lora.images import fit_image, load_image, to_tensor


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top = np.asarray(loaded)[2, 10]
    assert top[2] > 200 and top[0] < 60, "the blue strip must end up on top"


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    path = _save(Image.new(mode, (16, 16)), tmp_path / f"{mode}.png")
    assert load_image(path).mode == "RGB"


def test_transparent_pixels_become_white(tmp_path):
    path = _save(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), tmp_path / "clear.png")
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 255, 255]


def test_webp_and_jpeg_load(tmp_path):
    for name in ("a.webp", "a.jpg"):
        path = _save(Image.new("RGB", (30, 20), (0, 200, 0)), tmp_path / name)
        assert load_image(path).size == (30, 20)


def test_unsupported_format_is_refused(tmp_path):
    path = _save(Image.new("RGB", (8, 8)), tmp_path / "a.bmp")
    with pytest.raises(InvalidImage, match=r"is a BMP image; JPEG, PNG and WebP are supported"):
        load_image(path)


def test_crop_keeps_the_center_and_pad_keeps_everything():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # red center third
    cropped = np.asarray(fit_image(image, 64, "crop"))
    padded = np.asarray(fit_image(image, 64, "pad"))
    assert cropped.shape == padded.shape == (64, 64, 3)
    assert (cropped[..., 0] > 200).all()
    assert (padded[0, :, 0] == 0).all() and padded[32, 32, 0] > 200


def test_to_tensor_range():
    tensor = to_tensor(Image.new("RGB", (4, 4), (255, 0, 128)))
    assert tensor.shape == (1, 3, 4, 4)
    assert tensor[0, 0].eq(1).all() and tensor[0, 1].eq(-1).all()

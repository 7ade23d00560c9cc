
import numpy as np
import pytest
from helpers import forged_png
from PIL import Image

from imagic_lora import InvalidImage
from imagic_lora.images import fit_image, load_image, to_tensor


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 40))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (40, 80)
    top = np.asarray(loaded)[4, 20]
    assert top[2] > 200 and top[0] < 60, "the blue strip must end up on top"


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    path = _save(Image.new(mode, (40, 40)), tmp_path / f"{mode}.png")
    assert load_image(path).mode == "RGB"


def test_transparent_pixels_become_white(tmp_path):
    path = _save(Image.new("RGBA", (40, 40), (10, 20, 30, 0)), tmp_path / "clear.png")
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 255, 255]


def test_webp_and_jpeg_load(tmp_path):
    for name in ("a.webp", "a.jpg"):
        path = _save(Image.new("RGB", (60, 40), (0, 200, 0)), tmp_path / name)
        assert load_image(path).size == (60, 40)


def test_unsupported_format_is_refused(tmp_path):
    path = _save(Image.new("RGB", (40, 40)), tmp_path / "a.bmp")
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


@pytest.mark.parametrize("side", [9000, 20000])  # 81 MP: over our limit; 400 MP: over Pillow's bomb limit
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side):
    path = forged_png(tmp_path / "bomb.png", side, side)
    with pytest.raises(InvalidImage, match=r"(over the 80 megapixel limit|more than 80 megapixels). Try: a smaller"):
        load_image(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InvalidImage, match="cannot identify image file"):
        load_image(path)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # red in CMYK
    red, green, blue = np.asarray(load_image(path))[20, 20].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    array = np.full((40, 40), 32768, dtype=np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "grey16.png")
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(load_image(path))[0, 0].tolist() == [128, 128, 128]


def test_palette_with_transparency_composites_on_white(tmp_path):
    image = Image.new("P", (40, 40), 0)
    image.putpalette([10, 20, 30] + [200, 0, 0] * 255)
    image.info["transparency"] = 0
    path = _save(image, tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 255, 255]


def test_animated_image_uses_the_first_frame_and_says_so(tmp_path):
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = _save(frames[0], tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    said = []
    image = load_image(path, warn=said.append)
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]
    assert said == [f"{path} is animated; using its first frame"]


def test_tiny_images_are_refused_and_small_ones_upscaled_with_a_warning(tmp_path):
    with pytest.raises(InvalidImage, match=r"is only 20x300 pixels; each side needs at least 32. Try: a larger"):
        load_image(_save(Image.new("RGB", (20, 300)), tmp_path / "thin.png"))
    said = []
    fitted = fit_image(load_image(_save(Image.new("RGB", (40, 40)), tmp_path / "small.png")), 64, warn=said.append)
    assert fitted.size == (64, 64)
    assert said == ["the image is 40x40, smaller than the 64 px training size; upscaling it"]

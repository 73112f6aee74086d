"""Photos in as the BVLC Caffe models take them, and the 1000 ImageNet class names."""
import numpy as np
import pytest
from PIL import Image

from tinygnet.data import BVLC_MEAN_BGR, imagenet_classes, load_image


def save(tmp_path, pixels, name="photo.png", mode=None):
    path = tmp_path / name
    Image.fromarray(pixels, mode).save(path)
    return str(path)


def test_centre_crop_bgr_minus_the_mean_pixel_for_pixel(tmp_path):
    """A 256 x 512 photo (shorter side already 256: no resize): the centre 224 x 224 starts at
    row 16, column 144; channel 0 is blue, 1 green, 2 red, each minus its mean."""
    rows, columns = np.mgrid[0:256, 0:512]
    rgb = np.stack([columns % 256, rows, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    x = load_image(save(tmp_path, rgb))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    mean_b, mean_g, mean_r = BVLC_MEAN_BGR
    np.testing.assert_array_equal(x[0], np.full((224, 224), 7 - mean_b))
    np.testing.assert_array_equal(x[1], rows[16:240, 144:368] - mean_g)
    np.testing.assert_array_equal(x[2], columns[16:240, 144:368] % 256 - mean_r)


def test_shorter_side_resized_to_256_then_centre_cropped(tmp_path):
    """A 300 x 900 portrait, red rows 0-399, blue below: resized to 256 x 768 (x 256/300) the
    colours meet at row 341.3, and the centre crop (rows 272-495) has them meet at its row 69
    (resized to 224 instead it would be row 75; squashed to 256 x 256, row 98)."""
    pixels = np.zeros((900, 300, 3), dtype=np.uint8)
    pixels[:400, :, 0] = 255                       # red
    pixels[400:, :, 2] = 255                       # blue
    x = load_image(save(tmp_path, pixels)) + np.asarray(BVLC_MEAN_BGR, np.float32)[:, None, None]
    red, blue = np.array([0, 0, 255.0])[:, None, None], np.array([255.0, 0, 0])[:, None, None]
    np.testing.assert_allclose(x[:, :68], np.broadcast_to(red, (3, 68, 224)), atol=1e-4)
    np.testing.assert_allclose(x[:, 71:], np.broadcast_to(blue, (3, 153, 224)), atol=1e-4)


def test_a_photo_is_turned_upright_as_its_exif_orientation_says(tmp_path):
    """A camera held sideways stores the pixels as they came off the sensor and an EXIF
    orientation; orientation 6 means "rotate 90 degrees clockwise to view": the left half
    of the stored pixels is the top of the photo."""
    pixels = np.zeros((256, 512, 3), dtype=np.uint8)
    pixels[:, :256, 0] = 255                       # red on the left of the stored pixels
    pixels[:, 256:, 2] = 255                       # blue on the right
    exif = Image.Exif()
    exif[0x0112] = 6                               # Orientation
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    x = load_image(str(path)) + np.asarray(BVLC_MEAN_BGR, np.float32)[:, None, None]
    red, blue = np.array([0, 0, 255.0])[:, None, None], np.array([255.0, 0, 0])[:, None, None]
    np.testing.assert_allclose(x[:, :100], np.broadcast_to(red, (3, 100, 224)), atol=8)
    np.testing.assert_allclose(x[:, 124:], np.broadcast_to(blue, (3, 100, 224)), atol=8)


@pytest.mark.parametrize("mode, shape", [("L", (40, 30)), ("RGBA", (30, 40, 4))])
def test_greyscale_and_alpha_images_become_three_channels(tmp_path, mode, shape):
    pixels = np.full(shape, 200, dtype=np.uint8)
    x = load_image(save(tmp_path, pixels, mode=mode))
    expected = 200 - np.asarray(BVLC_MEAN_BGR, np.float32)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=1e-4)


def test_missing_or_unreadable_photo_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file"):
        load_image(str(tmp_path / "nope.jpg"))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ValueError) as caught:
        load_image(str(text))
    assert "notes.jpg: not an image" in str(caught.value) and "\n" not in str(caught.value)
    whole = save(tmp_path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    cut = tmp_path / "cut.png"
    with open(whole, "rb") as f:
        cut.write_bytes(f.read()[:2000])           # a download stopped part-way
    with pytest.raises(ValueError, match="cut.png: not an image Pillow can read"):
        load_image(str(cut))


def test_the_1000_classes_in_caffes_synset_order():
    classes = imagenet_classes()
    wnids = [c.wnid for c in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (classes[0].wnid, classes[0].name) == ("n01440764", "tench")
    assert classes[1].name == "goldfish" and classes[281].name == "tabby"
    assert classes[999].description == "toilet tissue, toilet paper, bathroom tissue"

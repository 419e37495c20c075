"""rzrt.image against torchvision.transforms, the oracle for classification preprocessing.

The reference is torchvision's ImageNet preset applied to a pillow image opened with
.convert("RGB") (what torchvision's own pil_loader does):

    Compose([Resize(size), CenterCrop(crop), ToTensor(), Normalize(mean, std)])

rzrt must give the same (3, crop, crop) float32 tensor within 1e-5, for real photos,
every pillow mode, EXIF-rotated JPEGs, non-default sizes and pictures smaller than the crop.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from rzrt.errors import InputError
from rzrt.image import IMAGENET_MEAN, IMAGENET_STD, expand_paths, load_image, preprocess

from conftest import IMAGES

torch = pytest.importorskip("torch")
T = pytest.importorskip("torchvision.transforms")

ATOL = 1e-5
PHOTOS = sorted(IMAGES.glob("*.jpg"))
EXIF_ORIENTATION = 0x0112


def torchvision_preprocess(im: Image.Image, size=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    tf = T.Compose([T.Resize(size), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean=mean, std=std)])
    return tf(im.convert("RGB")).numpy()


def assert_same(ours, ref):
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real, non-square photo, as RGB."""
    with Image.open(IMAGES / "cat.jpg") as im:
        return im.convert("RGB")


# --- real photos --------------------------------------------------------------------------

def test_there_are_photos_of_several_shapes():
    sizes = {Image.open(p).size for p in PHOTOS}
    assert len(PHOTOS) >= 5
    assert any(w > h for w, h in sizes) and any(w <= h for w, h in sizes)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_photo_matches_torchvision(path):
    ours = preprocess(path)
    ref = torchvision_preprocess(Image.open(path))
    assert ours.shape == (3, 224, 224)
    assert_same(ours, ref)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_photo_path_given_as_str_matches_pil_image(path):
    assert_same(preprocess(str(path)), preprocess(Image.open(path)))


@pytest.mark.parametrize("size,crop", [(342, 299), (232, 224), (160, 128), (224, 224), (8, 8)])
def test_non_default_size_and_crop_match_torchvision(size, crop):
    path = IMAGES / "Long.jpg"
    ours = preprocess(path, size=size, crop=crop)
    assert ours.shape == (3, crop, crop)
    assert_same(ours, torchvision_preprocess(Image.open(path), size, crop))


def test_non_default_mean_and_std_match_torchvision():
    path = IMAGES / "Ma.jpg"
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.1, 1.0)
    ours = preprocess(path, size=300, crop=256, mean=mean, std=std)
    assert_same(ours, torchvision_preprocess(Image.open(path), 300, 256, mean, std))
    # and the normalisation really was applied per channel: different from the default one
    assert not np.allclose(ours, preprocess(path, size=300, crop=256), atol=1e-2)


@pytest.mark.parametrize("wh", [(889, 500), (500, 889), (256, 256), (300, 256), (257, 1000)])
def test_resize_edge_shapes_match_torchvision(photo, wh):
    """Shorter side already equal to `size`, square, and very long pictures."""
    im = photo.resize(wh, Image.BILINEAR)
    assert_same(preprocess(im), torchvision_preprocess(im))


@pytest.mark.parametrize("wh,size,crop", [
    ((300, 150), 100, 224),   # both sides end up smaller than the crop
    ((50, 500), 100, 224),    # one side smaller, one larger
    ((30, 11), 6, 9),         # odd padding: torchvision puts the extra pixel at the bottom
])
def test_picture_smaller_than_crop_is_padded_like_torchvision(photo, wh, size, crop):
    im = photo.resize(wh, Image.BILINEAR)
    ours = preprocess(im, size=size, crop=crop)
    assert ours.shape == (3, crop, crop)
    assert_same(ours, torchvision_preprocess(im, size, crop))
    # the padding is black (0 before normalising), so its normalised value is -mean/std
    corner = ours[:, 0, 0]
    np.testing.assert_allclose(corner, -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), atol=ATOL)


# --- pillow modes -------------------------------------------------------------------------

def _rgba(photo):
    im = photo.convert("RGBA")
    alpha = np.random.default_rng(0).integers(0, 256, photo.size[::-1], dtype=np.uint8)
    im.putalpha(Image.fromarray(alpha))
    return im


def _palette_with_transparency(photo):
    im = photo.convert("P", palette=Image.ADAPTIVE, colors=64)
    im.info["transparency"] = 3
    return im


MODES = {
    # name: (build from an RGB photo, file suffix, save kwargs)
    "L-png": (lambda im: im.convert("L"), ".png", {}),
    "L-jpeg": (lambda im: im.convert("L"), ".jpg", {}),
    "LA-png": (lambda im: im.convert("LA"), ".png", {}),
    "RGBA-png": (_rgba, ".png", {}),
    "CMYK-jpeg": (lambda im: im.convert("CMYK"), ".jpg", {}),
    "CMYK-tiff": (lambda im: im.convert("CMYK"), ".tiff", {}),
    "P-png": (lambda im: im.convert("P", palette=Image.ADAPTIVE, colors=64), ".png", {}),
    "P-transparent-png": (_palette_with_transparency, ".png", {"transparency": 3}),
    "P-gif": (lambda im: im.convert("P"), ".gif", {}),
    "1-png": (lambda im: im.convert("1"), ".png", {}),
    "I;16-png": (lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257), ".png", {}),
    "F-tiff": (lambda im: Image.fromarray(np.asarray(im.convert("L"), np.float32)), ".tiff", {}),
    "RGB-bmp": (lambda im: im, ".bmp", {}),
    "RGB-webp": (lambda im: im, ".webp", {}),
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_from_file_matches_torchvision_on_convert_rgb(photo, tmp_path, name):
    build, suffix, kw = MODES[name]
    path = tmp_path / f"{name}{suffix}"
    build(photo).save(path, **kw)
    expected_mode = name.split("-")[0]
    with Image.open(path) as stored:
        assert stored.mode == expected_mode, "the test did not produce the mode it meant to"
        ref = torchvision_preprocess(stored)
    assert load_image(path).mode == "RGB"
    assert_same(preprocess(path), ref)


@pytest.mark.parametrize("name", ["L-png", "LA-png", "RGBA-png", "CMYK-jpeg", "P-png", "1-png"])
def test_every_mode_as_pil_image_matches_torchvision_on_convert_rgb(photo, name):
    im = MODES[name][0](photo)
    ours = preprocess(im)
    assert ours.shape == (3, 224, 224)
    assert_same(ours, torchvision_preprocess(im))


def test_rgba_drops_alpha_like_torchvision_pil_loader(photo, tmp_path):
    from torchvision.datasets.folder import pil_loader
    path = tmp_path / "rgba.png"
    _rgba(photo).save(path)
    assert_same(preprocess(path), torchvision_preprocess(pil_loader(str(path))))
    # the colour channels are kept, not blended with the (random) alpha
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(photo))


# --- EXIF orientation -----------------------------------------------------------------------

@pytest.mark.parametrize("orientation,rotated", [(3, False), (6, True), (8, True)])
def test_exif_orientation_is_applied(photo, tmp_path, orientation, rotated):
    path = tmp_path / f"orient{orientation}.jpg"
    exif = photo.getexif()
    exif[EXIF_ORIENTATION] = orientation
    photo.save(path, exif=exif)

    with Image.open(path) as stored:
        assert stored.size == photo.size            # pixels are stored unrotated
        assert stored.getexif()[EXIF_ORIENTATION] == orientation
        upright = ImageOps.exif_transpose(stored).convert("RGB")

    assert not np.array_equal(np.asarray(upright), np.asarray(photo)), "EXIF had no effect"

    loaded = load_image(path)
    w, h = photo.size
    assert loaded.size == ((h, w) if rotated else (w, h))
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(upright))
    assert_same(preprocess(path), torchvision_preprocess(upright))


# --- unreadable pictures ----------------------------------------------------------------------

def _text_as_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    return p


def _empty_jpg(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    return p


def _missing(tmp_path):
    return tmp_path / "missing.jpg"


def _directory(tmp_path):
    p = tmp_path / "folder.jpg"
    p.mkdir()
    return p


def _truncated_jpeg(tmp_path):
    p = tmp_path / "truncated.jpg"
    p.write_bytes((IMAGES / "cat.jpg").read_bytes()[:5000])
    return p


@pytest.mark.parametrize("make", [_text_as_jpg, _empty_jpg, _missing, _directory, _truncated_jpeg],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("fn", [load_image, preprocess], ids=["load_image", "preprocess"])
def test_unreadable_picture_raises_input_error_naming_the_file(tmp_path, make, fn):
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        fn(path)
    assert str(path) in str(info.value)


def test_decompression_bomb_is_an_input_error(photo, tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    photo.save(path)
    w, h = photo.size
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", w * h // 4)   # > 2x the limit: pillow refuses
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


# --- folders ----------------------------------------------------------------------------------

def test_expand_paths_finds_pictures_in_folders_sorted_and_keeps_files_as_given(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.jpg", "a.PNG", "sub/c.jpeg", "readme.txt", "model.onnx"]:
        (tmp_path / name).write_bytes(b"x")
    given = tmp_path / "whatever.dat"
    found = expand_paths([tmp_path, given])
    assert found == [tmp_path / "a.PNG", tmp_path / "b.jpg", tmp_path / "sub" / "c.jpeg", given]

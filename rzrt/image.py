"""Picture -> tensor, exactly as torchvision's classification preset does it on a picture
opened with .convert("RGB") (load_image also applies the EXIF orientation first):

    Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)

  resize     the shorter side to `size`, the longer one int(size * long / short), PIL bilinear
             (antialiased; the filter torchvision.transforms uses on PIL images)
  crop       the central `crop` x `crop` square, top/left = round((side - crop) / 2); a picture
             smaller than the crop is first padded with black, centred, as torchvision does
  scale      x / 255 to [0, 1], HWC -> CHW
  normalise  (x - mean) / std per channel, in float32
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rzrt.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def to_rgb(im: Image.Image) -> Image.Image:
    """Any pillow mode -> RGB, as im.convert("RGB") does (alpha dropped, palette expanded)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image(path) -> Image.Image:
    """Open any pillow-readable picture as RGB, EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)   # a loaded copy, independent of the open file
            return to_rgb(im)
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not an image") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image {path}: {e}; expected a picture pillow can open "
                         f"(JPEG, PNG, BMP, GIF, WebP, TIFF)") from None


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return im
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return im.resize((new_w, new_h), Image.BILINEAR)


def center_crop(im: Image.Image, crop: int) -> Image.Image:
    w, h = im.size
    if w < crop or h < crop:   # torchvision pads with zeros first
        canvas = Image.new(im.mode, (max(w, crop), max(h, crop)))
        canvas.paste(im, ((max(w, crop) - w) // 2, (max(h, crop) - h) // 2))
        im, (w, h) = canvas, canvas.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return im.crop((left, top, left + crop, top + crop))


def to_tensor(im: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(3, H, W) float32: (x / 255 - mean) / std."""
    x = np.asarray(im, dtype=np.float32) / np.float32(255)
    x = x.transpose(2, 0, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - m) / s)


def preprocess(path_or_image, size: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """One picture (a path, or a pillow image in any mode) -> (3, crop, crop) float32,
    ready to stack into an NCHW batch."""
    im = to_rgb(path_or_image) if isinstance(path_or_image, Image.Image) else load_image(path_or_image)
    return to_tensor(center_crop(resize_shorter(im, size), crop), mean, std)


def expand_paths(paths) -> list:
    """Files as given; folders replaced by the pictures inside them (sorted, recursive)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out

"""Image files in and out (numpy + Pillow), padding, PSNR and the bundled sample photos."""
from __future__ import annotations

import importlib.util
import io
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from otterlite.errors import OtterliteError

SAMPLE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_right.png")
# export's default calibration set: photos the embedded defaults were trained on, so astronaut,
# rocket and motorcycle_right stay held out for measuring
CALIBRATION_PHOTOS = ("chelsea.png", "coffee.png", "motorcycle_left.png", "ihc.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Grayscale, palette and RGBA/LA images are converted (alpha dropped); 16-bit images are
    reduced to 8 bits by round_half_even(v / 257). Each conversion prints a one-line notice.
    """
    path = Path(path)
    if not path.is_file():
        raise OtterliteError(f"{path}: no such file; give the path of an image (PNG, JPEG, ...)")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise OtterliteError(f"{path}: not a readable image ({str(err)[:80]}); give a PNG, JPEG, "
                             f"PPM or other Pillow-readable photo") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        notice(f"{path.name}: {image.mode} image reduced to 8 bits and converted to RGB")
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        notice(f"{path.name}: {image.mode} image converted to RGB (alpha dropped)")
        return np.asarray(image.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
    notice(f"{path.name}: {image.mode} image converted to RGB")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate bottom and right so both sides are multiples of `multiple`."""
    h, w = rgb.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return rgb
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(255^2 / MSE) over all samples, in dB (inf when identical)."""
    if reference.shape != test.shape:
        raise OtterliteError(f"PSNR of images of different shapes {reference.shape} vs {test.shape}")
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def sample_photo(name: str = "astronaut.png") -> Path:
    """Path of a photo bundled with scikit-image (found without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise OtterliteError("the bundled sample photos come with scikit-image: pip install "
                             "scikit-image (or otterlite[all]), or pass an IMAGE path")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise OtterliteError(f"sample photo {name!r} not found in {path.parent}; choose one of "
                             f"{', '.join(SAMPLE_PHOTOS)}")
    return path


def calibration_photos(folder: str | Path | None = None) -> list[np.ndarray]:
    """The images of `folder` (sorted by name), or the bundled CALIBRATION_PHOTOS."""
    if folder is None:
        return [load_rgb(sample_photo(name)) for name in CALIBRATION_PHOTOS]
    folder = Path(folder)
    if not folder.is_dir():
        raise OtterliteError(f"--calibration {folder}: no such directory; give a folder of photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OtterliteError(f"--calibration {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it; "
                             f"add a few representative photos")
    return [load_rgb(p) for p in files]

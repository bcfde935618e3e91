"""The SEA OTTER JPEG codec: three codec-domain channels stored as the Y, Cb, Cr
components with no colour conversion, 4:4:4, one quantization table per channel,
read back raw through libjpeg (Pillow `draft("YCbCr")`). numpy + Pillow only.

A COM marker "otl seaotter=<first 16 hex digits of the checkpoint sha256> k=<K>" records
which checkpoint and operating point wrote the file, so the consumer can refuse a
mismatched inverse.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from otterlite.errors import OtterliteError

COMMENT_PREFIX = b"otl seaotter="
SHA_DIGITS = 16
MAX_PIXELS = 1 << 26  # 67 MPx (8192 x 8192): a JPEG header declaring more is refused before decoding


def write_codec_jpeg(codec: np.ndarray, qtables: list[list[int]], checkpoint_sha: str, k: int) -> bytes:
    """codec: (H, W, 3) uint8; qtables: 3 lists of 64 ints (raster order, 1..255)."""
    if codec.dtype != np.uint8 or codec.ndim != 3 or codec.shape[2] != 3:
        raise OtterliteError(f"codec image must be (H, W, 3) uint8, got {codec.shape} {codec.dtype}")
    h, w, _ = codec.shape
    image = Image.frombytes("YCbCr", (w, h), np.ascontiguousarray(codec).tobytes())
    buf = io.BytesIO()
    comment = COMMENT_PREFIX + checkpoint_sha[:SHA_DIGITS].encode() + b" k=" + str(k).encode()
    image.save(buf, format="JPEG", qtables=[list(map(int, q)) for q in qtables],
               subsampling=0, comment=comment)
    return buf.getvalue()


def open_codec_jpeg(data: bytes, source: str = "JPEG", load: bool = True) -> tuple[Image.Image, dict]:
    """-> (decoded PIL image holding the raw YCbCr components, {"seaotter": sha or None, "k": int or None});
    load False: the header only (size, mode, marker checked), for a decoder of its own."""
    if not data.startswith(b"\xff\xd8"):
        raise OtterliteError(f"{source}: not a JPEG file (no SOI marker); decode takes the .jpg "
                             f"written by 'otterlite transcode'")
    try:
        with warnings.catch_warnings():  # Pillow's own size check warns; ours (MAX_PIXELS, lower) refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise OtterliteError(f"{source}: the JPEG declares {w}x{h} = {w * h / 1e6:.0f} MPx, more than the "
                                 f"consumer's limit of {MAX_PIXELS / 1e6:.0f} MPx; a corrupted header, or split the "
                                 f"image")
        image.draft("YCbCr", image.size)
        if image.mode != "YCbCr":
            raise OtterliteError(f"{source}: JPEG mode {image.mode}; expected 3 components (YCbCr)")
    except OtterliteError:
        raise
    except Image.DecompressionBombError:
        raise OtterliteError(f"{source}: the JPEG declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MPx, over "
                             f"the consumer's limit of {MAX_PIXELS / 1e6:.0f} MPx; a corrupted header, or split the "
                             f"image") from None
    except Exception as err:
        raise unreadable(source, err) from None
    if load:
        load_pixels(image, source)
    return image, parse_comment(image.info.get("comment", b""))


def unreadable(source: str, err: Exception) -> OtterliteError:
    return OtterliteError(f"{source}: unreadable JPEG ({str(err)[:100]}); the file is truncated or corrupted")


def load_pixels(image: Image.Image, source: str) -> None:
    try:
        image.load()
    except Exception as err:
        raise unreadable(source, err) from None


def read_codec_words(data: bytes, source: str = "JPEG") -> tuple[np.ndarray, dict]:
    """-> ((H, W) uint32 words z0 | z1 << 8 | z2 << 16 | 255 << 24 (little-endian), marker fields
    as in open_codec_jpeg): Pillow's own 4-byte YCbCr pixels, which libjpeg decodes straight into
    the array (Pillow's Image.core.map_buffer, no copy); through tobytes("raw", "YCbCrX")
    where this Pillow keeps its own buffer."""
    image, meta = open_codec_jpeg(data, source, load=False)
    w, h = image.size
    words = np.empty((h, w), np.uint32)
    try:
        image.im = core = Image.core.map_buffer(words, (w, h), "raw", 0, ("YCbCr", 0, 1))
    except (AttributeError, TypeError, ValueError):
        core = None
    load_pixels(image, source)
    if image.im is not core:  # Pillow allocated its own image after all
        words[:] = np.frombuffer(image.tobytes("raw", "YCbCrX"), np.uint32).reshape(h, w)
    return words, meta


def read_codec_jpeg(data: bytes, source: str = "JPEG") -> tuple[np.ndarray, dict]:
    """-> ((H, W, 3) uint8 raw components, marker fields as in open_codec_jpeg)."""
    image, meta = open_codec_jpeg(data, source)
    return np.asarray(image, dtype=np.uint8), meta


def check_marker(meta: dict, sha256: str, checkpoint: str, source: str, force: bool) -> None:
    """Refuse a JPEG without our marker, or written for another SEA OTTER checkpoint, unless forced."""
    if force:
        return
    if meta["seaotter"] is None:
        raise OtterliteError(f"{source}: no otterlite marker, so it was not written by 'otterlite "
                             f"transcode'; pass --force to apply the inverse transform anyway")
    if meta["seaotter"] != sha256[:SHA_DIGITS]:
        raise OtterliteError(f"{source} was written with SEA OTTER checkpoint {meta['seaotter'][:12]}, "
                             f"but {checkpoint} is {sha256[:12]}; pass the matching checkpoint or "
                             f"export (or --force)")


def parse_comment(comment: bytes) -> dict:
    """Our COM marker's fields; a marker that is not ours, or a malformed field, reads as absent
    (decode then refuses the JPEG for its marker, naming --force)."""
    meta = {"seaotter": None, "k": None}
    if comment.startswith(COMMENT_PREFIX):
        fields = comment[len(COMMENT_PREFIX):].decode("ascii", "replace").split()
        meta["seaotter"] = fields[0] if fields else None
        for f in fields[1:]:
            if f.startswith("k=") and f[2:].isdigit() and len(f) < 8:
                meta["k"] = int(f[2:])
    return meta

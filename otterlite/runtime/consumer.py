"""The consumer: SEA OTTER JPEG -> libjpeg (Pillow, no colour conversion) -> the exported
inverse transform's integer spec -> RGB. numpy + Pillow only.

    acc[o] = bias[o] + sum_{c,u,v} tables[c, u, v, z[c, . + u - pad, . + v - pad], o]  (0 outside)
    rgb[o] = clamp(floor(acc[o] / 2^shift), 0, 255)          (int64: |acc| < 2^39 by the spec)

A 1x1 mix makes rgb a function of one pixel's three codes, so it can be tabulated once for all
2^24 code triples (64 MB, built with integer arithmetic from the spec) and each pixel is one
lookup: libjpeg writes Pillow's 4-byte YCbCr pixels straight into a uint32 array
(models.jpeg.read_codec_words), and each word is looked up in place.
Wider mixes, and a decoder built with table=False, run the formula (`apply_inverse`).
Both work a band of rows (BAND_PIXELS) at a time: beyond the decoded JPEG, its raw bytes and
the output, memory stays a few MB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.models.jpeg import check_marker, read_codec_words
from otterlite.integer_spec.types import TableMixSpec, read_spec


def load_inverse_spec(source: str | Path | bytes) -> TableMixSpec:
    """The exported SEA OTTER inverse spec: a DIR from `otterlite export`, a .spec file, or its bytes."""
    spec, name = read_spec(source, "seaotter-inverse.spec")
    if not isinstance(spec, TableMixSpec):
        raise OtterliteError(f"{name}: a {spec.kind} spec, not the SEA OTTER inverse; pass seaotter-inverse.spec")
    return spec


BAND_PIXELS = 1 << 16  # pixels per pass (whole rows, at least one): temporaries stay a few MB
LOOKUP_PIXELS = 1 << 18  # pixels per table lookup (1 MB of words, L2-sized)


def band_rows(width: int) -> int:
    return max(1, BAND_PIXELS // max(width, 1))


def apply_inverse(spec: TableMixSpec, codec: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 codes -> (H, W, 3) uint8 RGB by the formula (any kernel size), a band
    of rows at a time."""
    out = np.empty(codec.shape, np.uint8)
    band = band_rows(codec.shape[1])
    for top in range(0, codec.shape[0], band):
        out[top:top + band] = inverse_rows(spec, codec, top, min(top + band, codec.shape[0]))
    return out


def inverse_rows(spec: TableMixSpec, codec: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Output rows top..bottom-1: their input rows +-pad, index 0 (table row 0) outside the image."""
    h, w, _ = codec.shape
    p, k = spec.pad, spec.kernel
    rows = spec.rows()
    index = np.zeros((bottom - top + 2 * p, w + 2 * p, 3), np.intp)
    lo, hi = max(top - p, 0), min(bottom + p, h)
    index[lo - top + p:hi - top + p, p:p + w] = codec[lo:hi]
    index[lo - top + p:hi - top + p, p:p + w] += 1
    n = bottom - top
    acc = np.broadcast_to(spec.bias, (n, w, 3)).copy()
    for c in range(spec.tables.shape[0]):
        for u in range(k):
            for v in range(k):
                acc += rows[c, u, v][index[u:u + n, v:v + w, c]]
    return np.clip(acc >> spec.shift, 0, 255).astype(np.uint8)


def pointwise_table(spec: TableMixSpec) -> np.ndarray:
    """For a 1x1 kernel: uint32 table over code = z0 | z1 << 8 | z2 << 16, holding r | g << 8 | b << 16."""
    t = spec.tables[:, 0, 0]  # (c, z, o)
    packed = np.zeros((256, 256, 256), np.uint32)  # [z2, z1, z0]
    for o in range(3):
        acc = t[2, :, o][:, None, None] + t[1, :, o][None, :, None] + (t[0, :, o] + int(spec.bias[o]))[None, None]
        packed |= np.clip(acc >> spec.shift, 0, 255).astype(np.uint32) << (8 * o)
    return packed.ravel()


class ConsumerDecoder:
    """decode(jpeg bytes) -> (H, W, 3) uint8 RGB, checking the JPEG's SEA OTTER marker.
    table: tabulate a 1x1 mix over all 2^24 code triples (about 1.4 s to build, then about 4x
    faster per pixel than the formula: worth it from some 30 MPx on); False runs the formula."""

    def __init__(self, spec: TableMixSpec, table: bool = True):
        self.spec = spec
        self.table = pointwise_table(spec) if spec.kernel == 1 and table else None

    def decode(self, data: bytes, source: str = "JPEG", force: bool = False) -> np.ndarray:
        words, meta = read_codec_words(data, source)
        check_marker(meta, self.spec.source_sha256, "this export's inverse", source, force)
        if self.table is None:
            return apply_inverse(self.spec, words.view(np.uint8).reshape(*words.shape, 4)[..., :3])
        return self._lookup(words.ravel(), *words.shape)

    def transform(self, codec: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 codes -> (H, W, 3) uint8 RGB (the table when the mix is 1x1)."""
        if self.table is None:
            return apply_inverse(self.spec, codec)
        z = codec.astype(np.uint32)
        return self._lookup((z[..., 0] | z[..., 1] << 8 | z[..., 2] << 16).ravel(), *codec.shape[:2])

    def _lookup(self, words: np.ndarray, h: int, w: int) -> np.ndarray:
        """(H*W,) uint32 words z0 | z1 << 8 | z2 << 16 | x << 24, x 0 or 255 -> (H, W, 3) uint8
        RGB, a view of the table's r | g << 8 | b << 16 per pixel, looked up LOOKUP_PIXELS at a
        time into the words themselves. Read as int32 a word is the code triple itself (x 0) or
        that minus 2^24 (x 255), which mode "wrap" takes to the same entry of the 2^24-entry
        table: no mask, int32 indices suit 32-bit numpy too, and unlike mode "raise" numpy
        writes `out` directly instead of through a buffer (at 1080p here 1.9 -> 1.5 ms)."""
        index = words.view(np.int32)
        for at in range(0, h * w, LOOKUP_PIXELS):
            np.take(self.table, index[at:at + LOOKUP_PIXELS], out=words[at:at + LOOKUP_PIXELS], mode="wrap")
        return words.view(np.uint8).reshape(h, w, 4)[..., :3]

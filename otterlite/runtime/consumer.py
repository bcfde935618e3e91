"""The consumer: SEA OTTER JPEG -> libjpeg (Pillow, no colour conversion) -> the exported
inverse transform's integer spec -> RGB. numpy + Pillow only.

    t[c] = table[c, z[c]];  acc[o] = sum_{c,u,v} W[o, c, u, v] t[c, . + u - pad] + bias[o]
    rgb[o] = clamp(floor(acc[o] / 2^shift), 0, 255)                 (integers throughout)

A 1x1 mix makes rgb a function of one pixel's three codes, so it is tabulated once for all
2^24 code triples (64 MB, built with integer arithmetic from the spec) and each pixel is one
lookup: libjpeg writes 4-byte YCbCrX pixels, read as uint32, masked to 24 bits, looked up.
Wider mixes run the formula directly (`apply_inverse`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.models.jpeg import check_marker, open_codec_jpeg
from otterlite.spec.types import TableMixSpec, read_spec


def load_inverse_spec(source: str | Path | bytes) -> TableMixSpec:
    """The exported SEA OTTER inverse spec: a DIR from `otterlite export`, a .spec file, or its bytes."""
    spec, name = read_spec(source, "seaotter-inverse.spec")
    if not isinstance(spec, TableMixSpec):
        raise OtterliteError(f"{name}: a {spec.kind} spec, not the SEA OTTER inverse; pass seaotter-inverse.spec")
    return spec


def apply_inverse(spec: TableMixSpec, codec: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 codes -> (H, W, 3) uint8 RGB by the formula (any mix size)."""
    h, w, _ = codec.shape
    t = np.stack([spec.tables[c].astype(np.int32)[codec[..., c]] for c in range(3)], axis=-1)
    p, k = spec.pad, spec.weights.shape[-1]
    t = np.pad(t, ((p, p), (p, p), (0, 0)))
    acc = np.broadcast_to(spec.bias.astype(np.int32), (h, w, 3)).copy()
    for u in range(k):
        for v in range(k):
            acc += t[u:u + h, v:v + w] @ spec.weights[:, :, u, v].T.astype(np.int32)
    return np.clip(acc >> spec.shift, 0, 255).astype(np.uint8)


def pointwise_table(spec: TableMixSpec) -> np.ndarray:
    """For a 1x1 mix: uint32 table over code = z0 | z1 << 8 | z2 << 16, holding r | g << 8 | b << 16."""
    parts = spec.weights[:, :, 0, 0].astype(np.int32)[:, :, None] * spec.tables.astype(np.int32)[None]  # (o, c, z)
    packed = np.zeros((256, 256, 256), np.uint32)  # [z2, z1, z0]
    for o in range(3):
        acc = parts[o, 2][:, None, None] + parts[o, 1][None, :, None] + (parts[o, 0] + int(spec.bias[o]))[None, None]
        packed |= np.clip(acc >> spec.shift, 0, 255).astype(np.uint32) << (8 * o)
    return packed.ravel()


class ConsumerDecoder:
    """decode(jpeg bytes) -> (H, W, 3) uint8 RGB, checking the JPEG's SEA OTTER marker."""

    def __init__(self, spec: TableMixSpec):
        self.spec = spec
        self.table = pointwise_table(spec) if spec.weights.shape[-1] == 1 else None

    def decode(self, data: bytes, source: str = "JPEG", force: bool = False) -> np.ndarray:
        image, meta = open_codec_jpeg(data, source)
        check_marker(meta, self.spec.source_sha256, "this export's inverse", source, force)
        w, h = image.size
        if self.table is None:
            return apply_inverse(self.spec, np.frombuffer(image.tobytes("raw", "YCbCr"), np.uint8).reshape(h, w, 3))
        codes = np.bitwise_and(np.frombuffer(image.tobytes("raw", "YCbCrX"), np.uint32), 0xFFFFFF)
        return self._lookup(codes, h, w)  # little-endian: code = z0 | z1 << 8 | z2 << 16

    def transform(self, codec: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 codes -> (H, W, 3) uint8 RGB (the table when the mix is 1x1)."""
        if self.table is None:
            return apply_inverse(self.spec, codec)
        z = codec.astype(np.uint32)
        return self._lookup(z[..., 0] | z[..., 1] << 8 | z[..., 2] << 16, *codec.shape[:2])

    def _lookup(self, codes: np.ndarray, h: int, w: int) -> np.ndarray:
        """Packed codes -> (H, W, 3) uint8 RGB, unpacking the table's r | g << 8 | b << 16."""
        return np.take(self.table, codes).view(np.uint8).reshape(h, w, 4)[..., :3]

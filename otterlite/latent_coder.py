"""Lossless latent coder: adaptive Golomb-Rice, one context per latent channel.

Designed so a few dozen lines of dependency-free C on a microcontroller write the same
bytes, row by row, as the sensor reads the image out.

Order ("readout order"): for each image row r = 0..H-1 of the padded frame, for each scale
group g in order with (r + 1) % g.ps == 0, latent row (r + 1) / g.ps - 1 of g is coded,
channel by channel, each row left to right. That is the order in which a streaming
encoder completes latent rows.

Per value v (int8, -127..127), channel state (A, N), initially A = 2, N = 1:
    u = 2v if v >= 0 else -2v - 1                         (0..254)
    k = min(k >= 0 : N << k >= A), at most 7
    q = u >> k
    q < 16:  q one-bits, one zero-bit, then the k low bits of u (MSB first)
    q >= 16: 16 one-bits, then u in 8 bits (MSB first)
    A += u; N += 1; if N == 32: A >>= 1, N >>= 1
Bits fill bytes MSB first; the last byte is padded with zero bits.
"""
from __future__ import annotations

import numpy as np

from otterlite.errors import OtterliteError

CODER_ID = 1
ESCAPE_Q = 16
MAX_K = 7
HALVE_AT = 32
INIT_A, INIT_N = 2, 1


def readout_order(group_ps: list[int], padded_height: int) -> list[tuple[int, int]]:
    """[(group index, latent row)] in the order a row-streaming sensor completes them."""
    order = []
    for r in range(padded_height):
        for gi, ps in enumerate(group_ps):
            if (r + 1) % ps == 0:
                order.append((gi, (r + 1) // ps - 1))
    return order


def rice_k(a: int, n: int) -> int:
    k = 0
    while (n << k) < a and k < MAX_K:
        k += 1
    return k


class _BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.nbits = 0

    def put(self, value: int, nbits: int) -> None:
        self.acc = (self.acc << nbits) | value
        self.nbits += nbits
        while self.nbits >= 8:
            self.nbits -= 8
            self.out.append((self.acc >> self.nbits) & 0xFF)
        self.acc &= (1 << self.nbits) - 1

    def finish(self) -> bytes:
        if self.nbits:
            self.out.append((self.acc << (8 - self.nbits)) & 0xFF)
        return bytes(self.out)


class _BitReader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0  # bit position

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise OtterliteError("latent payload ends early: the container is truncated or corrupted")
        b = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def bits(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self.bit()
        return v


def encode_latents(latents: list[np.ndarray], group_ps: list[int], padded_height: int) -> bytes:
    """latents: per group (C, h, w) int8 arrays -> payload bytes."""
    writer = _BitWriter()
    offsets = np.cumsum([0] + [z.shape[0] for z in latents])
    state = [[INIT_A, INIT_N] for _ in range(int(offsets[-1]))]
    for gi, row in readout_order(group_ps, padded_height):
        block = latents[gi][:, row, :].astype(np.int32)
        mapped = np.where(block >= 0, 2 * block, -2 * block - 1).tolist()
        for c, values in enumerate(mapped):
            st = state[offsets[gi] + c]
            for u in values:
                k = rice_k(st[0], st[1])
                q = u >> k
                if q < ESCAPE_Q:
                    writer.put(((1 << q) - 1) << 1, q + 1)
                    if k:
                        writer.put(u & ((1 << k) - 1), k)
                else:
                    writer.put((1 << ESCAPE_Q) - 1, ESCAPE_Q)
                    writer.put(u, 8)
                st[0] += u
                st[1] += 1
                if st[1] == HALVE_AT:
                    st[0] >>= 1
                    st[1] >>= 1
    return writer.finish()


def decode_latents(payload: bytes, shapes: list[tuple[int, int, int]], group_ps: list[int],
                   padded_height: int) -> list[np.ndarray]:
    """Inverse of encode_latents; shapes are the per-group (C, h, w)."""
    reader = _BitReader(payload)
    latents = [np.zeros(s, dtype=np.int8) for s in shapes]
    offsets = np.cumsum([0] + [s[0] for s in shapes])
    state = [[INIT_A, INIT_N] for _ in range(int(offsets[-1]))]
    for gi, row in readout_order(group_ps, padded_height):
        channels, _, width = shapes[gi]
        for c in range(channels):
            st = state[offsets[gi] + c]
            values = []
            for _ in range(width):
                k = rice_k(st[0], st[1])
                q = 0
                while q < ESCAPE_Q and reader.bit():
                    q += 1
                u = reader.bits(8) if q == ESCAPE_Q else (q << k) | reader.bits(k)
                if u > 254:
                    raise OtterliteError("latent payload holds an impossible value: the container is corrupted")
                values.append(u)
                st[0] += u
                st[1] += 1
                if st[1] == HALVE_AT:
                    st[0] >>= 1
                    st[1] >>= 1
            arr = np.asarray(values, dtype=np.int32)
            latents[gi][c, row, :] = np.where(arr & 1, -(arr + 1) // 2, arr // 2)
    if (reader.pos + 7) // 8 != len(payload):
        raise OtterliteError("latent payload has trailing bytes: the container is corrupted")
    return latents


WEBP_CODER_ID = 2  # WaLLoC's published layout (12 channels in one group only)


def encode_webp(latents: np.ndarray) -> bytes:
    """(12, h, w) int8 -> lossless WebP of the 2x2-tiled RGB image upstream WaLLoC writes:
    pixel [nh * h + y, nw * w + x, c] = latents[4c + 2nh + nw, y, x] + 128 (uint8)."""
    import io

    from PIL import Image

    c, h, w = latents.shape
    if c != 12:
        raise OtterliteError(f"the WebP latent layout holds 12 channels, got {c}; use the Rice coder")
    tiles = (latents.astype(np.int16) + 128).astype(np.uint8).reshape(3, 2, 2, h, w)
    image = tiles.transpose(1, 3, 2, 4, 0).reshape(2 * h, 2 * w, 3)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    return buffer.getvalue()


def decode_webp(payload: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """encode_webp's inverse -> (12, h, w) int8."""
    import io

    from PIL import Image

    c, h, w = shape
    try:
        image = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    except Exception as err:  # noqa: BLE001 - Pillow raises several types for bad data
        raise OtterliteError(f"latent payload is not a readable WebP image ({err}); the container is corrupted") from None
    if image.shape != (2 * h, 2 * w, 3) or c != 12:
        raise OtterliteError(f"WebP latents of {image.shape}, expected {(2 * h, 2 * w, 3)}: the container is corrupted")
    tiles = image.reshape(2, h, 2, w, 3).transpose(4, 0, 2, 1, 3).reshape(12, h, w)
    return (tiles.astype(np.int16) - 128).astype(np.int8)

"""The `.otl` latent container (numpy only). All integers little-endian.

offset  size  field
0       4     magic b"OTLF"
4       1     format version (1)
5       1     latent coder id (1 = adaptive Rice in readout order, see latent_coder.py;
              2 = WaLLoC's published layout: the 12 channels tiled 2x2 as one lossless WebP)
6       8     codec (model id), ASCII, NUL-padded: "FRAPPE" or "WaLLoC"
14      32    checkpoint sha256 (raw bytes)
46      2     original image width  (u16)
48      2     original image height (u16)
50      1     n_ch
51      1     G, number of scale groups
52      3G    per group: ps, first channel, end channel (u8 each)
52+3G   4     payload length L (u32)
56+3G   L     coded latents
56+3G+L 4     CRC32 (zlib) of every byte before it

The encoded frame is the image padded (edge replication) to multiples of the largest
patch; group g's latents have shape (end - start, Hp / ps, Wp / ps).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from otterlite import latent_coder
from otterlite.errors import OtterliteError

MAGIC = b"OTLF"
VERSION = 1
CODECS = ("FRAPPE", "WaLLoC")
CODERS = {"rice": latent_coder.CODER_ID, "webp": latent_coder.WEBP_CODER_ID}
_HEAD = struct.Struct("<4sBB8s32sHHBB")


@dataclass
class LatentFrame:
    checkpoint_sha256: str
    width: int
    height: int
    groups: list[tuple[int, int, int]]  # (ps, start, end)
    latents: list[np.ndarray]  # per group (C, h, w) int8
    codec: str = "FRAPPE"  # or "WaLLoC" (one group: (8, 0, 12))
    coder: str = "rice"  # or "webp" (WaLLoC's published layout)

    @property
    def n_ch(self) -> int:
        return self.groups[-1][2]

    @property
    def padded_size(self) -> tuple[int, int]:
        big = max(ps for ps, _, _ in self.groups)
        return -(-self.height // big) * big, -(-self.width // big) * big

    def shapes(self) -> list[tuple[int, int, int]]:
        hp, wp = self.padded_size
        return [(end - start, hp // ps, wp // ps) for ps, start, end in self.groups]


def write_container(frame: LatentFrame) -> bytes:
    if not (0 < frame.width < 65536 and 0 < frame.height < 65536):
        raise OtterliteError(f"image size {frame.width}x{frame.height} does not fit the container (max 65535)")
    for z, shape in zip(frame.latents, frame.shapes()):
        if z.shape != shape or z.dtype != np.int8:
            raise OtterliteError(f"latents of shape {z.shape} {z.dtype}, expected {shape} int8")
    if frame.codec not in CODECS or frame.coder not in CODERS:
        raise OtterliteError(f"codec {frame.codec!r} / latent coder {frame.coder!r}: choose from "
                             f"{', '.join(CODECS)} / {', '.join(CODERS)}")
    hp, _ = frame.padded_size
    if frame.coder == "webp":
        if len(frame.latents) != 1:
            raise OtterliteError("the WebP latent layout holds one 12-channel group (WaLLoC); use the Rice coder")
        payload = latent_coder.encode_webp(frame.latents[0])
    else:
        payload = latent_coder.encode_latents(frame.latents, [g[0] for g in frame.groups], hp)
    head = _HEAD.pack(MAGIC, VERSION, CODERS[frame.coder], frame.codec.encode().ljust(8, b"\0"),
                      bytes.fromhex(frame.checkpoint_sha256), frame.width, frame.height,
                      frame.n_ch, len(frame.groups))
    groups = b"".join(struct.pack("<BBB", *g) for g in frame.groups)
    body = head + groups + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def read_header(data: bytes, source: str = "container") -> tuple[LatentFrame, bytes]:
    """Parse and check everything but the payload -> (frame without latents, payload)."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise OtterliteError(f"{source}: not an otterlite latent container (magic {data[:4]!r}, "
                             f"expected {MAGIC!r}); give a .otl file written by 'otterlite encode'")
    if len(data) < _HEAD.size + 8:
        raise OtterliteError(f"{source}: container truncated ({len(data)} bytes)")
    magic, version, coder, model, sha, width, height, n_ch, n_groups = _HEAD.unpack_from(data)
    if version != VERSION:
        raise OtterliteError(f"{source}: container format version {version}; this otterlite reads "
                             f"version {VERSION}: upgrade otterlite")
    coders = {v: k for k, v in CODERS.items()}
    if coder not in coders:
        raise OtterliteError(f"{source}: unknown latent coder id {coder}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise OtterliteError(f"{source}: CRC mismatch: the container is truncated or corrupted")
    codec = model.rstrip(b"\0").decode("ascii", "replace")
    if codec not in CODECS:
        raise OtterliteError(f"{source}: codec {codec!r}, expected one of {', '.join(CODECS)}")
    pos = _HEAD.size
    groups = [struct.unpack_from("<BBB", data, pos + 3 * i) for i in range(n_groups)]
    pos += 3 * n_groups
    (length,) = struct.unpack_from("<I", data, pos)
    payload = data[pos + 4: pos + 4 + length]
    if not groups or groups[-1][2] != n_ch or len(payload) != length or pos + 8 + length != len(data):
        raise OtterliteError(f"{source}: inconsistent container header: the file is corrupted")
    return LatentFrame(sha.hex(), width, height, [tuple(g) for g in groups], [], codec, coders[coder]), payload


def read_container(data: bytes, source: str = "container") -> LatentFrame:
    frame, payload = read_header(data, source)
    hp, _ = frame.padded_size
    if frame.coder == "webp":
        if len(frame.groups) != 1:
            raise OtterliteError(f"{source}: a WebP payload with {len(frame.groups)} groups: the file is corrupted")
        frame.latents = [latent_coder.decode_webp(payload, frame.shapes()[0])]
    else:
        frame.latents = latent_coder.decode_latents(payload, frame.shapes(), [g[0] for g in frame.groups], hp)
    return frame

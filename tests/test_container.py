"""The .otl container and the adaptive Rice latent coder."""
import struct
import zlib

import numpy as np
import pytest

from otterlite import latent_coder
from otterlite.container import LatentFrame, read_container, write_container
from otterlite.errors import OtterliteError

GROUPS = [(32, 0, 3), (16, 3, 9), (8, 9, 12)]


def frame_with(latents, width=70, height=40):
    return LatentFrame("ab" * 32, width, height, GROUPS, latents)


def shapes(width=70, height=40):
    return frame_with([], width, height).shapes()


@pytest.mark.parametrize("kind", ["zeros", "extremes", "uniform", "laplacian"])
def test_round_trip(kind, rng):
    lat = []
    for s in shapes():
        if kind == "zeros":
            z = np.zeros(s)
        elif kind == "extremes":
            z = rng.choice([-127, 127], s)
        elif kind == "uniform":
            z = rng.integers(-127, 128, s)
        else:
            z = np.clip(np.round(rng.laplace(0, 6, s)), -127, 127)
        lat.append(z.astype(np.int8))
    data = write_container(frame_with(lat))
    back = read_container(data)
    assert (back.width, back.height, back.groups, back.n_ch) == (70, 40, GROUPS, 12)
    assert back.padded_size == (64, 96)
    for a, b in zip(lat, back.latents):
        np.testing.assert_array_equal(a, b)


def test_every_value_codes_and_small_values_cost_less(rng):
    values = np.arange(-127, 128, dtype=np.int8)
    lat = [np.resize(values, s).astype(np.int8) for s in shapes(256, 256)]
    back = read_container(write_container(frame_with(lat, 256, 256)))
    for a, b in zip(lat, back.latents):
        np.testing.assert_array_equal(a, b)
    small = [np.clip(np.round(rng.laplace(0, 2, s)), -127, 127).astype(np.int8) for s in shapes()]
    large = [np.clip(np.round(rng.laplace(0, 40, s)), -127, 127).astype(np.int8) for s in shapes()]
    assert len(write_container(frame_with(small))) < len(write_container(frame_with(large)))


def test_readout_order_follows_sensor_rows():
    order = latent_coder.readout_order([32, 16, 8], 32)
    # latent rows complete at image rows 8, 16, 24, 32; at row 32 all groups, in group order
    assert order == [(2, 0), (1, 0), (2, 1), (2, 2), (0, 0), (1, 1), (2, 3)]


def test_known_bitstream():
    """Hand-derived bits for one channel: values 0, 1, -1, 127 with A=2, N=1 start."""
    lat = [np.array([[[0, 1, -1, 127]]], dtype=np.int8)]
    # v=0 u=0 k=1: '0'+'0'; A=2,N=2 k=0; v=1 u=2: '110'; A=4,N=3 k=1; v=-1 u=1 q=0: '0'+'1';
    # A=5,N=4 k=1; v=127 u=254 q=127>=16: 16 ones + '11111110'
    bits = "00" + "110" + "01" + "1" * 16 + "11111110"
    bits += "0" * (-len(bits) % 8)
    want = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    assert latent_coder.encode_latents(lat, [8], 8) == want


def test_corruption_is_detected(rng):
    lat = [rng.integers(-5, 6, s).astype(np.int8) for s in shapes()]
    data = write_container(frame_with(lat))
    with pytest.raises(OtterliteError, match="CRC mismatch"):
        read_container(data[:-10] + bytes(6) + data[-4:])
    with pytest.raises(OtterliteError, match="truncated"):
        read_container(data[:20])
    with pytest.raises(OtterliteError, match="not an otterlite latent container"):
        read_container(b"\x89PNG\r\n\x1a\n" + data[8:])
    newer = bytearray(data)
    newer[4] = 2
    body = bytes(newer[:-4])
    with pytest.raises(OtterliteError, match="version 2"):
        read_container(body + struct.pack("<I", zlib.crc32(body)))

"""The numpy runtime: streaming and whole-frame encoder and the consumer, bit-exact with the
PyTorch integer reference, importable without torch, and robust to bad rows."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from otterlite.cli import main
from otterlite.errors import OtterliteError
from otterlite.export import export
from otterlite.images import pad_to_multiple, sample_photo
from otterlite.models.checkpoint import load_seaotter
from otterlite.models.jpeg import write_codec_jpeg
from otterlite.runtime import (ConsumerDecoder, StreamingEncoder, apply_inverse, encode_frame, load_encoder_spec,
                               load_inverse_spec)
from otterlite.integer_spec import save_spec
from otterlite.integer_spec.torch_reference import run_spec


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt")
    export(["frappe-encoder", "seaotter-inverse"], ["onnx"], out, input_size="64x64", say=lambda line: None)
    return out, load_encoder_spec(out), load_inverse_spec(out)


def reference(spec, rgb):
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    return [o[0].numpy() for o in run_spec(spec, x)]


@pytest.mark.parametrize("size", [(32, 32), (100, 75), (333, 250)])
def test_streaming_and_frame_match_reference_on_odd_sizes(specs, photo, size):
    _, spec, _ = specs
    h, w = size
    rgb = np.ascontiguousarray(photo[:h, :w])
    want = reference(spec, pad_to_multiple(rgb, 32))
    streamed = StreamingEncoder(spec, w, h).encode(rgb)
    framed = encode_frame(spec, pad_to_multiple(rgb, 32))
    for a, b, c in zip(want, streamed, framed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("small_product", [None, 5000])
def test_blas_products_exact_at_the_accumulator_extremes(rng, monkeypatch, small_product):
    """12-bit weights at patch 32 (the patch's bound 255 * 3072 * 2047 is above 2^24: float32
    over parts of it), 8-bit at patch 8 (one float32 product) and at patch 16 one weight whose
    bound alone is above 2^24 (float64), on frames that drive every accumulator to its
    extremes, with thresholds at those extremes: frame and streaming equal the int64 reference.
    small_product 5000: the frame's products in blocks of rows (at 1080p the default splits them)."""
    from otterlite.integer_spec.types import ConvStage, ThresholdConvSpec
    from otterlite.runtime import encoder
    from otterlite.runtime.encoder import FrameEncoder, frame_accumulators

    if small_product:
        monkeypatch.setattr(encoder, "SMALL_PRODUCT", small_product)

    stages = []
    for k, peak, first in ((32, 2047, 0), (8, 127, 3), (16, 127, 6)):
        w = rng.integers(-peak, peak + 1, (3, 3, k, k)).astype(np.int64)
        w[0], w[1] = peak, -peak  # channel 0 all +peak, channel 1 all -peak
        if k == 16:
            w[2, 1, 3, 5] = 70000  # 255 * 70000 > 2^24
        lo, hi = 255 * np.minimum(w, 0).reshape(3, -1).sum(1), 255 * np.maximum(w, 0).reshape(3, -1).sum(1)
        t = np.sort(rng.integers(lo[:, None], hi[:, None] + 1, (3, 254)), axis=1)
        t[:, 0], t[:, -1] = lo, hi  # counted exactly at the extremes
        stages.append(ConvStage(w, t.astype(np.int64), k, 0, (first, first + 3)))
    spec = ThresholdConvSpec("frappe-encoder", stages, -127, "int8", "0" * 64)
    (chain, groups), = FrameEncoder(spec).chains
    assert chain == (32, 16, 8)
    assert [(w.dtype, len(parts) > 1) for _, _, w, parts in groups] == [(np.float32, True), (np.float32, False),
                                                                         (np.float64, False)]
    assert 255 * 3 * 32 * 32 * 2047 < 2 ** 31  # the int32 bound freeze guarantees holds here too
    streaming = StreamingEncoder(spec, 96, 64)
    assert streaming.band == 1 and streaming.band_buffer.dtype == np.float64  # two-row products pass 2^24
    frames = [np.full((64, 96, 3), 255, np.uint8), np.zeros((64, 96, 3), np.uint8),
              rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), np.full((64, 96, 3), 255, np.uint8)]
    frames[3][::7, ::5] = 254  # odd partial sums past 2^24: float32 would round them
    for rgb in frames:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        accumulators = [a[0].numpy() for a in run_spec(spec, x, intermediate=True)[1].values()]
        for a, b, c in zip(accumulators, frame_accumulators(spec, rgb), StreamingEncoder(spec, 96, 64).trace(rgb)):
            np.testing.assert_array_equal(a, b.transpose(2, 0, 1))
            np.testing.assert_array_equal(a, c)
        want = reference(spec, rgb)
        if rgb.min() == 255:  # channel 0 at its maximum (all thresholds), channel 1 exactly on its lowest
            assert (want[0][0] == 127).all() and (want[0][1] == -126).all()
        for got in (encode_frame(spec, rgb), StreamingEncoder(spec, 96, 64).encode(rgb)):
            for a, b in zip(want, got):
                np.testing.assert_array_equal(a, b)


def test_frame_encoder_on_patches_that_do_not_nest(rng):
    """Patches 24, 16 and 8: 16 does not divide 24, so the frame is copied in two nested orders
    (24 with 8, then 16 alone); both copies give the reference's latents and accumulators."""
    from otterlite.integer_spec.types import ConvStage, ThresholdConvSpec
    from otterlite.runtime.encoder import FrameEncoder, patch_chains

    assert patch_chains([24, 16, 8]) == [(24, 8), (16,)] and patch_chains([8, 32, 16, 8]) == [(32, 16, 8)]
    stages = []
    for g, k in enumerate((24, 16, 8)):
        w = rng.integers(-127, 128, (2, 3, k, k)).astype(np.int64)
        lo, hi = 255 * np.minimum(w, 0).reshape(2, -1).sum(1), 255 * np.maximum(w, 0).reshape(2, -1).sum(1)
        t = np.sort(rng.integers(lo[:, None] // 8, hi[:, None] // 8, (2, 254)), axis=1)
        stages.append(ConvStage(w, t.astype(np.int64), k, 0, (2 * g, 2 * g + 2)))
    spec = ThresholdConvSpec("frappe-encoder", stages, -127, "int8", "0" * 64)
    rgb = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    accumulators = [a[0].numpy() for a in run_spec(spec, x, intermediate=True)[1].values()]
    encoder = FrameEncoder(spec)
    for a, b in zip(accumulators, encoder.accumulators(rgb)):
        np.testing.assert_array_equal(a, b.transpose(2, 0, 1))
    for a, b in zip(reference(spec, rgb), encoder.encode(rgb)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("strides,band", [((32, 16, 8), 2), ((6, 3), 1)])
def test_streaming_band_buffer_at_the_right_and_bottom_edges(rng, strides, band):
    """The streaming encoder's band buffer (column chunks of gcd(patch sizes) pixels, two rows
    per product when that gcd is even): a frame whose width ends inside a chunk and whose
    height ends inside a band, against the reference on the edge-padded frame."""
    from otterlite.integer_spec.types import ConvStage, ThresholdConvSpec

    stages = []
    for g, k in enumerate(strides):
        w = rng.integers(-127, 128, (2, 3, k, k)).astype(np.int64)
        lo, hi = 255 * np.minimum(w, 0).reshape(2, -1).sum(1), 255 * np.maximum(w, 0).reshape(2, -1).sum(1)
        t = np.sort(rng.integers(lo[:, None] // 8, hi[:, None] // 8, (2, 254)), axis=1)
        stages.append(ConvStage(w, t.astype(np.int64), k, 0, (2 * g, 2 * g + 2)))
    spec = ThresholdConvSpec("frappe-encoder", stages, -127, "int8", "0" * 64)
    rgb = rng.integers(0, 256, (strides[0] + 1, 3 * strides[0] - 5, 3), dtype=np.uint8)
    encoder = StreamingEncoder(spec, rgb.shape[1], rgb.shape[0])
    assert encoder.band == band and encoder.band_buffer.dtype == np.float32
    for a, b in zip(reference(spec, pad_to_multiple(rgb, max(strides) * 2)[: 2 * strides[0], : 3 * strides[0]]),
                    encoder.encode(rgb)):
        np.testing.assert_array_equal(a, b)


def test_streaming_emits_rows_as_soon_as_complete(specs, photo):
    _, spec, _ = specs
    enc = StreamingEncoder(spec, 64, 64)
    emitted = {r: [(g, i) for g, i, _ in enc.push(photo[r, :64].copy())] for r in range(64)}
    assert emitted[7] == [(2, 0)] and emitted[15] == [(1, 0), (2, 1)] and emitted[31] == [(0, 0), (1, 1), (2, 3)]
    assert emitted[0] == [] and enc.finish() == []
    # state kept between rows: one int32 accumulator row per group + the band buffer of two
    # float32 rows (int8 weights: a two-row product's partial sums stay below 2^24)
    assert enc.band == 2 and enc.band_buffer.dtype == np.float32
    assert enc.state_bytes == (2 * 3 + 4 * 6 + 8 * 3) * 4 + 2 * 64 * 3 * 4
    assert enc.peak_bytes == enc.state_bytes + 8 * 4 * 4  # + the largest group's product (channels padded to 4)


def test_streaming_bad_rows_keep_state_consistent(specs, photo):
    _, spec, _ = specs
    rgb = np.ascontiguousarray(photo[:64, :64])
    enc = StreamingEncoder(spec, 64, 64)
    enc.push(rgb[0])
    for bad in (rgb[1, :60], rgb[1].astype(np.int16), rgb[1, :, :2]):
        with pytest.raises(OtterliteError, match="expected uint8 \\(64, 3\\)"):
            enc.push(bad)
    rows = [enc.push(rgb[r]) for r in range(1, 64)]  # the frame continues as if nothing happened
    got = [np.empty_like(z) for z in reference(spec, rgb)]
    for gi, i, z in sum(rows, []) + enc.finish():
        got[gi][:, i] = z
    for a, b in zip(reference(spec, rgb), got):
        np.testing.assert_array_equal(a, b)
    for r in range(10):
        enc.push(rgb[r])
    with pytest.raises(OtterliteError, match="after 10 of 64 rows"):
        enc.finish()
    for r in range(64):
        enc.push(rgb[r])
    with pytest.raises(OtterliteError, match="only 64 rows"):
        enc.push(rgb[0])
    assert enc.encode(rgb)[0].shape == (3, 2, 2)  # reset: a new frame starts cleanly


def test_wrong_artifacts_are_refused(specs, tmp_path):
    out, _, inverse = specs
    with pytest.raises(OtterliteError, match="not a FRAPPE encoder"):
        load_encoder_spec(save_spec(inverse))
    with pytest.raises(OtterliteError, match="not the SEA OTTER inverse"):
        load_inverse_spec(out / "frappe-encoder.spec")
    newer = bytearray((out / "frappe-encoder.spec").read_bytes())
    newer[4] = 99
    with pytest.raises(OtterliteError, match="spec version 99"):
        load_encoder_spec(bytes(newer))
    with pytest.raises(OtterliteError, match="no such file"):
        load_encoder_spec(tmp_path)


def test_consumer_matches_reference(specs, photo, monkeypatch):
    from otterlite.runtime import consumer as module

    monkeypatch.setattr(module, "BAND_PIXELS", 40 * 128)  # 96 rows: bands of 40, 40 and 16
    monkeypatch.setattr(module, "LOOKUP_PIXELS", 5000)  # the table lookup in 3 pieces, the last short
    _, _, spec = specs
    bundle, ckpt = load_seaotter()
    codec = np.ascontiguousarray(photo[:96, :128])
    jpeg = write_codec_jpeg(codec, bundle.qtable(1), ckpt.sha256, 1)
    from otterlite.models.jpeg import read_codec_jpeg

    raw, _ = read_codec_jpeg(jpeg)
    want = reference(spec, raw)[0].transpose(1, 2, 0)
    consumer = ConsumerDecoder(spec)
    np.testing.assert_array_equal(consumer.decode(jpeg), want)
    np.testing.assert_array_equal(apply_inverse(spec, raw), want)  # the formula path (no table)
    other = write_codec_jpeg(codec, bundle.qtable(1), "f" * 64, 1)
    with pytest.raises(OtterliteError, match="written with SEA OTTER checkpoint ffffffffffff"):
        consumer.decode(other)


def test_encode_runtimes_write_identical_bytes(specs, tmp_path):
    out, _, _ = specs
    image = sample_photo("coffee.png")
    written = {}
    for runtime in ("numpy", "onnx", "tflite", "torch", "c"):
        assert main(["encode", str(image), "-o", str(tmp_path / f"{runtime}.otl"), "--runtime", runtime]) == 0
        written[runtime] = (tmp_path / f"{runtime}.otl").read_bytes()
    assert main(["encode", str(image), "-o", str(tmp_path / "m.otl"), "--models", str(out)]) == 0
    written["models"] = (tmp_path / "m.otl").read_bytes()
    assert len(set(written.values())) == 1


def test_runtime_runs_without_torch_or_onnx(specs, photo, tmp_path):
    """In a fresh interpreter where torch, onnx, onnxruntime and the TFLite packages cannot be
    imported, the runtime loads the exported spec and encodes; the parent checks the result."""
    out, spec, _ = specs
    np.save(tmp_path / "rgb.npy", np.ascontiguousarray(photo[:64, :64]))
    script = f"""
import sys
BLOCKED = ("torch", "onnx", "onnxruntime", "ai_edge_litert", "tflite", "tflite_micro", "tflite_runtime", "skimage")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked {{name}}")
sys.meta_path.insert(0, Block())
import numpy as np
from otterlite.runtime import StreamingEncoder, load_encoder_spec, load_inverse_spec, ConsumerDecoder
spec = load_encoder_spec({str(out)!r})
ConsumerDecoder(load_inverse_spec({str(out)!r}))
z = StreamingEncoder(spec, 64, 64).encode(np.load({str(tmp_path / 'rgb.npy')!r}))
np.savez({str(tmp_path / 'z.npz')!r}, *z)
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    got = np.load(tmp_path / "z.npz")
    for i, want in enumerate(reference(spec, photo[:64, :64])):
        np.testing.assert_array_equal(got[f"arr_{i}"], want)


def test_bench_figures_on_a_small_frame():
    """bench's JSON contract on a quick run: every available backend timed against the torch
    float reference of the same rounds, exact, and the consumer against Pillow."""
    from otterlite import bench

    lines = []
    result = bench.bench(repeats=1, say=lines.append, sizes=((64, 96),))
    encoders = result["encoder"]
    assert encoders["torch-float"]["vs_torch_float"] == 1.0
    assert {"numpy", "numpy-streaming"} <= set(encoders)
    for name, fig in encoders.items():
        assert fig["mpx_s"] > 0
        assert fig["sizes"]["96x64"]["exact"] is not False, name
    assert result["fastest_exact_encoder"] in encoders
    from otterlite.backends import BACKENDS

    compiled = set() if BACKENDS["c-lib"].missing() else {"c-lib"}
    consumers = result["consumer"]
    assert set(consumers) == {"pillow-jpeg-decode", "numpy", "numpy-formula"} | compiled | (
        {"libjpeg-rgb-decode"} if compiled else set())
    assert all(fig["sizes"]["96x64"]["exact"] is (None if name in bench.CONSUMER_REFERENCES else True)
               for name, fig in consumers.items()), consumers
    transforms = result["inverse_transform"]
    assert {"numpy", "numpy-formula"} | compiled <= set(transforms)
    assert all(fig["sizes"]["96x64"]["exact"] for fig in transforms.values()), transforms
    assert result["consumer_table_build_s"] > 0
    assert result["streaming_peak_bytes"] > result["streaming_state_bytes"] > 0
    assert any("timing torch-float" in line for line in lines)
    assert encoders["memory-read"]["vs_memory_read"] == 1.0
    assert all(0 < fig["vs_memory_read"] for fig in encoders.values())
    assert 0.5 < result["peer_equal_share"]["96x64"] <= 1 and "ort-qdq-int8-peer" in encoders
    assert 0.9 < result["fidelity_at"]["96x64"]["exact_equal_share"] <= 1
    walloc = result["walloc"]["encoder"]
    assert {"torch-float", "numpy", "numpy-streaming"} <= set(walloc) and walloc["torch-float"]["vs_torch_float"] == 1.0
    assert result["walloc"]["streaming_state_bytes"] > 0
    assert all(fig["mpx_s"] > 0 and fig["sizes"]["96x64"]["exact"] is not False for fig in walloc.values())
    assert any(line.startswith("WaLLoC at 96x64") for line in bench.summary(result))


def test_codec_words_decode_into_the_array_or_through_a_copy(photo, monkeypatch):
    """read_codec_words: libjpeg's raw components decoded straight into the uint32 array
    (Pillow's map_buffer), and the same words through tobytes where that is unavailable;
    the numpy consumer on them against the formula."""
    import io

    from PIL import Image

    from otterlite.integer_spec.freeze import freeze_seaotter_inverse
    from otterlite.models import jpeg as codec_jpeg

    codes = np.ascontiguousarray(photo[:70, :90, ::-1])
    data = write_codec_jpeg(codes, [[5] * 64] * 3, "ab" * 32, 1)
    image = Image.open(io.BytesIO(data))
    image.draft("YCbCr", image.size)
    want = np.frombuffer(image.tobytes("raw", "YCbCrX"), np.uint32).reshape(70, 90)
    words, meta = codec_jpeg.read_codec_words(data)
    np.testing.assert_array_equal(words, want)
    assert meta["k"] == 1 and np.all(words >> 24 == 255)

    def absent(*args):
        raise AttributeError("no map_buffer in this Pillow")
    monkeypatch.setattr(Image.core, "map_buffer", absent)
    np.testing.assert_array_equal(codec_jpeg.read_codec_words(data)[0], want)
    bundle, ckpt = load_seaotter()
    inverse = freeze_seaotter_inverse(bundle, ckpt.sha256)
    raw = want.view(np.uint8).reshape(70, 90, 4)[..., :3]
    np.testing.assert_array_equal(ConsumerDecoder(inverse).decode(data, force=True), apply_inverse(inverse, raw))

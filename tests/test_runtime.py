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


def test_streaming_emits_rows_as_soon_as_complete(specs, photo):
    _, spec, _ = specs
    enc = StreamingEncoder(spec, 64, 64)
    emitted = {r: [(g, i) for g, i, _ in enc.push(photo[r, :64].copy())] for r in range(64)}
    assert emitted[7] == [(2, 0)] and emitted[15] == [(1, 0), (2, 1)] and emitted[31] == [(0, 0), (1, 1), (2, 3)]
    assert emitted[0] == [] and enc.finish() == []
    # state kept between rows: one int32 accumulator row per group + the last row
    assert enc.state_bytes == (2 * 3 + 4 * 6 + 8 * 3) * 4 + 64 * 3


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
    assert set(result["consumer"]) == {"pillow-jpeg-decode", "numpy", "numpy-formula"}
    assert result["consumer_table_build_s"] > 0
    assert result["streaming_peak_bytes"] > result["streaming_state_bytes"] > 0
    assert any("timing torch-float" in line for line in lines)

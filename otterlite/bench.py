"""`otterlite bench`: single-thread throughput of the encoder on every available backend and
of the consumer decode, on a real photo resized to each size. Figures, not assertions.

Every figure is the best of `repeats` timed runs after one warm-up run. The runs are taken
round-robin (one run of every backend per round), so that a slow spell of a shared machine
hits every backend alike and the ratios to the torch float reference hold within a run.
Each backend gets the photo in its own input layout, prepared outside the timing: NCHW, or
NHWC for runners with `run.nhwc` (the C library, TFLite). MPx/s counts input pixels. Every
integer backend's output is also checked against the first one's, so "fastest exact" means
exact on this very input. One thread everywhere: torch, onnxruntime, LiteRT, and the BLAS
under numpy (threadpoolctl).

WaLLoC (embedded default): its exact encoder (the composed 57x57 stride-8 spec export writes
by default) on numpy, onnxruntime and LiteRT against the torch float WaLLoC encoder (the
wavelet packet cascade + 1x1 conv) in the same rounds, each checked against numpy's latents.

The consumer: Pillow's plain RGB decode of the SEA OTTER JPEG as the reference, against
JPEG + inverse by numpy (the 2^24-entry table; the formula) and by the generated C inverse
linked with the system libjpeg (c-lib: Pillow reads the header, libjpeg the raw components,
each band of rows through the inverse), with libjpeg's own plain RGB decode through the same
library as a second reference (Pillow's libjpeg-turbo build can be slower than the system's);
and the inverse transform alone (codes -> RGB, from memory) on numpy, c-lib, onnxruntime and
LiteRT, each checked against numpy's output.

Two references beside torch float, built and timed in the same run:
- memory-read: one vectorized pass that only reads the frame (numpy's max over it as
  uint64), the limit of any encoder that reads every pixel once; each encoder's figure is
  also given as a fraction of it;
- the standard int8 peer: what a user would otherwise deploy, the same float encoder
  exported by torch.onnx and quantized by onnxruntime.quantization.quantize_static (QDQ,
  per-channel int8 weights, uint8 activations, calibrated on the sample photos), on
  onnxruntime; with its fidelity (share of latents equal to the float model's), since it
  promises no exactness.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

SIZES = ((512, 512), (1088, 1920))
CONSUMER_REFERENCES = ("pillow-jpeg-decode", "libjpeg-rgb-decode")  # plain RGB decodes, not the consumer
ENCODERS = ("torch-int", "ort-O3-t1", "litert", "numpy", "numpy-streaming", "c", "c-lib")
WALLOC_ENCODERS = ("numpy", "numpy-streaming", "ort-O3-t1", "litert", "c-lib")  # exact backends of the wrap-around spec


def steady_allocator() -> None:
    """Keep freed blocks of up to 32 MB in the process (glibc mallopt). By default glibc may
    hand torch's large temporaries back to the OS and page-fault them in again on every
    call, which made the torch float reference 2-3x slower in some processes than in others
    (37-133 MPx/s here); with this it runs at its best every time."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's maximum on 64-bit)
    libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    """Seconds of the fastest of `repeats` runs of each callable (after one warm-up run each),
    taken round-robin."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def photo(height: int, width: int) -> np.ndarray:
    from PIL import Image

    from otterlite.images import load_rgb, sample_photo

    return np.asarray(Image.fromarray(load_rgb(sample_photo("astronaut.png"))).resize((width, height), Image.BICUBIC))


class FloatEncoderGraph:
    """The float FRAPPE encoder as torch.onnx exports it: float32 NCHW image in 0..255 ->
    the companded values per group (rounding and clamping stay outside, as in a QDQ model)."""

    def __new__(cls, encoder):
        import torch

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder

            def forward(self, x):
                x = x / 127.5 - 1
                return tuple(e(x) for e in self.encoder.encoders)
        return Graph().eval()


def qdq_peer(model, height: int, width: int, calibration: list[np.ndarray], folder: Path):
    """run(x NCHW uint8) -> per group int8 latents of the standard int8 model (files in `folder`)."""
    import warnings

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from otterlite.verify import fit

    float_path, int8_path = folder / f"float-{width}x{height}.onnx", folder / f"qdq-{width}x{height}.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is the one without onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(FloatEncoderGraph(model.encoder), (torch.zeros(1, 3, height, width),), str(float_path),
                          dynamo=False, opset_version=17, input_names=["image"])

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.left = [{"image": fit(p, height, width).astype(np.float32)} for p in calibration]

        def get_next(self):
            return self.left.pop() if self.left else None
    quantize_static(str(float_path), str(int8_path), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

    def run(x):
        return [np.clip(np.round(y), -127, 127).astype(np.int8)
                for y in session.run(None, {"image": x.astype(np.float32)})]
    return run


def timed_run(backend, spec, rgb: np.ndarray, stem: Path):
    """The callable bench times: `backend` on the (H, W, 3) photo in its own input layout
    (NHWC for runners with run.nhwc, else NCHW), prepared here, outside the timing; the
    artifact (built from `spec` for this size) is written to stem.<artifact>."""
    from otterlite.export import build

    path = stem.with_name(f"{stem.name}.{backend.artifact}")
    if backend.artifact != "spec":
        path.write_bytes(build(spec, backend.artifact, *rgb.shape[:2]))
    run = backend.load(path, spec)
    if hasattr(run, "nhwc"):
        x_nhwc = np.ascontiguousarray(rgb)[None]
        return lambda: run.nhwc(x_nhwc)
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]
    return lambda: run(x)


def read_pass(frame: np.ndarray):
    """One vectorized pass that only reads the frame (as uint64 words)."""
    words = np.ascontiguousarray(frame).reshape(-1)
    words = words[: words.size // 8 * 8].view(np.uint64)
    return lambda: words.max()


def bench(repeats: int = 5, say=print, sizes=SIZES) -> dict:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        result = bench_one_thread(repeats, say, sizes)
        result["walloc"] = bench_walloc(repeats, say, sizes)
        return result


def bench_walloc(repeats: int, say, sizes) -> dict:
    """{backend: {"sizes": {WxH: figures}} + the figures at the last size} for WaLLoC."""
    import tempfile

    import torch

    from otterlite.backends import BACKENDS
    from otterlite.export import freeze, photo_loader
    from otterlite.integer_spec.fidelity import Target
    from otterlite.models.checkpoint import load_walloc
    from otterlite.runtime import streaming_encoder

    model, _ = load_walloc(with_decoder=False)
    spec, _, _ = freeze("walloc-encoder", None, None, None, "auto", None, photo_loader(None), Target(),
                        say=lambda line: None)
    available = [b for b in WALLOC_ENCODERS if not BACKENDS[b].missing()]
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for height, width in sizes:
            size = f"{width}x{height}"
            rgb = photo(height, width)
            x = np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]
            encoder = model.sensor_encoder()
            runs, exact, reference = {"torch-float": lambda: encoder(torch.from_numpy(x))}, {"torch-float": None}, None
            for name in available:
                runs[name] = timed_run(BACKENDS[name], spec, rgb, Path(tmp) / f"walloc-{size}")
                outputs = runs[name]()
                reference = reference or outputs
                exact[name] = all(np.array_equal(a, b) for a, b in zip(reference, outputs))
            say(f"walloc {size}: timing torch-float and {len(available)} exact backends, {repeats} rounds")
            with torch.no_grad():
                seconds = best_times(runs, repeats)
            for name, t in seconds.items():
                fig = {"mpx_s": height * width / 1e6 / t, "vs_torch_float": seconds["torch-float"] / t,
                       "exact": exact[name]}
                table.setdefault(name, {"sizes": {}})["sizes"][size] = fig
                say(f"    walloc encoder {name} {size}: {fig['mpx_s']:.1f} MPx/s, {fig['vs_torch_float']:.2f}x torch float")
    goal = f"{sizes[-1][1]}x{sizes[-1][0]}"
    for fig in table.values():
        fig.update({k: v for k, v in fig["sizes"][goal].items() if k != "exact"})
    streaming = streaming_encoder(spec, sizes[-1][1], sizes[-1][0])
    streaming.encode(photo(*sizes[-1]))
    return {"encoder": table, "weight_bits": spec.info["weight_bits"], "figures_at": goal,
            "streaming_state_bytes": streaming.state_bytes}


def bench_one_thread(repeats: int, say, sizes) -> dict:
    import tempfile

    import torch
    from PIL import Image

    from otterlite.backends import BACKENDS
    from otterlite.export import freeze, photo_loader
    from otterlite.images import calibration_photos
    from otterlite.models.checkpoint import load_frappe, load_seaotter
    from otterlite.firmware_sim.consumer import LibraryInverse
    from otterlite.models.jpeg import open_codec_jpeg, read_codec_jpeg, write_codec_jpeg
    from otterlite.runtime import ConsumerDecoder, StreamingEncoder
    from otterlite.integer_spec.fidelity import Target
    from otterlite.integer_spec.freeze import freeze_seaotter_inverse

    torch.set_num_threads(1)
    steady_allocator()
    model, ckpt = load_frappe()
    spec, _, _ = freeze("frappe-encoder", None, None, None, "auto", None, photo_loader(None), Target(),
                        say=lambda line: None)  # the encoder 'otterlite export' writes by default
    bundle, so_ckpt = load_seaotter()
    inverse = freeze_seaotter_inverse(bundle, so_ckpt.sha256)
    started = time.perf_counter()
    consumer = ConsumerDecoder(inverse)
    table_build_s = time.perf_counter() - started
    formula = ConsumerDecoder(inverse, table=False)  # what 'otterlite decode' runs on one JPEG
    available = [b for b in ENCODERS if not BACKENDS[b].missing()]
    peer = not BACKENDS["ort-O3-t1"].missing()  # the QDQ peer runs on onnxruntime
    photos = calibration_photos(None)
    result = {"encoder": {}, "consumer": {}, "inverse_transform": {}, "threads": 1, "repeats": repeats, "n_ch": spec.info["n_ch"],
              "weight_bits": spec.info["weight_bits"], "consumer_table_build_s": table_build_s}
    steps, step = len(sizes) * (len(available) + 2 + peer), 0
    with tempfile.TemporaryDirectory() as tmp:
        library = None if BACKENDS["c-lib"].missing() else LibraryInverse(inverse, Path(tmp) / "inverse-c", jpeg=True)
        for height, width in sizes:
            size = f"{width}x{height}"
            rgb = photo(height, width)
            x = np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]
            mpx = height * width / 1e6
            runs = {"torch-float": lambda: model.encode(torch.from_numpy(x)), "memory-read": read_pass(x)}
            exact, reference = {"torch-float": None, "memory-read": None}, None
            with torch.no_grad():
                float_latents = [z.numpy() for z in model.encode(torch.from_numpy(x))]
            if peer:
                run_peer = qdq_peer(model, height, width, photos, Path(tmp))
                runs["ort-qdq-int8-peer"] = lambda: run_peer(x)
                equal = [int((a == b).sum()) for a, b in zip(run_peer(x), float_latents)]
                exact["ort-qdq-int8-peer"] = None
                result.setdefault("peer_equal_share", {})[size] = sum(equal) / sum(z.size for z in float_latents)
                step += 1
                say(f"[{step}/{steps}] {size}: built the standard int8 QDQ peer, "
                    f"{100 * result['peer_equal_share'][size]:.1f}% of latents equal to the float model")
            for name in available:
                runs[name] = timed_run(BACKENDS[name], spec, rgb, Path(tmp) / size)
                outputs = runs[name]()
                reference = reference or outputs
                exact[name] = all(np.array_equal(a, b) for a, b in zip(reference, outputs))
                step += 1
                say(f"[{step}/{steps}] {size}: loaded {name}, {'exact' if exact[name] else 'NOT EXACT'}")
            if reference:
                equal = sum(int((a == b).sum()) for a, b in zip(reference, float_latents))
                result.setdefault("fidelity_at", {})[size] = {"exact_equal_share": equal / sum(z.size for z in float_latents)}
            step += 1
            say(f"[{step}/{steps}] {size}: timing torch-float and {len(available)} backends, {repeats} rounds")
            with torch.no_grad():
                seconds = best_times(runs, repeats)
            for name, t in seconds.items():
                fig = {"mpx_s": mpx / t, "vs_torch_float": seconds["torch-float"] / t,
                       "vs_memory_read": seconds["memory-read"] / t, "exact": exact[name]}
                result["encoder"].setdefault(name, {"sizes": {}})["sizes"][size] = fig
                say(f"    encoder {name} {size}: {fig['mpx_s']:.1f} MPx/s, {fig['vs_torch_float']:.2f}x torch float")
            with torch.no_grad():
                codec = bundle.fwd.to_codec_uint8(torch.from_numpy(x))[0].numpy().transpose(1, 2, 0)
            jpeg = write_codec_jpeg(np.ascontiguousarray(codec), bundle.qtable(1), so_ckpt.sha256, 1)
            codes = read_codec_jpeg(jpeg)[0]
            transforms = {"numpy": lambda: consumer.transform(codes), "numpy-formula": lambda: formula.transform(codes)}
            decodes = {"pillow-jpeg-decode": lambda: np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")),
                       "numpy": lambda: consumer.decode(jpeg), "numpy-formula": lambda: formula.decode(jpeg)}
            if library is not None:  # libjpeg's raw components through the compiled inverse, band by band
                transforms["c-lib"] = lambda: library.transform(codes)
                decodes["c-lib"] = lambda: library.decode(jpeg, *open_codec_jpeg(jpeg, load=False)[0].size)
                decodes["libjpeg-rgb-decode"] = lambda: library.decode(jpeg, width, height, inverse=False)
            for name in ("ort-O3-t1", "litert"):
                if not BACKENDS[name].missing():
                    transforms[name] = timed_run(BACKENDS[name], inverse, codes, Path(tmp) / f"inverse-{size}")
            hwc = lambda out: out[0][0].transpose(1, 2, 0) if isinstance(out, list) else out  # noqa: E731  (graphs: [NCHW])
            want = transforms["numpy"]()
            exact = {name: np.array_equal(hwc(run()), want) for name, run in transforms.items()}
            decoded = consumer.decode(jpeg)
            exact_decode = {name: np.array_equal(run(), decoded) for name, run in decodes.items()
                            if name not in CONSUMER_REFERENCES}
            seconds = best_times(decodes, repeats)
            transform_seconds = best_times(transforms, repeats)
            step += 1
            say(f"[{step}/{steps}] consumer {size}: Pillow JPEG decode {mpx / seconds['pillow-jpeg-decode']:.1f} MPx/s, "
                f"numpy JPEG + inverse {mpx / seconds['numpy']:.1f} MPx/s with the table, "
                f"{mpx / seconds['numpy-formula']:.1f} by the formula")
            for name, t in seconds.items():
                result["consumer"].setdefault(name, {"sizes": {}})["sizes"][size] = {
                    "mpx_s": mpx / t, "vs_jpeg_decode": seconds["pillow-jpeg-decode"] / t,
                    "exact": exact_decode.get(name)}
            for name, t in transform_seconds.items():
                result["inverse_transform"].setdefault(name, {"sizes": {}})["sizes"][size] = {
                    "mpx_s": mpx / t, "vs_jpeg_decode": seconds["pillow-jpeg-decode"] / t, "exact": exact[name]}
    goal = f"{sizes[-1][1]}x{sizes[-1][0]}"
    for table in (result["encoder"], result["consumer"], result["inverse_transform"]):
        for fig in table.values():
            fig.update({k: v for k, v in fig["sizes"][goal].items() if k != "exact"})
    streaming = StreamingEncoder(spec, sizes[-1][1], sizes[-1][0])
    result["streaming_peak_bytes"] = streaming.peak_bytes
    result["streaming_state_bytes"] = streaming.state_bytes
    result["figures_at"] = goal
    exact = {n: f for n, f in result["encoder"].items() if f["sizes"][goal]["exact"]}
    if "ort-qdq-int8-peer" in result["encoder"]:
        result["exact_onnx_vs_peer"] = (result["encoder"]["ort-O3-t1"]["mpx_s"] / result["encoder"]["ort-qdq-int8-peer"]["mpx_s"]
                                        if "ort-O3-t1" in result["encoder"] else None)
    result["fastest_exact_encoder"] = max(exact, key=lambda n: exact[n]["mpx_s"]) if exact else None
    return result


def summary(result: dict) -> list[str]:
    at = result["figures_at"]
    fastest = result["fastest_exact_encoder"]
    lines = [f"at {at}, 1 thread, {result['n_ch']} channels, weight bits {result.get('weight_bits')}:"]
    for name, fig in result["encoder"].items():
        lines.append(f"  encoder {name:<17} {fig['mpx_s']:7.1f} MPx/s  {fig['vs_torch_float']:5.2f}x torch float  "
                     f"{fig['vs_memory_read']:5.3f} of the memory-read pass")
    if result.get("peer_equal_share"):
        ours = result["fidelity_at"][at]["exact_equal_share"]
        lines.append(f"  standard int8 QDQ peer: {100 * result['peer_equal_share'][at]:.1f}% of latents equal to the "
                     f"float model (the exact spec: {100 * ours:.1f}%), no cross-runtime promise; exact ONNX on "
                     f"onnxruntime at {result['exact_onnx_vs_peer']:.2f}x its speed")
    lines.append(f"  fastest exact encoder: {fastest} ({result['encoder'][fastest]['vs_torch_float']:.2f}x torch float)"
                 if fastest else "  no exact encoder backend available")
    lines.append(f"  streaming working memory: peak {result['streaming_peak_bytes']} B "
                 f"(kept between rows {result['streaming_state_bytes']} B)")
    for name, fig in result["consumer"].items():
        lines.append(f"  consumer {name:<20} {fig['mpx_s']:7.1f} MPx/s  {fig['vs_jpeg_decode']:5.2f}x Pillow JPEG decode"
                     + ("  NOT EXACT" if fig["sizes"][at]["exact"] is False else ""))
    lines.append(f"  consumer numpy: its 2^24-entry table took {result['consumer_table_build_s']:.2f} s to build; "
                 f"'otterlite decode' (one JPEG) runs numpy-formula; c-lib ('--runtime c'): libjpeg's raw components "
                 f"through the C inverse, band by band")
    for name, fig in result.get("inverse_transform", {}).items():
        lines.append(f"  inverse transform alone {name:<12} {fig['mpx_s']:7.1f} MPx/s  {fig['vs_jpeg_decode']:5.2f}x "
                     f"Pillow JPEG decode" + ("" if fig["sizes"][at]["exact"] else "  NOT EXACT"))
    walloc = result.get("walloc")
    if walloc:
        lines.append(f"WaLLoC at {walloc['figures_at']}, 1 thread, weight bits {walloc['weight_bits']} "
                     f"(57x57 stride-8 wrap-around spec; streaming working memory {walloc['streaming_state_bytes']} B):")
        for name, fig in walloc["encoder"].items():
            lines.append(f"  encoder {name:<17} {fig['mpx_s']:7.1f} MPx/s  {fig['vs_torch_float']:5.2f}x torch float")
    return lines


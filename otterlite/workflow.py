"""The three codec stages as library functions (the CLI is a thin layer over these).

sensor:   image -> FRAPPE or WaLLoC encoder -> int8 latents -> .otl container (records the codec)
cloud:    .otl -> that codec's decoder -> RGB -> SEA OTTER forward -> JPEG (learned qtables)
consumer: JPEG -> libjpeg raw components -> SEA OTTER inverse -> RGB
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from otterlite.container import LatentFrame, read_container, read_header, write_container
from otterlite.errors import OtterliteError
from otterlite.files import read_bytes, write_atomic
from otterlite.images import encode_png, load_rgb, pad_to_multiple
from otterlite.models.jpeg import check_marker, open_codec_jpeg, read_codec_jpeg, write_codec_jpeg


def nchw(rgb: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def hwc(tensor) -> np.ndarray:
    return tensor[0].numpy().transpose(1, 2, 0)


def check_patch_size(rgb: np.ndarray, big: int) -> None:
    h, w = rgb.shape[:2]
    if h < big or w < big:
        raise OtterliteError(f"image {w}x{h} is smaller than one {big}x{big} patch; use an image of "
                             f"at least {big}x{big} or fewer channels (--n-ch)")


CODECS = {"frappe": "frappe-encoder", "walloc": "walloc-encoder"}  # --codec -> the encoder's kind
CODEC_IDS = {"frappe-encoder": "FRAPPE", "walloc-encoder": "WaLLoC"}  # kind -> the container's codec
KIND_OF_CODEC_ID = {v: k for k, v in CODEC_IDS.items()}


def check_codec(codec: str) -> str:
    """--codec -> the encoder's spec kind."""
    if codec not in CODECS:
        raise OtterliteError(f"--codec {codec!r}: choose from {', '.join(CODECS)}")
    return CODECS[codec]


def encode_rgb(model, checkpoint_sha: str, rgb: np.ndarray, kind: str = "frappe-encoder") -> LatentFrame:
    """Pad to the largest patch (edge replication), run the float encoder, wrap as a frame."""
    groups = model.latent_groups()
    big = max(g[0] for g in groups)
    check_patch_size(rgb, big)
    h, w = rgb.shape[:2]
    latents = model.encode(nchw(pad_to_multiple(rgb, big)))
    return LatentFrame(checkpoint_sha, w, h, groups, [z[0].numpy() for z in latents], CODEC_IDS[kind])


def decode_frame(model, frame: LatentFrame) -> np.ndarray:
    """FRAPPE or WaLLoC decode to uint8 RGB, cropped to the original size. The float decoder runs on one
    thread without oneDNN, so its output does not depend on the machine's thread count (with
    oneDNN, 6 to 18 of a 512x512 frame's 786K values differ between 1 and 2 threads; without
    it, 2 values between 1 and 7 threads): a transcode gives the same JPEG bytes on 1 core or
    64, alone or in a Ray worker."""
    import torch

    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        rgb = hwc(model.decode([torch.from_numpy(z)[None] for z in frame.latents]))
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
    return rgb[: frame.height, : frame.width]


def check_frappe_matches(frame: LatentFrame, ckpt, model, source: str) -> None:
    """The container was encoded by this checkpoint (FRAPPE: and this channel count)."""
    if frame.checkpoint_sha256 != ckpt.sha256:
        raise OtterliteError(f"{source} was encoded with {frame.codec} checkpoint {frame.checkpoint_sha256[:12]}, "
                             f"but {ckpt.source} is {ckpt.sha256[:12]}; pass the same --checkpoint "
                             f"that encoded it")
    if frame.n_ch != model.n_ch:
        raise OtterliteError(f"{source} holds {frame.n_ch} channels but the model snapshot has "
                             f"{model.n_ch}")


@dataclass
class Stage:
    path: Path
    size: int
    pixels: int
    other_sizes: dict | None = None  # {latent coder: bytes} of the layouts not written (WaLLoC)

    @property
    def bpp(self) -> float:
        return 8 * self.size / self.pixels


RUNTIMES = ("numpy", "onnx", "tflite", "torch", "c")  # the integer runtimes: identical outputs
RUNTIME_BACKENDS = {"onnx": "ort-O3-t1", "tflite": "litert", "torch": "torch-int", "c": "c-lib"}


def check_runtime(runtime: str, float_ok: bool = True) -> None:
    choices = (*RUNTIMES, "float") if float_ok else RUNTIMES
    if runtime not in choices:
        raise OtterliteError(f"--runtime {runtime!r}: choose from {', '.join(choices)}")


def runtime_backend_name(runtime: str, kind: str) -> str:
    """The registry backend behind --runtime (numpy: the streaming sensor encoder, or the numpy
    transforms)."""
    return RUNTIME_BACKENDS.get(runtime, "numpy-streaming" if kind == "frappe-encoder" else "numpy")


def runtimes_for(kind: str) -> list[str]:
    """The integer runtimes whose backend runs `kind`."""
    from otterlite.backends import BACKENDS

    return [r for r in RUNTIMES if BACKENDS[runtime_backend_name(r, kind)].runs(kind)]


def runtime_backend(runtime: str, kind: str):
    """The registry backend that runs `kind` for --runtime, refusing one that is absent or
    does not run this model."""
    from otterlite.backends import BACKENDS

    check_runtime(runtime, float_ok=False)
    if runtime not in runtimes_for(kind):
        raise OtterliteError(f"--runtime {runtime} does not run the {kind}; choose {', '.join(runtimes_for(kind))}")
    backend = BACKENDS[runtime_backend_name(runtime, kind)]
    reason = backend.missing()
    if reason:
        raise OtterliteError(f"--runtime {runtime}: {reason}")
    return backend


def run_deployed(spec, x: np.ndarray, runtime: str) -> list[np.ndarray]:
    """Run an integer spec on uint8 NCHW input x with --runtime's backend (ONNX and TFLite
    graphs are built from the same spec for x's exact size); every runtime gives the same outputs."""
    from otterlite.export import build

    backend = runtime_backend(runtime, spec.kind)
    if backend.artifact == "spec":
        return backend.load(None, spec)(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{spec.kind}.{backend.artifact}"
        path.write_bytes(build(spec, backend.artifact, x.shape[2], x.shape[3]))
        return backend.load(path, spec)(x)


def run_deployed_hwc(spec, image: np.ndarray, runtime: str) -> np.ndarray:
    """A transform spec on one (H, W, 3) uint8 image -> (H, W, 3) uint8."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1))[None]
    return np.ascontiguousarray(run_deployed(spec, x, runtime)[0][0].transpose(1, 2, 0))


def deployed_spec(kind: str, models: str | None, checkpoint: str | None = None, n_ch: int | None = None,
                  cache_dir: str | None = None):
    """-> (integer spec, its name for messages): DIR/<kind>.spec from an export (numpy alone
    suffices), else the checkpoint (FRAPPE for the encoder, SEA OTTER for the transforms)
    frozen here exactly as 'otterlite export' freezes it by default (needs torch), with a
    notice when export would refuse it for its fidelity."""
    if models:
        from otterlite.runtime import load_encoder_spec, load_forward_spec, load_inverse_spec

        load = {"frappe-encoder": load_encoder_spec, "walloc-encoder": lambda m: load_encoder_spec(m, kind),
                "seaotter-forward": load_forward_spec, "seaotter-inverse": load_inverse_spec}[kind]
        spec = load(models)
        if kind == "frappe-encoder" and n_ch is not None and n_ch != spec.info.get("n_ch"):
            raise OtterliteError(f"--n-ch {n_ch}, but {models} holds a {spec.info.get('n_ch')}-channel "
                                 f"encoder; re-export with --n-ch {n_ch} or drop --n-ch")
        return spec, f"the export in {models}"
    if importlib.util.find_spec("torch") is None:
        raise OtterliteError(f"freezing the {kind} from its checkpoint needs torch, which is not installed; "
                             f"pass --models DIR (a folder from 'otterlite export'), or install otterlite[torch]")
    from otterlite.export import freeze, photo_loader
    from otterlite.images import notice
    from otterlite.integer_spec.fidelity import Target

    frappe, walloc = kind == "frappe-encoder", kind == "walloc-encoder"
    seaotter = checkpoint if kind.startswith("seaotter") else None
    spec, ckpt, fidelity = freeze(kind, checkpoint if frappe else None, seaotter, n_ch, "auto", cache_dir,
                                  photo_loader(None), Target(), say=lambda line: None,
                                  walloc_checkpoint=checkpoint if walloc else None)
    if not fidelity["pass"]:
        notice(f"{kind}: {'; '.join(fidelity['failures'])}; 'otterlite export' would refuse this checkpoint")
    return spec, ckpt.source


def encode_spec(spec, rgb: np.ndarray, runtime: str = "numpy") -> LatentFrame:
    """Pad to the largest patch (edge replication) and run the integer encoder spec on the
    chosen runtime; every runtime gives the same latents."""
    big = spec.largest_stride
    check_patch_size(rgb, big)
    h, w = rgb.shape[:2]
    padded = pad_to_multiple(rgb, big)
    latents = run_deployed(spec, np.ascontiguousarray(padded.transpose(2, 0, 1))[None], runtime)
    return LatentFrame(spec.source_sha256, w, h, [tuple(g) for g in spec.info["groups"]], [z[0] for z in latents],
                       CODEC_IDS[spec.kind])


def encode_file(image: str | Path, out: str | Path, checkpoint: str | None = None, n_ch: int | None = None,
                cache_dir: str | None = None, runtime: str = "numpy", models: str | None = None,
                codec: str = "frappe", coder: str = "rice") -> Stage:
    """runtime: numpy | onnx | tflite | torch | c (the integer spec: identical bytes), or float (the
    research float model, which differs from the deployed encoder in about 1% of latents by 1).
    models: an export DIR whose <codec>-encoder.spec is used (numpy alone suffices); otherwise
    the checkpoint (of --codec: frappe or walloc) is frozen here as 'otterlite export' does by
    default (needs torch, and scikit-image for the calibration photos of --weight-bits auto).
    coder: rice (ours) or webp (WaLLoC's published layout); Stage.other_sizes gives the other."""
    from otterlite.container import CODERS

    check_runtime(runtime)
    kind = check_codec(codec)
    if coder not in CODERS or (coder == "webp" and kind != "walloc-encoder"):
        raise OtterliteError(f"--latent-coder {coder}: choose rice, or webp (WaLLoC's layout) with --codec walloc")
    if n_ch is not None and kind != "frappe-encoder":
        raise OtterliteError("--n-ch applies to FRAPPE (its channel snapshots); WaLLoC has 12 latent channels")
    rgb = load_rgb(image)
    if runtime == "float":
        from otterlite.models.checkpoint import load_encoder_model

        model, ckpt = load_encoder_model(kind, checkpoint, n_ch, cache_dir, with_decoder=False)
        frame = encode_rgb(model, ckpt.sha256, rgb, kind)
    else:
        spec, _ = deployed_spec(kind, models, checkpoint, n_ch, cache_dir)
        frame = encode_spec(spec, rgb, runtime)
    frame.coder = coder
    data = write_container(frame)
    others = None
    if kind == "walloc-encoder":
        others = {c: len(write_container(replace(frame, coder=c))) for c in CODERS if c != coder}
    return Stage(write_atomic(out, data), len(data), rgb.shape[0] * rgb.shape[1], others)


@dataclass
class ForwardTransform:
    """The cloud's SEA OTTER forward: codes(rgb (H, W, 3) uint8) -> codec values, the
    operating points' qtables and the SEA OTTER checkpoint hash the JPEG's marker names."""
    codes: Callable[[np.ndarray], np.ndarray]
    qtables: list
    sha256: str

    def qtable(self, k: int) -> list[list[int]]:
        if not 0 <= k < len(self.qtables):
            raise OtterliteError(f"--k {k} is out of range: this SEA OTTER model has operating points "
                                 f"0..{len(self.qtables) - 1}")
        return self.qtables[k]


def forward_transform(runtime: str = "numpy", models: str | None = None, seaotter_checkpoint: str | None = None,
                      cache_dir: str | None = None) -> ForwardTransform:
    """runtime float: the float model of the checkpoint; otherwise the exported integer spec
    (from --models DIR, else frozen from the checkpoint) on that runtime."""
    check_runtime(runtime)
    if runtime == "float":
        return forward_from_spec(None, runtime, seaotter_checkpoint, cache_dir)
    spec, name = deployed_spec("seaotter-forward", models, seaotter_checkpoint, cache_dir=cache_dir)
    return forward_from_spec(spec, runtime, name=name)


def forward_from_spec(spec, runtime: str, seaotter_checkpoint: str | None = None, cache_dir: str | None = None,
                      name: str = "the forward spec") -> ForwardTransform:
    """The integer forward `spec` on `runtime`; runtime float (spec None): the float model of
    the SEA OTTER checkpoint."""
    if runtime == "float":
        from otterlite.models.checkpoint import load_seaotter

        bundle, ckpt = load_seaotter(seaotter_checkpoint, cache_dir)
        return ForwardTransform(lambda rgb: hwc(bundle.fwd.to_codec_uint8(nchw(rgb))), bundle.qtables, ckpt.sha256)
    runtime_backend(runtime, spec.kind)
    if not spec.info.get("qtables"):
        raise OtterliteError(f"{name}: the forward spec holds no quantization tables (written by an older "
                             f"otterlite); re-run 'otterlite export seaotter-forward'")
    return ForwardTransform(lambda rgb: run_deployed_hwc(spec, rgb, runtime), spec.info["qtables"],
                            spec.source_sha256)


def transcode_bytes(container: bytes, k: int, frappe, frappe_ckpt, forward: ForwardTransform,
                    source: str = "container") -> bytes:
    """`frappe`, `frappe_ckpt`: the decoder model of the container's codec (FRAPPE or WaLLoC)."""
    frame, _ = read_header(container, source)
    check_frappe_matches(frame, frappe_ckpt, frappe, source)
    frame = read_container(container, source)
    rgb = decode_frame(frappe, frame)
    return write_codec_jpeg(forward.codes(rgb), forward.qtable(k), forward.sha256, k)


def transcode_file(container: str | Path, out: str | Path, k: int = 0, checkpoint: str | None = None,
                   seaotter_checkpoint: str | None = None, cache_dir: str | None = None, runtime: str = "numpy",
                   models: str | None = None) -> Stage:
    """The decoder of the container's codec (FRAPPE or WaLLoC: the cloud's float model;
    `checkpoint` is that codec's) then the SEA OTTER forward on `runtime` (numpy | onnx |
    tflite | torch give identical JPEG bytes; float = the float transform)."""
    if importlib.util.find_spec("torch") is None:
        raise OtterliteError("transcode runs the cloud's decoder, a float torch model, and torch is not "
                             "installed; install otterlite[torch] (torch==2.13.0 first)")
    from otterlite.models.checkpoint import load_encoder_model

    data = read_bytes(container, ".otl container written by 'otterlite encode'")
    frame, _ = read_header(data, str(container))
    forward = forward_transform(runtime, models, seaotter_checkpoint, cache_dir)
    forward.qtable(k)
    kind = KIND_OF_CODEC_ID[frame.codec]
    model, ckpt = load_encoder_model(kind, checkpoint, frame.n_ch if kind == "frappe-encoder" else None, cache_dir)
    jpeg = transcode_bytes(data, k, model, ckpt, forward, str(container))
    return Stage(write_atomic(out, jpeg), len(jpeg), frame.width * frame.height)


def inverse_transform(runtime: str = "numpy", models: str | None = None, seaotter_checkpoint: str | None = None,
                      cache_dir: str | None = None, table: bool = False) -> Callable[..., np.ndarray]:
    """-> decode(jpeg bytes, source, force) -> (H, W, 3) uint8 RGB, checking the JPEG's marker.
    runtime float: the float inverse of the checkpoint; numpy: runtime.ConsumerDecoder (table:
    one lookup per pixel for a 1x1 mix, for many images; else the formula); others run the
    same integer spec."""
    check_runtime(runtime)
    if runtime == "float":
        from otterlite.models.checkpoint import load_seaotter

        bundle, ckpt = load_seaotter(seaotter_checkpoint, cache_dir)

        def decode_float(jpeg: bytes, source: str = "JPEG", force: bool = False) -> np.ndarray:
            comps, meta = read_codec_jpeg(jpeg, source)
            check_marker(meta, ckpt.sha256, ckpt.source, source, force)
            return hwc(bundle.inv.to_rgb_uint8(nchw(comps)))
        return decode_float
    spec, name = deployed_spec("seaotter-inverse", models, seaotter_checkpoint, cache_dir=cache_dir)
    backend = runtime_backend(runtime, spec.kind)
    if backend.name == "numpy":
        from otterlite.runtime import ConsumerDecoder

        return ConsumerDecoder(spec, table).decode
    if backend.name == "c-lib":
        return c_consumer(spec, name)

    def decode(jpeg: bytes, source: str = "JPEG", force: bool = False) -> np.ndarray:
        comps, meta = read_codec_jpeg(jpeg, source)
        check_marker(meta, spec.source_sha256, name, source, force)
        return run_deployed_hwc(spec, comps, runtime)
    return decode


def c_consumer(spec, name: str) -> Callable[..., np.ndarray]:
    """decode for --runtime c: Pillow reads the header (size, marker), the generated C inverse
    linked with libjpeg decodes the pixels (firmware_sim.consumer.LibraryInverse)."""
    from otterlite.firmware_sim.consumer import LibraryInverse

    with tempfile.TemporaryDirectory() as folder:  # the library stays loaded once its file is gone
        library = LibraryInverse(spec, folder, jpeg=True)

    def decode(jpeg: bytes, source: str = "JPEG", force: bool = False) -> np.ndarray:
        image, meta = open_codec_jpeg(jpeg, source, load=False)
        check_marker(meta, spec.source_sha256, name, source, force)
        return library.decode(jpeg, *image.size, source)
    return decode


def decode_file(jpeg: str | Path, out: str | Path, seaotter_checkpoint: str | None = None,
                cache_dir: str | None = None, force: bool = False, runtime: str = "numpy",
                models: str | None = None) -> Stage:
    """The consumer: runtime numpy | onnx | tflite | torch write identical PNG bytes (the
    exported inverse; with --models DIR numpy and Pillow suffice); float = the float inverse."""
    data = read_bytes(jpeg, "JPEG written by 'otterlite transcode'")
    rgb = inverse_transform(runtime, models, seaotter_checkpoint, cache_dir)(data, str(jpeg), force)
    png = encode_png(rgb)
    return Stage(write_atomic(out, png), len(png), rgb.shape[0] * rgb.shape[1])

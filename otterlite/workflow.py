"""The three codec stages as library functions (the CLI is a thin layer over these).

sensor:   image -> FRAPPE encoder -> int8 latents -> .otl container
cloud:    .otl -> FRAPPE decoder -> RGB -> SEA OTTER forward -> JPEG (learned qtables)
consumer: JPEG -> libjpeg raw components -> SEA OTTER inverse -> RGB
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otterlite.container import LatentFrame, read_container, read_header, write_container
from otterlite.errors import OtterliteError
from otterlite.images import encode_png, load_rgb, pad_to_multiple
from otterlite.models.jpeg import check_marker, read_codec_jpeg, write_codec_jpeg


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write via a temporary file and rename, so a failure never leaves a partial output."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise OtterliteError(f"output folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    """`data` as indented JSON, written atomically (write_atomic)."""
    return write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_bytes(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise OtterliteError(f"{path}: no such file; give the {what}")
    return path.read_bytes()


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


def encode_rgb(model, checkpoint_sha: str, rgb: np.ndarray) -> LatentFrame:
    """Pad to the largest patch (edge replication), run the encoder, wrap as a frame."""
    big = max(g.ps for g in model.groups)
    check_patch_size(rgb, big)
    h, w = rgb.shape[:2]
    latents = model.encode(nchw(pad_to_multiple(rgb, big)))
    return LatentFrame(checkpoint_sha, w, h, [(g.ps, g.start, g.end) for g in model.groups],
                       [z[0].numpy() for z in latents])


def decode_frame(model, frame: LatentFrame) -> np.ndarray:
    """FRAPPE decode to uint8 RGB, cropped to the original size."""
    import torch

    rgb = hwc(model.decode([torch.from_numpy(z)[None] for z in frame.latents]))
    return rgb[: frame.height, : frame.width]


def check_frappe_matches(frame: LatentFrame, ckpt, model, source: str) -> None:
    if frame.checkpoint_sha256 != ckpt.sha256:
        raise OtterliteError(f"{source} was encoded with FRAPPE checkpoint {frame.checkpoint_sha256[:12]}, "
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

    @property
    def bpp(self) -> float:
        return 8 * self.size / self.pixels


RUNTIMES = {"numpy": "numpy-streaming", "onnx": "ort-O3-t1", "tflite": "litert", "torch": "torch-int", "c": "c-lib"}


def encode_spec(spec, rgb: np.ndarray, runtime: str = "numpy") -> LatentFrame:
    """Pad to the largest patch (edge replication) and run the integer encoder spec on the
    chosen runtime (a backend of the registry); every runtime gives the same latents."""
    from otterlite.backends import BACKENDS
    from otterlite.export import build

    big = spec.largest_stride
    check_patch_size(rgb, big)
    h, w = rgb.shape[:2]
    backend = BACKENDS[RUNTIMES[runtime]]
    reason = backend.missing()
    if reason:
        raise OtterliteError(f"--runtime {runtime}: {reason}")
    padded = pad_to_multiple(rgb, big)
    x = np.ascontiguousarray(padded.transpose(2, 0, 1))[None]
    if backend.artifact == "spec":
        latents = backend.load(None, spec)(x)
    else:  # the graph for this exact padded size, from the same spec
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"frappe-encoder.{backend.artifact}"
            path.write_bytes(build(spec, backend.artifact, padded.shape[0], padded.shape[1]))
            latents = backend.load(path, spec)(x)
    return LatentFrame(spec.source_sha256, w, h, [tuple(g) for g in spec.info["groups"]], [z[0] for z in latents])


def encode_file(image: str | Path, out: str | Path, checkpoint: str | None = None, n_ch: int | None = None,
                cache_dir: str | None = None, runtime: str = "numpy", models: str | None = None) -> Stage:
    """runtime: numpy | onnx | tflite | torch | c (the integer spec: identical bytes), or float (the
    research float model, which differs from the deployed encoder in about 1% of latents by 1).
    models: an export DIR whose frappe-encoder.spec is used (numpy alone suffices); otherwise
    the checkpoint is frozen here as 'otterlite export' does by default (needs torch, and
    scikit-image for the calibration photos of --weight-bits auto)."""
    rgb = load_rgb(image)
    if runtime not in (*RUNTIMES, "float"):
        raise OtterliteError(f"--runtime {runtime!r}: choose from {', '.join(RUNTIMES)}, float")
    if runtime == "float":
        from otterlite.models.checkpoint import load_frappe

        model, ckpt = load_frappe(checkpoint, n_ch, cache_dir)
        frame = encode_rgb(model, ckpt.sha256, rgb)
    else:
        if models:
            from otterlite.runtime import load_encoder_spec

            spec = load_encoder_spec(models)
            if n_ch is not None and n_ch != spec.info.get("n_ch"):
                raise OtterliteError(f"--n-ch {n_ch}, but {models} holds a {spec.info.get('n_ch')}-channel "
                                     f"encoder; re-export with --n-ch {n_ch} or drop --n-ch")
        else:  # frozen here exactly as 'otterlite export' freezes it (weight bits auto)
            from otterlite.export import freeze, photo_loader
            from otterlite.images import notice
            from otterlite.spec.fidelity import Target

            spec, _, fidelity = freeze("frappe-encoder", checkpoint, None, n_ch, "auto", cache_dir, photo_loader(None),
                                       Target(), say=lambda line: None)
            if not fidelity["pass"]:
                notice(f"frappe-encoder: {'; '.join(fidelity['failures'])}; 'otterlite export' would refuse "
                       f"this checkpoint")
        frame = encode_spec(spec, rgb, runtime)
    data = write_container(frame)
    return Stage(write_atomic(out, data), len(data), rgb.shape[0] * rgb.shape[1])


def transcode_bytes(container: bytes, k: int, frappe, frappe_ckpt, seaotter, seaotter_ckpt,
                    source: str = "container") -> bytes:
    frame, _ = read_header(container, source)
    check_frappe_matches(frame, frappe_ckpt, frappe, source)
    frame = read_container(container, source)
    rgb = decode_frame(frappe, frame)
    codec = hwc(seaotter.fwd.to_codec_uint8(nchw(rgb)))
    return write_codec_jpeg(codec, seaotter.qtable(k), seaotter_ckpt.sha256, k)


def transcode_file(container: str | Path, out: str | Path, k: int = 0, checkpoint: str | None = None,
                   seaotter_checkpoint: str | None = None, cache_dir: str | None = None) -> Stage:
    from otterlite.models.checkpoint import load_frappe, load_seaotter

    data = read_bytes(container, ".otl container written by 'otterlite encode'")
    frame, _ = read_header(data, str(container))
    frappe, frappe_ckpt = load_frappe(checkpoint, frame.n_ch, cache_dir)
    seaotter, seaotter_ckpt = load_seaotter(seaotter_checkpoint, cache_dir)
    seaotter.qtable(k)
    jpeg = transcode_bytes(data, k, frappe, frappe_ckpt, seaotter, seaotter_ckpt, str(container))
    return Stage(write_atomic(out, jpeg), len(jpeg), frame.width * frame.height)


def decode_bytes(jpeg: bytes, seaotter, seaotter_ckpt, source: str = "JPEG", force: bool = False) -> np.ndarray:
    comps, meta = read_codec_jpeg(jpeg, source)
    check_marker(meta, seaotter_ckpt.sha256, seaotter_ckpt.source, source, force)
    return hwc(seaotter.inv.to_rgb_uint8(nchw(comps)))


def decode_file(jpeg: str | Path, out: str | Path, seaotter_checkpoint: str | None = None,
                cache_dir: str | None = None, force: bool = False) -> Stage:
    from otterlite.models.checkpoint import load_seaotter

    data = read_bytes(jpeg, "JPEG written by 'otterlite transcode'")
    seaotter, ckpt = load_seaotter(seaotter_checkpoint, cache_dir)
    rgb = decode_bytes(data, seaotter, ckpt, str(jpeg), force)
    png = encode_png(rgb)
    return Stage(write_atomic(out, png), len(png), rgb.shape[0] * rgb.shape[1])

"""`otterlite export`: checkpoint -> integer spec -> deployable files + manifest.json.

DIR/<model>.spec   the frozen integer spec (blob layout in otterlite/integer_spec/types.py)
DIR/<model>.onnx   the ONNX graph (NCHW)
DIR/<model>.tflite the TFLite flatbuffer (NHWC)
DIR/manifest.json  one entry per artifact (see `artifact_entry`)
"""
from __future__ import annotations

import hashlib
import json
import platform
import zlib
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.integer_spec.types import ENCODER_KINDS, TableMixSpec, save_spec

MODELS = ("frappe-encoder", "walloc-encoder", "seaotter-inverse", "seaotter-forward")
FORMATS = ("onnx", "tflite")
WALLOC_AUTO_MARGIN = 0.5  # --weight-bits auto for WaLLoC: 99.5% on the calibration photos for a 99% target
LAYOUTS = {"onnx": "NCHW", "tflite": "NHWC"}
ROUNDING = {
    "frappe-encoder": "latent = -127 + #{j : acc >= T[c, j]}; T from the float model's round-half-even",
    "walloc-encoder": "latent = -127 + #{j : acc >= T[c, j]} (acc: wrap-around stride-8 conv); T from the float "
                      "model's ToUniform and round-half-even",
    "seaotter-forward": "codec = #{j : acc >= T[c, j]}; T from the float model's round-half-even",
    "seaotter-inverse": "rgb = clamp(floor((bias + sum over (c, tap) of tables[c, tap, z]) / 2^shift), 0, 255); "
                        "bias holds 2^(shift-1): round half up; tables round half to even",
}


def parse_size(text: str, multiple: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise OtterliteError(f"--input-size {text!r}: expected HxW, e.g. 512x512") from None
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise OtterliteError(f"--input-size {text}: both sides must be positive multiples of the "
                             f"largest patch {multiple}; e.g. {max(multiple, h // multiple * multiple)}x"
                             f"{max(multiple, w // multiple * multiple)}")
    return h, w


def output_names(spec) -> list[str]:
    if spec.kind in ENCODER_KINDS:
        return [f"latents_g{i}" for i in range(len(spec.stages))]
    return ["codec"] if spec.kind == "seaotter-forward" else ["rgb"]


def input_name(spec) -> str:
    return "codec" if isinstance(spec, TableMixSpec) else "image"


def fixed_input(height: int, width: int) -> np.ndarray:
    """The built-in input the manifest's output CRCs are computed on (PCG64 seed 0)."""
    return np.random.default_rng(0).integers(0, 256, (1, 3, height, width), dtype=np.uint8)


def parse_weight_bits(value) -> int | str:
    """'auto' (None too) or an int 2..12."""
    if value is None or value == "auto":
        return "auto"
    try:
        bits = int(value)
    except (TypeError, ValueError):
        bits = None
    if bits is None or not 2 <= bits <= 12:
        raise OtterliteError(f"--weight-bits {value}: choose auto (the fewest of 8..12 that meet the fidelity "
                             f"target) or 2..12 (8 = int8; 9..12 split into int8 parts)")
    return bits


def check_flags(models: list[str], given: dict) -> None:
    """Refuse a flag that none of the models being exported uses, naming the one that was meant."""
    frappe, encoders, forward = ("frappe-encoder",), ENCODER_KINDS, ("seaotter-forward",)
    transforms = ("seaotter-inverse", "seaotter-forward")
    uses = {"--checkpoint": frappe, "--n-ch": frappe, "--walloc-checkpoint": ("walloc-encoder",),
            "--weight-bits": encoders, "--calibration": encoders, "--min-equal": encoders, "--k": forward,
            "--seaotter-checkpoint": transforms, "--min-within": transforms}
    meant = {"--checkpoint": "; for a SEA OTTER checkpoint use --seaotter-checkpoint, for WaLLoC --walloc-checkpoint",
             "--seaotter-checkpoint": "; for a FRAPPE checkpoint use --checkpoint",
             "--walloc-checkpoint": "; for a FRAPPE checkpoint use --checkpoint"}
    for flag, value in given.items():
        users = uses[flag]
        if value is not None and not set(users) & set(models):
            raise OtterliteError(f"{flag} applies to {' and '.join(users)}, which this export does not include "
                                 f"({', '.join(models)}){meant.get(flag, '')}")


def freeze(model_name: str, checkpoint: str | None, seaotter_checkpoint: str | None, n_ch: int | None,
           weight_bits: int | str, cache_dir: str | None, photos, target, say=print,
           walloc_checkpoint: str | None = None):
    """-> (spec, checkpoint, fidelity judged against target). weight_bits 'auto': per scale
    group the fewest in 8..12 that meet the target on `photos()` (integer_spec.fidelity.auto_weight_bits)."""
    from otterlite.models.checkpoint import load_encoder_model, load_seaotter
    from otterlite.integer_spec import fidelity as fid
    from otterlite.integer_spec import freeze as f

    if model_name in ENCODER_KINDS:
        walloc = model_name == "walloc-encoder"
        model, ckpt = load_encoder_model(model_name, walloc_checkpoint if walloc else checkpoint, n_ch, cache_dir,
                                         with_decoder=False)
        freezer = f.freeze_frappe_encoder
        if walloc:  # the composed kernel once, for every bit width auto tries
            composed = model.sensor_encoder().composed_kernel()
            freezer = lambda m, sha, bits: f.freeze_walloc_encoder(m, sha, bits, composed)  # noqa: E731
        if weight_bits == "auto":  # WaLLoC's 9747-tap sums lose equality faster off the calibration photos
            weight_bits = fid.auto_weight_bits(model, ckpt.sha256, photos(), target, freezer,
                                               margin=WALLOC_AUTO_MARGIN if walloc else 0.0)
        spec = freezer(model, ckpt.sha256, weight_bits)
        say(f"  measuring {model_name} fidelity on {len(photos())} calibration photos")
        return spec, ckpt, target.judge(spec.kind, fid.encoder_fidelity(spec, model, photos()))
    bundle, ckpt = load_seaotter(seaotter_checkpoint, cache_dir)
    if model_name == "seaotter-forward":
        spec, transform = f.freeze_seaotter_forward(bundle, ckpt.sha256), bundle.fwd
    else:
        spec, transform = f.freeze_seaotter_inverse(bundle, ckpt.sha256), bundle.inv
    kernel = fid.transform_kernel(spec)
    say(f"  measuring {model_name} fidelity on " + ("all 2^24 inputs" if kernel == 1 else "photos + random images"))
    return spec, ckpt, target.judge(spec.kind, fid.transform_fidelity(spec, transform, photos() if kernel > 1 else []))


def photo_loader(calibration: str | None):
    """-> photos(): the calibration photos (images.calibration_photos), loaded on first use."""
    from otterlite.images import calibration_photos

    cache = []

    def photos():
        if not cache:
            cache.append(calibration_photos(calibration))
        return cache[0]
    return photos


def low_fidelity_fix(name: str, weight_bits) -> str:
    if name not in ENCODER_KINDS:
        return "this checkpoint's transform cannot be frozen faithfully here"
    if weight_bits == "auto":
        return "even 12-bit weights miss it (lower --min-equal if that is acceptable)"
    return "use --weight-bits auto (or more bits)"


def build(spec, fmt: str, height: int, width: int) -> bytes:
    """The artifact bytes of one format; every writer reads the same integer spec."""
    if fmt == "onnx":
        from otterlite.export import onnx_writer

        if isinstance(spec, TableMixSpec):
            return onnx_writer.table_mix_model(spec, height, width, "rgb").SerializeToString()
        return onnx_writer.threshold_conv_model(spec, height, width, output_names(spec)).SerializeToString()
    from otterlite.export import tflite_writer

    if isinstance(spec, TableMixSpec):
        return tflite_writer.table_mix_model(spec, height, width, "rgb")
    return tflite_writer.threshold_conv_model(spec, height, width, output_names(spec))


def to_layout(shape: list[int], layout: str) -> list[int]:
    """An NCHW shape in the artifact's layout."""
    return shape if layout == "NCHW" else [shape[0], shape[2], shape[3], shape[1]]


def input_size(entry: dict) -> tuple[int, int]:
    """(height, width) of a manifest entry's input."""
    shape = entry["inputs"][0]["shape"]
    return (shape[2], shape[3]) if entry.get("layout", "NCHW") == "NCHW" else (shape[1], shape[2])


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("otterlite", "numpy", "torch", "onnx", "onnxruntime", "tflite", "flatbuffers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def artifact_entry(spec, fmt: str, file: str, data: bytes, height: int, width: int, ckpt, extra: dict) -> dict:
    import torch

    from otterlite.integer_spec.torch_reference import run_spec

    x = fixed_input(height, width)
    outs = [o.numpy() for o in run_spec(spec, torch.from_numpy(x))]
    layout = LAYOUTS[fmt]
    if layout == "NHWC":
        outs = [np.ascontiguousarray(o.transpose(0, 2, 3, 1)) for o in outs]
    return {
        "model": spec.kind, "format": fmt, "file": file, "sha256": hashlib.sha256(data).hexdigest(),
        "spec_file": f"{spec.kind}.spec",
        "checkpoint": {"source": ckpt.source, "sha256": ckpt.sha256},
        "layout": layout,
        "inputs": [{"name": input_name(spec), "dtype": "uint8", "shape": to_layout([1, 3, height, width], layout)}],
        "outputs": [{"name": n, "dtype": str(o.dtype), "shape": list(o.shape)}
                    for n, o in zip(output_names(spec), outs)],
        "spec": {**spec.info, "accumulator_bound": spec.accumulator_bound},
        "rounding": ROUNDING[spec.kind],
        "opset": 17 if fmt == "onnx" else None,
        "tflite_schema_version": 3 if fmt == "tflite" else None,
        "tools": tool_versions(),
        "fixed_input": "numpy PCG64 seed 0, integers(0, 256) of the NCHW input shape (transposed for NHWC)",
        "fixed_input_output_crc32": {n: zlib.crc32(o.tobytes()) for n, o in zip(output_names(spec), outs)},
        **extra,
    }


def export(models: list[str], formats: list[str], out_dir: str | Path, checkpoint: str | None = None,
           seaotter_checkpoint: str | None = None, n_ch: int | None = None, input_size: str | None = None,
           k: int | None = None, weight_bits: int | str | None = None, cache_dir: str | None = None,
           calibration: str | None = None, target=None, allow_low_fidelity: bool = False,
           given: dict | None = None, say=print, walloc_checkpoint: str | None = None) -> Path:
    """Freeze, measure fidelity, emit and record; every file is built in memory first, so an
    error (a fidelity target missed included, unless allow_low_fidelity) writes nothing.
    `given`: further flags the caller was given ({flag: value}, None = not given), to refuse
    those no exported model uses."""
    from otterlite.integer_spec.fidelity import Target
    from otterlite.files import write_atomic, write_json

    for m in models:
        if m not in MODELS:
            raise OtterliteError(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for f in formats:
        if f not in FORMATS:
            raise OtterliteError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    check_flags(models, {"--checkpoint": checkpoint, "--seaotter-checkpoint": seaotter_checkpoint,
                         "--walloc-checkpoint": walloc_checkpoint, "--n-ch": n_ch, "--weight-bits": weight_bits,
                         "--calibration": calibration, "--k": k,
                         **(given or {})})
    weight_bits = parse_weight_bits(weight_bits)
    target = target or Target()
    photos = photo_loader(calibration)
    out = Path(out_dir)
    files: dict[str, bytes] = {}
    entries = []
    for name in models:
        spec, ckpt, fidelity = freeze(name, checkpoint, seaotter_checkpoint, n_ch, weight_bits, cache_dir, photos,
                                      target, say, walloc_checkpoint)
        if not fidelity["pass"]:
            problem = f"{name}: {'; '.join(fidelity['failures'])}"
            if not allow_low_fidelity:
                raise OtterliteError(f"{problem}: the export would not be the model you trained; "
                                     f"{low_fidelity_fix(name, weight_bits)}, or pass --allow-low-fidelity "
                                     f"to export it anyway")
            say(f"warning: {problem} (exported anyway: --allow-low-fidelity)")
        multiple = spec.largest_stride if name in ENCODER_KINDS else 1
        height, width = parse_size(input_size or "512x512", multiple)
        files[f"{name}.spec"] = save_spec(spec)
        extra = {
            "frappe-encoder": {"n_ch": spec.info.get("n_ch"), "scale_groups": spec.info.get("groups"),
                               "weight_bits": spec.info.get("weight_bits")},
            "walloc-encoder": {"n_ch": spec.info.get("n_ch"), "J": spec.info.get("J"),
                               "weight_bits": spec.info.get("weight_bits")},
            "seaotter-forward": {"k": k or 0, "weight_bits": spec.info.get("weight_bits")},
        }.get(name, {})
        extra["fidelity"] = fidelity
        extra["spec_sha256"] = hashlib.sha256(files[f"{name}.spec"]).hexdigest()
        for fmt in formats:
            data = build(spec, fmt, height, width)
            files[f"{name}.{fmt}"] = data
            entries.append(artifact_entry(spec, fmt, f"{name}.{fmt}", data, height, width, ckpt, extra))
        bits = f", weight bits {spec.info['weight_bits']}" if name in ENCODER_KINDS else ""
        say(f"exported {name}: {', '.join(f'{name}.{f}' for f in formats)} ({height}x{width}, "
            f"accumulator bound {spec.accumulator_bound}{bits}; fidelity {fidelity_summary(fidelity)})")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) if (out / "manifest.json").exists() else {"artifacts": []}
    keep = [e for e in manifest["artifacts"] if (e["model"], e["format"]) not in {(e2["model"], e2["format"]) for e2 in entries}]
    manifest["artifacts"] = keep + entries
    for file, data in files.items():
        write_atomic(out / file, data)
    write_json(out / "manifest.json", manifest)
    return out


def fidelity_summary(fid: dict) -> str:
    """One line: the figures and pass / FAIL against the target."""
    text = f"{100 * fid['equal_share']:.3f}% equal to the float model, max {fid['max_lsb']} LSB"
    if "max_lsb_ordinary" in fid:
        text += f" (ordinary inputs {fid['max_lsb_ordinary']})"
    return text + (": pass" if fid["pass"] else ": FAIL (" + "; ".join(fid["failures"]) + ")")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not Path(folder).is_dir():
        raise OtterliteError(f"{folder}: no such directory; run 'otterlite export' first")
    if not path.is_file():
        raise OtterliteError(f"{folder}: no manifest.json, so no exported artifacts; run "
                             f"'otterlite export MODEL --format onnx -o {folder}' first")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise OtterliteError(f"{path}: corrupted manifest (not JSON with an 'artifacts' list); re-run 'otterlite export'")
    for i, entry in enumerate(manifest["artifacts"]):
        problem = entry_problem(entry)
        if problem:
            raise OtterliteError(f"{path}: artifact {i}: {problem}; re-run 'otterlite export'")
    return manifest


def entry_problem(entry) -> str | None:
    """What is wrong with one manifest entry, in the fields verify and info read (None: fine).
    File names must be plain names in the folder, never paths."""
    def plain(name) -> bool:
        return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
    if not isinstance(entry, dict):
        return "not an object"
    if entry.get("model") not in MODELS or entry.get("format") not in FORMATS:
        return f"model {str(entry.get('model'))[:40]!r} or format {str(entry.get('format'))[:20]!r} unknown"
    if not plain(entry.get("file")) or not plain(entry.get("spec_file")) or not isinstance(entry.get("sha256"), str):
        return "file, spec_file (plain names in this folder) or sha256 missing"
    inputs, outputs = entry.get("inputs"), entry.get("outputs")
    if entry.get("layout", "NCHW") not in LAYOUTS.values() or not isinstance(inputs, list) or not inputs \
            or not isinstance(inputs[0], dict) or not isinstance(inputs[0].get("shape"), list) \
            or len(inputs[0]["shape"]) != 4 or not all(isinstance(d, int) and 0 < d < 2 ** 16 for d in inputs[0]["shape"]):
        return "layout or input shape (4 positive ints) missing"
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        return "outputs (a list of named entries) missing"
    checkpoint = entry.get("checkpoint")
    if not isinstance(checkpoint, dict) or not all(isinstance(checkpoint.get(k), str) for k in ("source", "sha256")):
        return "checkpoint source and sha256 missing"
    if entry["model"] in ENCODER_KINDS and not (isinstance(entry.get("n_ch"), int) and entry["n_ch"] > 0):
        return "n_ch missing"
    return None

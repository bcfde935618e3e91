"""`otterlite export`: checkpoint -> integer spec -> deployable files + manifest.json.

DIR/<model>.spec   the frozen integer spec (blob layout in otterlite/spec/types.py)
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
from otterlite.spec.types import TableMixSpec, save_spec

MODELS = ("frappe-encoder", "seaotter-inverse", "seaotter-forward")
FORMATS = ("onnx", "tflite")
LAYOUTS = {"onnx": "NCHW", "tflite": "NHWC"}
ROUNDING = {
    "frappe-encoder": "latent = -127 + #{j : acc >= T[c, j]}; T from the float model's round-half-even",
    "seaotter-forward": "codec = #{j : acc >= T[c, j]}; T from the float model's round-half-even",
    "seaotter-inverse": "rgb = clamp(floor((sum W * table[z] + bias) / 2^shift), 0, 255); bias holds "
                        "2^(shift-1): round half up",
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
    if spec.kind == "frappe-encoder":
        return [f"latents_g{i}" for i in range(len(spec.stages))]
    return ["codec"] if spec.kind == "seaotter-forward" else ["rgb"]


def input_name(spec) -> str:
    return "codec" if isinstance(spec, TableMixSpec) else "image"


def fixed_input(height: int, width: int) -> np.ndarray:
    """The built-in input the manifest's output CRCs are computed on (PCG64 seed 0)."""
    return np.random.default_rng(0).integers(0, 256, (1, 3, height, width), dtype=np.uint8)


def freeze(model_name: str, checkpoint: str | None, seaotter_checkpoint: str | None, n_ch: int | None,
           weight_bits: int, cache_dir: str | None):
    from otterlite.models.checkpoint import load_frappe, load_seaotter
    from otterlite.spec import freeze as f

    if model_name == "frappe-encoder":
        model, ckpt = load_frappe(checkpoint, n_ch, cache_dir)
        return f.freeze_frappe_encoder(model, ckpt.sha256, weight_bits), ckpt
    bundle, ckpt = load_seaotter(seaotter_checkpoint, cache_dir)
    if model_name == "seaotter-forward":
        return f.freeze_seaotter_forward(bundle, ckpt.sha256), ckpt
    return f.freeze_seaotter_inverse(bundle, ckpt.sha256), ckpt


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

    from otterlite.spec.torch_reference import run_spec

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
           k: int = 0, weight_bits: int = 8, cache_dir: str | None = None, say=print) -> Path:
    """Freeze, emit and record; every file is built in memory first, so an error writes nothing."""
    from otterlite.workflow import write_atomic, write_json

    for m in models:
        if m not in MODELS:
            raise OtterliteError(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for f in formats:
        if f not in FORMATS:
            raise OtterliteError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    if not 2 <= weight_bits <= 12:
        raise OtterliteError(f"--weight-bits {weight_bits}: choose 2..12 (8 = int8; 9..12 split into int8 parts)")
    out = Path(out_dir)
    files: dict[str, bytes] = {}
    entries = []
    for name in models:
        spec, ckpt = freeze(name, checkpoint, seaotter_checkpoint, n_ch, weight_bits, cache_dir)
        multiple = spec.largest_stride if name == "frappe-encoder" else 1
        height, width = parse_size(input_size or "512x512", multiple)
        files[f"{name}.spec"] = save_spec(spec)
        extra = {
            "frappe-encoder": {"n_ch": spec.info.get("n_ch"), "scale_groups": spec.info.get("groups"),
                               "weight_bits": weight_bits},
            "seaotter-forward": {"k": k, "weight_bits": spec.info.get("weight_bits")},
        }.get(name, {})
        for fmt in formats:
            data = build(spec, fmt, height, width)
            files[f"{name}.{fmt}"] = data
            entries.append(artifact_entry(spec, fmt, f"{name}.{fmt}", data, height, width, ckpt, extra))
        say(f"exported {name}: {', '.join(f'{name}.{f}' for f in formats)} ({height}x{width}, "
            f"accumulator bound {spec.accumulator_bound})")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) if (out / "manifest.json").exists() else {"artifacts": []}
    keep = [e for e in manifest["artifacts"] if (e["model"], e["format"]) not in {(e2["model"], e2["format"]) for e2 in entries}]
    manifest["artifacts"] = keep + entries
    for file, data in files.items():
        write_atomic(out / file, data)
    write_json(out / "manifest.json", manifest)
    return out


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not Path(folder).is_dir():
        raise OtterliteError(f"{folder}: no such directory; run 'otterlite export' first")
    if not path.is_file():
        raise OtterliteError(f"{folder}: no manifest.json, so no exported artifacts; run "
                             f"'otterlite export MODEL --format onnx -o {folder}' first")
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("artifacts"), list)
    except (ValueError, AssertionError, AttributeError):
        raise OtterliteError(f"{path}: corrupted manifest; re-run 'otterlite export'") from None
    return manifest

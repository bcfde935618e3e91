"""`otterlite info FILE`: describe a latent container, a SEA OTTER JPEG, an integer spec, an
exported .onnx or .tflite (with its manifest entry when manifest.json sits next to it), or
an export's manifest.json."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from otterlite.container import MAGIC, read_container
from otterlite.errors import OtterliteError
from otterlite.models.jpeg import read_codec_jpeg
from otterlite.integer_spec.types import MAGIC as SPEC_MAGIC
from otterlite.integer_spec.types import VERSION as SPEC_VERSION
from otterlite.integer_spec.types import TableMixSpec, load_spec


def describe(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise OtterliteError(f"{path}: no such file")
    data = path.read_bytes()
    if data[:4] == MAGIC:
        frame = read_container(data, str(path))
        pixels = frame.width * frame.height
        lines = [f"{path}: otterlite latent container, format v1, {len(data)} bytes, "
                 f"{8 * len(data) / pixels:.4f} bpp",
                 f"  image {frame.width}x{frame.height} (encoded padded {frame.padded_size[1]}x{frame.padded_size[0]})",
                 f"  codec {frame.codec}, latent coder {frame.coder}",
                 f"  {frame.codec} checkpoint sha256 {frame.checkpoint_sha256}",
                 f"  n_ch {frame.n_ch}, scale groups:"]
        for (ps, start, end), z in zip(frame.groups, frame.latents):
            lines.append(f"    patch {ps:>2}: channels {start}..{end - 1}, latents {z.shape}, "
                         f"range [{z.min()}, {z.max()}]")
        return lines
    if data[:2] == b"\xff\xd8":
        comps, meta = read_codec_jpeg(data, str(path))
        kind = "SEA OTTER JPEG" if meta["seaotter"] else "JPEG without otterlite marker"
        return [f"{path}: {kind}, {len(data)} bytes, {comps.shape[1]}x{comps.shape[0]}, "
                f"{8 * len(data) / (comps.shape[0] * comps.shape[1]):.4f} bpp",
                f"  SEA OTTER checkpoint {meta['seaotter']}, operating point k={meta['k']}"]
    if path.suffix == ".tflite" or data[4:8] == b"TFL3":
        return describe_tflite(path, data)
    if data[:4] == SPEC_MAGIC:
        return describe_spec(path, data)
    if path.suffix == ".onnx":
        return describe_onnx(path, data)
    if path.name == "manifest.json":
        return describe_manifest(path)
    raise OtterliteError(f"{path}: unknown file kind (starts with {data[:4]!r}); info reads .otl "
                         f"containers, otterlite JPEGs, .spec, .onnx and .tflite files and manifest.json")


def describe_spec(path: Path, data: bytes) -> list[str]:
    """Kind, stages (shapes, weight bits, thresholds per channel) or tables, and the bounds."""
    spec = load_spec(data, str(path))
    lines = [f"{path}: otterlite integer spec v{SPEC_VERSION}, {spec.kind}, {len(data)} bytes",
             f"  source checkpoint sha256 {spec.source_sha256}",
             f"  accumulator bound {spec.accumulator_bound}"]
    if isinstance(spec, TableMixSpec):
        return lines + [f"  tables {tuple(spec.tables.shape)} [channel, u, v, code, output] int64, kernel "
                        f"{spec.kernel}x{spec.kernel}, pad {spec.pad}, shift {spec.shift}, bias {spec.bias.tolist()}",
                        f"  entries in [{spec.tables.min()}, {spec.tables.max()}]"]
    lines.append(f"  output {spec.out_dtype} = {spec.base} + #{{j : acc >= T[c, j]}}")
    for i, s in enumerate(spec.stages):
        lo, hi = s.accumulator_range()
        lines.append(f"  stage {i}: weights {tuple(s.weights.shape)} ({s.weight_bits} bits), stride {s.stride}, "
                     f"pad {s.pad} ({s.border} border), channels {s.channels[0]}..{s.channels[1] - 1}, accumulator "
                     f"[{lo.min()}, {hi.max()}], {s.thresholds.shape[1]} thresholds per channel in "
                     f"[{s.thresholds.min(initial=0)}, {s.thresholds.max(initial=0)}]")
    shown = {k: v for k, v in spec.info.items() if k != "qtables"}
    return lines + [f"  info {json.dumps(shown)}"]


def describe_onnx(path: Path, data: bytes) -> list[str]:
    """Inputs, outputs, opset and the ops the graph uses."""
    import onnx

    def value(v) -> str:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return f"{v.name} {onnx.TensorProto.DataType.Name(t.elem_type).lower()} {dims}"
    try:  # protobuf raises its own errors on garbage, and garbage fields break the formatting
        model = onnx.load_model_from_string(data)
        graph = model.graph
        ops = Counter(str(n.op_type) for n in graph.node)
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
        return [f"{path}: ONNX model, {len(data)} bytes, IR version {model.ir_version}, opset {opsets}",
                *(f"  input {value(v)}" for v in graph.input), *(f"  output {value(v)}" for v in graph.output),
                f"  {len(graph.node)} nodes: " + ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())),
                f"  {len(graph.initializer)} constant tensors"]
    except Exception as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0][:80]
        raise OtterliteError(f"{path}: not a readable ONNX model ({reason})") from None


def describe_manifest(path: Path) -> list[str]:
    """One line per artifact: model, format, file, input shape, checkpoint and fidelity."""
    from otterlite.export import fidelity_summary, read_manifest

    artifacts = read_manifest(path.parent)["artifacts"]
    lines = [f"{path}: otterlite export manifest, {len(artifacts)} artifacts"]
    for e in artifacts:
        fid = e.get("fidelity")
        try:
            fidelity = fidelity_summary(fid)
        except (KeyError, TypeError, ValueError):
            fidelity = "not recorded"
        lines.append(f"  {e['model']} ({e['format']}): {e['file']}, input {e['inputs'][0]['shape']} "
                     f"{e.get('layout', 'NCHW')}, sha256 {e['sha256'][:12]}, checkpoint {e['checkpoint']['source']} "
                     f"{e['checkpoint']['sha256'][:12]}")
        lines.append(f"    fidelity {fidelity}")
    return lines


def describe_tflite(path: Path, data: bytes) -> list[str]:
    from otterlite.export.tflite_info import describe, read_tflite

    lines = [f"{path}: {len(data)} bytes"] + ["  " + line for line in describe(read_tflite(data, str(path)))]
    manifest = path.with_name("manifest.json")
    entry = None
    if manifest.is_file():
        digest = hashlib.sha256(data).hexdigest()
        try:
            artifacts = json.loads(manifest.read_text()).get("artifacts", [])
        except ValueError:
            artifacts = []
        entry = next((e for e in artifacts if e.get("file") == path.name and e.get("sha256") == digest), None)
    if entry is None:
        lines.append(f"  manifest: no entry for this file in {manifest} (other export, or changed since)")
    else:
        lines.append("  manifest entry:")
        lines += ["    " + line for line in json.dumps(entry, indent=2).splitlines()]
    return lines

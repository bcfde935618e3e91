"""`otterlite info FILE`: describe a latent container, a SEA OTTER JPEG or an exported
.tflite (with its manifest entry when manifest.json sits next to it)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from otterlite.container import MAGIC, read_container
from otterlite.errors import OtterliteError
from otterlite.models.jpeg import read_codec_jpeg


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
                 f"  FRAPPE checkpoint sha256 {frame.checkpoint_sha256}",
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
    raise OtterliteError(f"{path}: unknown file kind (starts with {data[:4]!r}); info reads .otl "
                         f"containers, otterlite JPEGs and .tflite files")


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

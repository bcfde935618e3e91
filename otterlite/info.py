"""`otterlite info FILE`: describe a latent container or a SEA OTTER JPEG."""
from __future__ import annotations

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
    raise OtterliteError(f"{path}: unknown file kind (starts with {data[:4]!r}); info reads .otl "
                         f"containers and otterlite JPEGs")

"""The two commands: `otterlite firmware DIR --target T -o OUT` and `otterlite firmware run OUT IMAGE...`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.firmware_sim import codegen, host, report
from otterlite.firmware_sim.codegen import SPEC_FILE
from otterlite.firmware_sim.targets import parse_targets


def firmware(folder: str | Path, targets: str, out: str | Path, say=print) -> dict:
    """Generate OUT from the exported encoder in `folder`, build it on the host, and return
    (and write to OUT/report.json) the resource report for the targets."""
    from otterlite.runtime import load_encoder_spec

    chosen = parse_targets(targets)
    spec = load_encoder_spec(folder)
    out = codegen.generate(spec, out)
    say(f"wrote C99 sources and Makefile to {out}")
    binary = host.build_host(out)
    say(f"built {binary}")
    result = report.resource_report(spec, out, chosen, binary, say)
    report.write_report(result, out / "report.json")
    return result


def reference_latents(spec, rgb: np.ndarray) -> list[np.ndarray]:
    """The PyTorch integer reference on the edge-padded image, per group (C, H, W)."""
    import torch

    from otterlite.images import pad_to_multiple
    from otterlite.spec.torch_reference import run_spec

    padded = pad_to_multiple(rgb, spec.largest_stride)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None]
    return [z[0].numpy() for z in run_spec(spec, x)]


def run_firmware(out: str | Path, images: list[str], sanitize: bool = False, say=print) -> bool:
    """Build OUT's harness with the host compiler and check, per image, the raw latents
    against the PyTorch integer reference and the container bytes against Python's."""
    from otterlite.container import LatentFrame, write_container
    from otterlite.images import load_rgb
    from otterlite.runtime import load_encoder_spec

    out = Path(out)
    if not (out / SPEC_FILE).is_file():
        raise OtterliteError(f"{out}: no {SPEC_FILE}; generate it first with 'otterlite firmware DIR -o {out}'")
    if not images:
        raise OtterliteError("give at least one image, e.g. 'otterlite firmware run OUT photo.png'")
    spec = load_encoder_spec(out / SPEC_FILE)
    binary = host.build_host(out, sanitize)
    say(f"built {binary} ({' '.join(codegen.HOST_CFLAGS)}{' + sanitizers' if sanitize else ''})")
    exact = True
    for image in images:
        rgb = load_rgb(image)
        if min(rgb.shape[:2]) < spec.largest_stride:
            raise OtterliteError(f"{image}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than one "
                                 f"{spec.largest_stride}x{spec.largest_stride} patch")
        want = reference_latents(spec, rgb)
        got = host.encode_c(binary, spec, rgb)
        bad = sum(int((a != b).sum()) for a, b in zip(want, got))
        frame = LatentFrame(spec.source_sha256, rgb.shape[1], rgb.shape[0], [tuple(g) for g in spec.info["groups"]], want)
        same_container = host.run_harness([str(binary)], rgb, container=True) == write_container(frame)
        ok = bad == 0 and same_container
        exact &= ok
        say(f"{image} {rgb.shape[1]}x{rgb.shape[0]}: " + ("exact" if bad == 0 else f"MISMATCH in {bad} latents")
            + (", container bytes identical" if same_container else ", CONTAINER BYTES DIFFER"))
    return exact

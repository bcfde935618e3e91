"""The two commands: `otterlite firmware DIR --target T -o OUT` and `otterlite firmware run OUT IMAGE...`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite import firmware_report as report
from otterlite.files import write_json
from otterlite.firmware_sim import codegen, host
from otterlite.firmware_sim.codegen import SPEC_FILE
from otterlite.firmware_sim.toolchains import HOST_CFLAGS
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
    write_json(out / "report.json", result)
    return result


def reference_latents(spec, rgb: np.ndarray) -> list[np.ndarray]:
    """The PyTorch integer reference on the edge-padded image, per group (C, H, W)."""
    from otterlite.workflow import encode_spec

    return encode_spec(spec, rgb, "torch").latents


def run_firmware(out: str | Path, images: list[str], sanitize: bool = False, say=print) -> bool:
    """Build OUT's harness with the host compiler and check, per image, the raw latents
    against the PyTorch integer reference and the container bytes against Python's."""
    from otterlite.container import write_container
    from otterlite.images import load_rgb
    from otterlite.runtime import load_encoder_spec
    from otterlite.workflow import encode_spec

    out = Path(out)
    if not (out / SPEC_FILE).is_file():
        raise OtterliteError(f"{out}: no {SPEC_FILE}; generate it first with 'otterlite firmware DIR -o {out}'")
    if not images:
        raise OtterliteError("give at least one image, e.g. 'otterlite firmware run OUT photo.png'")
    spec = load_encoder_spec(out / SPEC_FILE)
    binary = host.build_host(out, sanitize)
    say(f"built {binary} ({' '.join(HOST_CFLAGS)}{' + sanitizers' if sanitize else ''})")
    exact = True
    for image in images:
        rgb = load_rgb(image)
        try:
            frame = encode_spec(spec, rgb, "torch")  # the reference frame; refuses images below one patch
        except OtterliteError as err:
            raise OtterliteError(f"{image}: {err}") from None
        got = host.encode_c(binary, spec, rgb)
        bad = sum(int((a != b).sum()) for a, b in zip(frame.latents, got))
        same_container = host.run_harness([str(binary)], rgb, container=True) == write_container(frame)
        ok = bad == 0 and same_container
        exact &= ok
        say(f"{image} {rgb.shape[1]}x{rgb.shape[0]}: " + ("exact" if bad == 0 else f"MISMATCH in {bad} latents")
            + (", container bytes identical" if same_container else ", CONTAINER BYTES DIFFER"))
    return exact

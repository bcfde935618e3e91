"""The two commands: `otterlite firmware DIR --target T -o OUT` and `otterlite firmware run OUT IMAGE...`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite import firmware_report as report
from otterlite.files import write_json
from otterlite.firmware_sim import codegen, host
from otterlite.firmware_sim.codegen import spec_file
from otterlite.firmware_sim.toolchains import HOST_CFLAGS
from otterlite.firmware_sim.targets import parse_targets
from otterlite.integer_spec.types import ENCODER_KINDS


def firmware(folder: str | Path, targets: str, out: str | Path, kind: str = "frappe-encoder", say=print) -> dict:
    """Generate OUT from the exported encoder of `kind` in `folder`, build it on the host, and
    return (and write to OUT/report.json) the resource report for the targets."""
    from otterlite.runtime import load_encoder_spec
    from otterlite.workflow import CODECS

    chosen = parse_targets(targets)
    other = [k for k in ENCODER_KINDS if k != kind and (Path(folder) / spec_file(k)).is_file()]
    if Path(folder).is_dir() and not (Path(folder) / spec_file(kind)).is_file() and other:
        raise OtterliteError(f"{folder} holds {spec_file(other[0])}, not {spec_file(kind)}: add --codec "
                             f"{next(name for name, k in CODECS.items() if k == other[0])}")
    spec = load_encoder_spec(folder, kind)
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
    found = [kind for kind in ENCODER_KINDS if (out / spec_file(kind)).is_file()]
    if len(found) != 1:
        raise OtterliteError(f"{out}: no {' or '.join(map(spec_file, ENCODER_KINDS))}; generate it first with "
                             f"'otterlite firmware DIR -o {out}'")
    if not images:
        raise OtterliteError("give at least one image, e.g. 'otterlite firmware run OUT photo.png'")
    spec = load_encoder_spec(out / spec_file(found[0]), found[0])
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

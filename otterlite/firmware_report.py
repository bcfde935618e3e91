"""The resource report of a generated encoder: memory measured from builds, work counted
from the spec, cycles and fps from each target's stated cost model (targets.py), the
host C throughput measured, and the TFLite Micro arena of the same model as a baseline."""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from otterlite.firmware_sim import host
from otterlite.firmware_sim.codegen import MCU_MAX_WIDTH
from otterlite.firmware_sim.toolchains import CROSS, STRICT_C99, missing
from otterlite.firmware_sim.targets import Target
from otterlite.integer_spec.types import stage_buckets

FRAME_SIZES = ((480, 640), (1080, 1920))  # (height, width)
DEVICE_SOURCES = ("otl_model.c", "otl_encoder.c", "otl_container.c")  # on the sensor; the harness is not
THRESHOLD_STEPS = 8  # binary search over 256 entries, where a stage has no bucket table


def threshold_steps(stage) -> int:
    """Steps of the C threshold count per latent: the bucket table's lookup, M candidate and K
    pile compares, or the 8-step search where the stage has no table."""
    buckets = stage_buckets(stage)
    return THRESHOLD_STEPS if buckets is None else 1 + buckets.candidates.shape[0] + buckets.values.shape[0]


def frame_work(spec, height: int, width: int) -> dict:
    """Operations per frame: MACs (C * 3 * K^2 per latent position: FRAPPE 3 C per pixel,
    WaLLoC's 57x57 kernel at stride 8 3 C * 57^2 / 64 per pixel), threshold count steps and
    pixels of the padded frame."""
    hp, wp = spec.padded_size(height, width)
    positions = [(hp // s.stride) * (wp // s.stride) for s in spec.stages]
    latents = sum(s.weights.shape[0] * n for s, n in zip(spec.stages, positions))
    macs = sum(n * s.weights.size for s, n in zip(spec.stages, positions))
    steps = sum(s.weights.shape[0] * n * threshold_steps(s) for s, n in zip(spec.stages, positions))
    return {"padded": f"{wp}x{hp}", "pixels": hp * wp, "macs": macs, "threshold_steps": steps, "latents": latents}


def cycles(target: Target, work: dict) -> float:
    return (work["macs"] * target.cycles_per_mac + work["threshold_steps"] * target.cycles_per_step
            + work["pixels"] * target.cycles_per_pixel)


def object_sizes(objects: list[Path], size_tool: str) -> dict:
    """code (.text*), constants (.rodata*), data (.data*), bss (.bss*) bytes summed over objects."""
    done = subprocess.run([size_tool, "-A", *map(str, objects)], capture_output=True, text=True, check=True)
    sizes = {"code": 0, "constants": 0, "data": 0, "bss": 0}
    kinds = {".text": "code", ".rodata": "constants", ".data": "data", ".bss": "bss"}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            for prefix, kind in kinds.items():
                if parts[0] == prefix or parts[0].startswith(prefix + "."):
                    sizes[kind] += int(parts[1])
    return sizes


def stack_bytes(folder: Path) -> int:
    """Upper bound of the encoder's stack: the sum of every library function's frame
    (gcc -fstack-usage), i.e. as if all were on the stack at once."""
    total = 0
    for su in folder.glob("*.su"):
        for line in su.read_text().splitlines():
            found = re.search(r"\t(\d+)\t", line)
            total += int(found.group(1)) if found else 0
    return total


def measure_build(folder: Path, target: Target) -> dict:
    """Compile the device sources with the target's compiler; sizes and stack, or why not."""
    import shutil

    if target.compiler is None:
        return {"measured": False, "reason": "no compiler for this CPU in Debian; figures from the spec only"}
    if not shutil.which(target.compiler):
        return {"measured": False, "reason": f"{target.compiler} not installed (apt-get install {target.package})"}
    with tempfile.TemporaryDirectory() as tmp:
        objects = []
        for source in DEVICE_SOURCES:
            obj = Path(tmp) / source.replace(".c", ".o")
            subprocess.run([target.compiler, *STRICT_C99, *target.cflags, "-fstack-usage",
                            "-c", str(folder / source), "-o", str(obj)], cwd=tmp, check=True, capture_output=True)
            objects.append(obj)
        sizes = object_sizes(objects, target.compiler.removesuffix("gcc") + "size")
        return {"measured": True, "compiler": target.compiler, **sizes, "stack": stack_bytes(Path(tmp))}


def state_memory(binary: Path, width: int) -> dict:
    done = subprocess.run([str(binary), "--memory", str(width)], capture_output=True, text=True, check=True)
    fields = done.stdout.split()
    return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields), 2)}


def tflm_arena(spec, height: int, width: int) -> int | None:
    """TFLite Micro's arena for the same model's .tflite at this (padded) size, or None."""
    import importlib.util

    if importlib.util.find_spec("tflite_micro") is None or importlib.util.find_spec("tflite") is None:
        return None
    from tflite_micro.python.tflite_micro import runtime

    from otterlite.backends import tflm_arena_bytes
    from otterlite.export import build
    from otterlite.export.tflite_info import read_tflite

    data = build(spec, "tflite", *spec.padded_size(height, width))
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=read_tflite(data, "model").activation_bytes + 2 ** 20)
    return tflm_arena_bytes(interpreter)


def host_throughput(spec, binary: Path, rounds: int = 5) -> dict:
    """Measured MPx/s of the -O2 host build at 1920x1080 on a real photo, beside the torch
    float encoder of the same codec (its embedded default) when torch is installed: `rounds`
    alternating runs of each, best of each (alternating, so both see the same machine load)."""
    from otterlite.bench import photo, steady_allocator

    rgb = photo(1080, 1920)
    c_mpx_s = lambda: host.bench_c(binary, rgb, 3)  # noqa: E731
    out = {"size": "1920x1080", "threads": 1, "rounds": rounds}
    try:
        import torch

        from otterlite.images import pad_to_multiple
        from otterlite.models.checkpoint import load_encoder_model
    except ImportError:
        out["c_mpx_s"] = max(c_mpx_s() for _ in range(rounds))
        return out
    torch.set_num_threads(1)
    steady_allocator()
    encoder = load_encoder_model(spec.kind, None, with_decoder=False)[0].sensor_encoder()
    padded = pad_to_multiple(rgb, spec.largest_stride)  # the encoded frame, as the C pads it
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None]
    c_best, torch_best = 0.0, 0.0
    with torch.no_grad():
        encoder(x)  # warm-up
        for _ in range(rounds):
            c_best = max(c_best, c_mpx_s())
            start = time.perf_counter()
            encoder(x)
            torch_best = max(torch_best, 1920 * 1080 / (time.perf_counter() - start) / 1e6)
    out.update(c_mpx_s=c_best, torch_float_mpx_s=torch_best, vs_torch_float=c_best / torch_best)
    return out


ESTIMATED_AS = {"cortex-m4": "cortex-m4", "cortex-m7": "cortex-m7", "aarch64": "rpi4"}  # cross -> TARGETS


def measured_on_cpus(spec, folder: Path, say=print) -> dict:
    """Per cross target (cross.py): link sizes, executed instructions per frame under QEMU
    (encoder functions alone, and the whole program with PPM reading and output), and
    cycles / fps from the stated CPI; or why not."""
    from otterlite.bench import photo
    from otterlite.firmware_sim import cross
    from otterlite.firmware_sim.targets import TARGETS

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        plugin = None
        for target in CROSS.values():
            reason = missing(target)
            if reason:
                out[target.name] = {"measured": False, "reason": reason}
                continue
            say(f"cross-building for {target.name} and counting instructions under QEMU")
            plugin = plugin or cross.build_plugin(Path(tmp))
            binary = cross.build_cross(folder, target)
            entry = {"measured": True, "description": target.description, "clock_mhz": target.clock_mhz,
                     "cpi": target.cpi, "cpi_basis": target.cpi_basis, **cross.section_sizes(target, binary),
                     "frames": {}}
            if target.bare_metal:
                entry["part_flash_bytes"], entry["part_ram_bytes"] = target.flash[1], target.ram[1]
            for height, width in FRAME_SIZES:
                if target.bare_metal and width > MCU_MAX_WIDTH[spec.kind]:
                    entry["frames"][f"{width}x{height}"] = {"measured": False, "reason": (
                        f"wider than the Cortex-M build's static work buffer (OTL_MCU_MAX_WIDTH "
                        f"{MCU_MAX_WIDTH[spec.kind]})")}
                    continue
                work = frame_work(spec, height, width)
                counts = cross.count_instructions(target, binary, photo(height, width), plugin)
                cyc = counts["encoder"] * target.cpi
                frame = {"instructions": counts["encoder"], "program_instructions": counts["program"],
                         "instructions_per_mac": counts["encoder"] / work["macs"], "cycles": cyc,
                         "fps": target.clock_mhz * 1e6 / cyc}
                if target.name in ESTIMATED_AS:
                    model = TARGETS[ESTIMATED_AS[target.name]]
                    frame["estimated_fps"] = model.clock_mhz * 1e6 / cycles(model, work)
                entry["frames"][f"{width}x{height}"] = frame
            out[target.name] = entry
    return out


def resource_report(spec, folder: str | Path, targets: list[Target], binary: Path, say=print) -> dict:
    folder = Path(folder).resolve()
    report = {"model": {"n_ch": spec.stages[-1].channels[1], "groups": [[s.stride, *s.channels] for s in spec.stages],
                        "checkpoint_sha256": spec.source_sha256},
              "frames": {}, "targets": {}}
    for height, width in FRAME_SIZES:
        size = f"{width}x{height}"
        say(f"counting work and memory at {size}")
        report["frames"][size] = {**frame_work(spec, height, width), **state_memory(binary, width),
                                  "tflm_arena_bytes": tflm_arena(spec, height, width)}
    for target in targets:
        say(f"building for {target.name}")
        build = measure_build(folder, target)
        entry = {"description": target.description, "clock_mhz": target.clock_mhz, "flash_bytes": target.flash_bytes,
                 "ram_bytes": target.ram_bytes, "build": build,
                 "cost_model": {"cycles_per_mac": target.cycles_per_mac, "cycles_per_step": target.cycles_per_step,
                                "cycles_per_pixel": target.cycles_per_pixel, "basis": target.cost_basis},
                 "frames": {}}
        for size, frame in report["frames"].items():
            c = cycles(target, frame)
            ram = frame["state_bytes"] + frame["row_bytes"] + frame["encoder_bytes"] + build.get("stack", 0)
            flash = build["code"] + build["constants"] + build["data"] if build["measured"] else None
            entry["frames"][size] = {"cycles": c, "fps": target.clock_mhz * 1e6 / c, "ram_bytes": ram,
                                     "fits": ram <= target.ram_bytes and (flash is None or flash <= target.flash_bytes)}
        report["targets"][target.name] = entry
    report["cpus"] = measured_on_cpus(spec, folder, say)
    say("measuring the host build")
    report["host"] = host_throughput(spec, binary)
    return report


def kb(n: int) -> str:
    return f"{n // 1024} KB" if n < 2 ** 20 else f"{n // 2 ** 20} MB"


def format_report(report: dict) -> list[str]:
    names = list(report["targets"])
    rows = [("", names)]

    def row(label, values):
        rows.append((label, [str(v) for v in values]))
    targets = [report["targets"][n] for n in names]
    row("clock MHz", [t["clock_mhz"] for t in targets])
    row("flash / RAM of the part", [f"{kb(t['flash_bytes'])} / {kb(t['ram_bytes'])}" for t in targets])
    row("code bytes (measured)", [t["build"]["code"] if t["build"]["measured"] else "-" for t in targets])
    row("constants bytes", [t["build"]["constants"] if t["build"]["measured"] else "-" for t in targets])
    row("stack bytes (upper bound)", [t["build"]["stack"] if t["build"]["measured"] else "-" for t in targets])
    row("cycles/MAC, /step, /pixel", [f"{t['cost_model']['cycles_per_mac']}, {t['cost_model']['cycles_per_step']}, "
                                      f"{t['cost_model']['cycles_per_pixel']}" for t in targets])
    for size, frame in report["frames"].items():
        row(f"{size}: RAM bytes (state+row+stack)", [t["frames"][size]["ram_bytes"] for t in targets])
        row(f"{size}: Mcycles/frame (model)", [f"{t['frames'][size]['cycles'] / 1e6:.1f}" for t in targets])
        row(f"{size}: fps (model)", [f"{t['frames'][size]['fps']:.2f}" for t in targets])
        row(f"{size}: fits the part", ["yes" if t["frames"][size]["fits"] else "NO" for t in targets])
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(n), *(len(v[i]) for _, v in rows[1:])) + 2 for i, n in enumerate(names)]
    lines = [label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols)) for label, values in rows]
    for size, f in report["frames"].items():
        arena = f["tflm_arena_bytes"]
        lines.append(f"{size} (padded {f['padded']}): {f['macs'] / 1e6:.1f} M MACs, {f['threshold_steps'] / 1e6:.2f} M "
                     f"threshold steps, encoder state {f['state_bytes']} B + row {f['row_bytes']} B; TFLM arena "
                     + (f"{arena} B ({arena / f['state_bytes']:.0f}x the streaming state)" if arena else
                        "not measured (pip install 'otterlite[tflm,tflite]')"))
    for name, t in zip(names, targets):
        if not t["build"]["measured"]:
            lines.append(f"{name}: sizes not measured: {t['build']['reason']}")
    lines += format_cpus(report["cpus"])
    h = report["host"]
    lines.append(f"host C (-O2, 1 thread, {h['size']}): {h['c_mpx_s']:.1f} MPx/s"
                 + (f", torch float {h['torch_float_mpx_s']:.1f} MPx/s = {h['vs_torch_float']:.2f}x"
                    if "vs_torch_float" in h else ""))
    return lines


def format_cpus(cpus: dict) -> list[str]:
    lines = ["measured on emulated CPUs (QEMU; cycles = encoder instructions x stated CPI):"]
    for name, c in cpus.items():
        if not c["measured"]:
            lines.append(f"  {name}: {c['reason']}")
            continue
        part = (f", links into {c['part_flash_bytes'] // 1024} KB flash / {c['part_ram_bytes'] // 1024} KB RAM"
                if "part_flash_bytes" in c else "")
        lines.append(f"  {name}: text {c['text']} B, data {c['data']} B, bss {c['bss']} B{part}; CPI {c['cpi']} "
                     f"at {c['clock_mhz']:g} MHz")
        for size, f in c["frames"].items():
            if f.get("measured") is False:
                lines.append(f"    {size}: not run: {f['reason']}")
                continue
            estimate = f", cost-model estimate {f['estimated_fps']:.2f} fps" if "estimated_fps" in f else ""
            lines.append(f"    {size}: {f['instructions'] / 1e6:.1f} M instructions ({f['instructions_per_mac']:.2f} "
                         f"per MAC; whole program {f['program_instructions'] / 1e6:.1f} M), {f['fps']:.2f} fps{estimate}")
    return lines


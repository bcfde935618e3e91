"""The generated encoder on real instruction sets: cross builds for Cortex-M (no libc,
semihosting harness, a linker script with the part's real flash and RAM, so a model that
does not fit fails at link time) and ARM Linux (static, the host harness), run under QEMU
(MPS2/MPS3 boards, qemu-user), with executed instructions counted by a QEMU plugin.

Cycles from instructions use a stated per-CPU model (cycles per instruction, CPI); QEMU
is not cycle-accurate, so instructions are the measured figure."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from otterlite.errors import OtterliteError
from otterlite.debian import apt_install
from otterlite.firmware_sim.host import RUN_TIMEOUT_S, libjpeg_missing, run_harness
from otterlite.firmware_sim.toolchains import CROSS, DEBIAN_PACKAGES, CrossTarget, compile_command, missing

FAULT_EXIT = 70  # otl_startup.c exits with this on any fault


def encoder_functions() -> set[str]:
    """Names of the functions defined in otl_encoder.c: the range the plugin counts in."""
    source = (Path(__file__).parent / "csrc" / "otl_encoder.c").read_text()
    return set(re.findall(r"\b(\w+)\((?:[^()]|\([^()]*\))*\)\s*\{", source)) - {"if", "for", "while", "switch"}


def build_cross(folder: str | Path, target: CrossTarget) -> Path:
    """Cross-compile the generated sources in `folder` for `target`; a model too large for
    the part becomes a one-line error with the sizes."""
    folder = Path(folder)
    reason = missing(target)
    if reason:
        raise OtterliteError(f"cannot build for {target.name}: {reason}")
    done = subprocess.run(compile_command(target, target.binary_name), cwd=folder, capture_output=True, text=True)
    if done.returncode:
        overflow = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", done.stderr)
        if overflow:
            sizes = {"FLASH": target.flash[1], "RAM": target.ram[1]}
            raise OtterliteError(f"the model does not fit {target.description}: " + "; ".join(
                f"{region} overflowed by {int(n)} bytes (the part has {sizes[region]})" for region, n in overflow))
        raise OtterliteError(f"building for {target.name} failed:\n{done.stderr.strip()[:2000]}")
    return (folder / target.binary_name).resolve()


def emulator_command(target: CrossTarget, binary: Path, args: list[str], plugin: list[str] = ()) -> list[str]:
    """The QEMU command running `binary` with harness arguments `args`."""
    if target.bare_metal:
        semihosting = ",".join(["enable=on,target=native", "arg=otl", *(f"arg={a}" for a in args)])
        return [*target.emulator, *plugin, "-display", "none", "-serial", "none", "-monitor", "none",
                "-semihosting-config", semihosting, "-kernel", str(binary)]
    return [*target.emulator, *plugin, str(binary), *args]


def run_cross(target: CrossTarget, binary: Path, rgb, timeout: float = RUN_TIMEOUT_S) -> bytes:
    """Raw latents of an (H, W, 3) image from the cross build under QEMU."""
    try:
        return run_harness(lambda args: emulator_command(target, binary, args), rgb, timeout=timeout)
    except OtterliteError as err:
        if f"(exit {FAULT_EXIT})" in str(err):
            raise OtterliteError(f"{target.name}: the program faulted under QEMU (exit {FAULT_EXIT}): {err}") from None
        if "(exit 134)" in str(err) or "(exit -6)" in str(err):
            raise OtterliteError(f"{target.name}: QEMU aborted (CPU lockup or unhandled fault): {err}") from None
        raise


def symbol_range(target: CrossTarget, binary: Path) -> tuple[int, int]:
    """[lo, hi) covering exactly the encoder's functions (nm -S), refusing if another
    function lies inside the range."""
    nm = target.compiler.removesuffix("gcc") + "nm"
    done = subprocess.run([nm, "-S", "--defined-only", str(binary)], capture_output=True, text=True, check=True)
    ours, others, encoder = [], [], encoder_functions()
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            start, size = int(parts[0], 16) & ~1, int(parts[1], 16)  # Thumb symbols have bit 0 set
            (ours if parts[3].split(".")[0] in encoder else others).append((start, start + size))
    if not ours:
        raise OtterliteError(f"{binary.name}: no encoder symbols found by {nm}")
    lo, hi = min(s for s, _ in ours), max(e for _, e in ours)
    if any(lo < s < hi for s, _ in others):
        raise OtterliteError(f"{binary.name}: the encoder's functions are not contiguous; cannot count them apart")
    return lo, hi


def build_plugin(folder: Path) -> Path:
    """Compile the instruction-counting QEMU plugin with the host compiler."""
    from otterlite.firmware_sim.host import compiler_missing, find_compiler

    reason = compiler_missing()
    if reason:
        raise OtterliteError(reason)
    source = Path(__file__).parent / "qemu_plugin" / "otl_icount.c"
    plugin = folder / "otl_icount.so"
    subprocess.run([find_compiler(), "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", str(plugin),
                    str(source)], check=True, capture_output=True)
    return plugin


def count_instructions(target: CrossTarget, binary: Path, rgb, plugin: Path) -> dict:
    """Executed instructions of one frame under QEMU: the whole program and the encoder alone."""
    lo, hi = symbol_range(target, binary)
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "counts.txt"
        plugin_args = ["-plugin", f"{plugin},out={counts},lo={lo:#x},hi={hi:#x}"]
        run_harness(lambda args: emulator_command(target, binary, args, plugin_args), rgb)
        fields = counts.read_text().split()
    return {"program": int(fields[1]), "encoder": int(fields[3])}


def section_sizes(target: CrossTarget, binary: Path) -> dict:
    """text / data / bss of the linked build (`size`, Berkeley format)."""
    size = target.compiler.removesuffix("gcc") + "size"
    done = subprocess.run([size, str(binary)], capture_output=True, text=True, check=True)
    text, data, bss = (int(v) for v in done.stdout.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def setup_toolchains(say=print) -> None:
    """Install the Debian cross compilers, QEMU and libjpeg's headers (apt-get; through sudo
    when not root)."""
    absent = [t.name for t in CROSS.values() if missing(t)] + (["the C consumer"] if libjpeg_missing() else [])
    if not absent:
        say("cross compilers, QEMU and libjpeg already installed")
        return
    say(f"installing {' '.join(DEBIAN_PACKAGES)} (for {', '.join(absent)})")
    apt_install(list(DEBIAN_PACKAGES))
    still = [t.name for t in CROSS.values() if missing(t)] + (["the C consumer"] if libjpeg_missing() else [])
    if still:
        raise OtterliteError(f"installed, but still missing for {', '.join(still)}")
    say("cross compilers, QEMU and libjpeg installed")

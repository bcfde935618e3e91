"""The generated encoder on real instruction sets: cross builds for Cortex-M (no libc,
semihosting harness, a linker script with the part's real flash and RAM, so a model that
does not fit fails at link time) and ARM Linux (static, the host harness), run under QEMU
(MPS2/MPS3 boards, qemu-user), with executed instructions counted by a QEMU plugin.

Cycles from instructions use a stated per-CPU model (cycles per instruction, CPI); QEMU
is not cycle-accurate, so instructions are the measured figure."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from otterlite.errors import OtterliteError
from otterlite.firmware_sim.codegen import LIBRARY, STRICT_C99
from otterlite.firmware_sim.host import RUN_TIMEOUT_S, run_harness

KB = 1024
FAULT_EXIT = 70  # otl_startup.c exits with this on any fault
MCU_SOURCES = (*LIBRARY, "otl_semihost.c", "otl_startup.c")
LINUX_SOURCES = (*LIBRARY, "otl_host.c")


def encoder_functions() -> set[str]:
    """Names of the functions defined in otl_encoder.c: the range the plugin counts in."""
    source = (Path(__file__).parent / "csrc" / "otl_encoder.c").read_text()
    return set(re.findall(r"\b(\w+)\((?:[^()]|\([^()]*\))*\)\s*\{", source)) - {"if", "for", "while", "switch"}


@dataclass(frozen=True)
class CrossTarget:
    name: str  # verify backend: "qemu-" + name; build: otl_<name>.elf (Cortex-M) or otl_<name>
    description: str
    compiler: str
    cflags: tuple[str, ...]
    packages: str  # Debian packages for compiler and emulator
    emulator: tuple[str, ...]  # QEMU command prefix
    clock_mhz: float  # of the stated part, for fps
    cpi: float  # stated cycles per instruction
    cpi_basis: str
    flash: tuple[int, int] | None = None  # Cortex-M: (origin, bytes of the real part)
    ram: tuple[int, int] | None = None
    stack_bytes: int = 4 * KB

    @property
    def bare_metal(self) -> bool:
        return self.flash is not None

    @property
    def binary_name(self) -> str:
        return f"otl_{self.name}.elf" if self.bare_metal else f"otl_{self.name}"


def cortex_m(cpu: str, board: str, part: str, clock_mhz: float, cpi: float, cpi_basis: str,
             flash: tuple[int, int], ram: tuple[int, int]) -> CrossTarget:
    """A Cortex-M part: arm-none-eabi-gcc without libc, run on QEMU's MPS2/MPS3 `board`."""
    return CrossTarget(cpu, f"{part} (QEMU {board})", "arm-none-eabi-gcc",
                       ("-O2", "-mthumb", "-ffreestanding", "-nostdlib", "-ffunction-sections", "-fdata-sections",
                        f"-mcpu={cpu}"), "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm",
                       ("qemu-system-arm", "-M", board, "-cpu", cpu), clock_mhz, cpi, cpi_basis, flash, ram)


CROSS = {t.name: t for t in (
    cortex_m("cortex-m4", "mps2-an386", "Cortex-M4 168 MHz, 512 KB flash / 128 KB RAM", 168, 1.25,
             "3-stage pipeline: most instructions 1 cycle, loads 2 (1 when back to back), taken branches 2-4",
             (0x00000000, 512 * KB), (0x20000000, 128 * KB)),
    cortex_m("cortex-m7", "mps2-an500", "Cortex-M7 480 MHz, 2 MB flash / 512 KB RAM", 480, 0.75,
             "dual issue, 6-stage, branch prediction; TCM-resident data", (0x00000000, 2048 * KB), (0x20000000, 512 * KB)),
    cortex_m("cortex-m33", "mps2-an505", "Cortex-M33 160 MHz, 512 KB flash / 256 KB RAM", 160, 1.2,
             "3-stage pipeline like the M4, limited dual issue of 16-bit pairs",
             (0x10000000, 512 * KB), (0x38000000, 256 * KB)),
    cortex_m("cortex-m55", "mps3-an547", "Cortex-M55 400 MHz, 512 KB ITCM / 512 KB DTCM", 400, 1.0,
             "4-stage, one instruction per cycle; MVE beats counted as instructions",
             (0x10000000, 512 * KB), (0x30000000, 512 * KB)),
    CrossTarget("aarch64", "Raspberry Pi 4 / 64-bit phones (Cortex-A72 1.5 GHz, 1 core)", "aarch64-linux-gnu-gcc",
                ("-O2", "-static", "-mcpu=cortex-a72"), "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user",
                ("qemu-aarch64", "-cpu", "cortex-a72"), 1500, 0.6, "3-wide out-of-order; NEON dot products"),
    CrossTarget("armv7", "32-bit Pi OS (Raspberry Pi 2, Cortex-A7 900 MHz, 1 core)", "arm-linux-gnueabihf-gcc",
                ("-O2", "-static"), "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user",
                ("qemu-arm", "-cpu", "cortex-a7"), 900, 1.1, "in-order, partial dual issue"),
)}
DEBIAN_PACKAGES = sorted({p for t in CROSS.values() for p in t.packages.split()})

LINKER_SCRIPT = """\
/* {description}: the part's real sizes, so a model that does not fit fails to link. */
MEMORY
{{
    FLASH (rx) : ORIGIN = {flash_origin:#010x}, LENGTH = {flash_bytes}
    RAM (rwx)  : ORIGIN = {ram_origin:#010x}, LENGTH = {ram_bytes}
}}
ENTRY(otl_reset)
SECTIONS
{{
    .text : {{ KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); }} > FLASH
    .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
    .data : {{ _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
    _sidata = LOADADDR(.data);
    .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
    .stack (NOLOAD) : {{ . = ALIGN(8); . += {stack_bytes}; _estack = .; }} > RAM
}}
"""


def linker_script(target: CrossTarget) -> str:
    return LINKER_SCRIPT.format(description=target.description, flash_origin=target.flash[0],
                                flash_bytes=target.flash[1], ram_origin=target.ram[0], ram_bytes=target.ram[1],
                                stack_bytes=target.stack_bytes)


def missing(target: CrossTarget) -> str | None:
    absent = [tool for tool in (target.compiler, target.emulator[0]) if not shutil.which(tool)]
    if absent:
        return (f"{' and '.join(absent)} not installed (otterlite setup toolchains, or apt-get install "
                f"{target.packages})")
    return None


def compile_command(target: CrossTarget, output: str) -> list[str]:
    """The compile-and-link command, run inside the generated folder."""
    command = [target.compiler, *STRICT_C99, *target.cflags, "-o", output]
    if target.bare_metal:  # libc: memset, memcpy only
        return [*command, "-Wl,--gc-sections", f"-T{target.name}.ld", *MCU_SOURCES, "-lc", "-lgcc"]
    return [*command, *LINUX_SOURCES]


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


def apt_install(packages: list[str]) -> None:
    """apt-get update + install (through sudo when not root), one error line on failure."""
    import os

    if not shutil.which("apt-get"):
        raise OtterliteError(f"apt-get not found; install these Debian packages by other means: {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and not shutil.which("sudo"):
        raise OtterliteError(f"not root and no sudo; as root run: apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        done = subprocess.run([*sudo, *command], env=env, capture_output=True, text=True)
        if done.returncode:
            raise OtterliteError(f"{' '.join(command)} failed: {done.stderr.strip()[-800:]}")


def setup_toolchains(say=print) -> None:
    """Install the Debian cross compilers and QEMU (apt-get; through sudo when not root)."""
    absent = [t.name for t in CROSS.values() if missing(t)]
    if not absent:
        say("cross compilers and QEMU already installed")
        return
    say(f"installing {' '.join(DEBIAN_PACKAGES)} (for {', '.join(absent)})")
    apt_install(list(DEBIAN_PACKAGES))
    still = [t.name for t in CROSS.values() if missing(t)]
    if still:
        raise OtterliteError(f"installed, but still missing for {', '.join(still)}")
    say("cross compilers and QEMU installed")

"""The build targets, below everything that builds: compiler flags, the library's sources,
and the cross targets (compiler, flags, QEMU command, the part's flash and RAM, stated CPI)
with their compile commands and linker scripts."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

LIBRARY = ("otl_model.c", "otl_encoder.c", "otl_container.c", "otl_harness.c")
STRICT_C99 = ("-std=c99", "-Wall", "-Wextra", "-Werror")  # every build: host, cross, report
HOST_CFLAGS = ("-O2", *STRICT_C99)
SANITIZE_CFLAGS = ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
KB = 1024
MCU_SOURCES = (*LIBRARY, "otl_semihost.c", "otl_startup.c")
LINUX_SOURCES = (*LIBRARY, "otl_host.c")


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
HOST_PACKAGES = "libjpeg-dev"  # the C consumer's decode (firmware_sim/csrc/otl_jpeg.c)
DEBIAN_PACKAGES = sorted({p for t in CROSS.values() for p in t.packages.split()} | set(HOST_PACKAGES.split()))

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

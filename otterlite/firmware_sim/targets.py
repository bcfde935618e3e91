"""Target parts for the resource report: clock, memory, compiler and a stated cost model.

The cost model is an estimate for the generated plain C, per operation of the encoder:
    cycles/frame = MACs * cycles_per_mac + threshold steps * cycles_per_step
                   + pixels * cycles_per_pixel
MACs = sum over groups of (latent positions) * C * 3 * K^2 (FRAPPE: padded pixels * 3 C);
threshold steps = per latent 1 + M + K of the bucket table (a lookup, M candidate and K pile
compares; typically 3), 8 where a stage has none (binary search over 256 entries);
cycles_per_pixel covers the row readout and loop overhead.
"""
from __future__ import annotations

from dataclasses import dataclass

from otterlite.errors import OtterliteError

KB = 1024


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    clock_mhz: float
    flash_bytes: int  # program storage of the part
    ram_bytes: int  # RAM available to the encoder
    cycles_per_mac: float
    cycles_per_step: float
    cycles_per_pixel: float
    cost_basis: str  # why these cycle figures
    compiler: str | None  # cross compiler for measured code size (None: none in Debian)
    cflags: tuple[str, ...] = ()
    package: str = ""  # Debian package holding the compiler


ARM_EABI = ("-O2", "-mthumb", "-ffreestanding", "-ffunction-sections", "-fdata-sections")
TARGETS = {t.name: t for t in (
    Target("cortex-m4", "Cortex-M4F 168 MHz, 512 KB flash / 128 KB RAM part", 168, 512 * KB, 128 * KB, 3.0, 4.0, 4.0,
           "single issue; LDRB + LDRSB + MLA per MAC (no SIMD from plain C)",
           "arm-none-eabi-gcc", (*ARM_EABI, "-mcpu=cortex-m4"), "gcc-arm-none-eabi"),
    Target("cortex-m7", "Cortex-M7 480 MHz, 2 MB flash / 512 KB RAM part", 480, 2048 * KB, 512 * KB, 1.5, 2.0, 2.0,
           "dual issue: a load pairs with the MLA", "arm-none-eabi-gcc", (*ARM_EABI, "-mcpu=cortex-m7"),
           "gcc-arm-none-eabi"),
    Target("esp32-s3", "ESP32-S3 (Xtensa LX7) 240 MHz, 8 MB flash / 512 KB SRAM", 240, 8192 * KB, 512 * KB,
           3.0, 4.0, 4.0, "single issue; two byte loads + MULL + ADD per MAC, no PIE SIMD from plain C", None),
    Target("rpi-zero2", "Raspberry Pi Zero 2 W (Cortex-A53 1 GHz), 1 core used", 1000, 512 * KB * KB,
           512 * KB * KB, 0.5, 2.0, 2.0, "in-order; -O2 vectorizes the 16-wide dot products with NEON",
           "aarch64-linux-gnu-gcc", ("-O2", "-mcpu=cortex-a53"), "gcc-aarch64-linux-gnu"),
    Target("rpi4", "Raspberry Pi 4 (Cortex-A72 1.5 GHz), 1 core used", 1500, 1024 * KB * KB, 1024 * KB * KB,
           0.25, 1.0, 1.0, "out of order, 2 NEON pipes on the 16-wide dot products",
           "aarch64-linux-gnu-gcc", ("-O2", "-mcpu=cortex-a72"), "gcc-aarch64-linux-gnu"),
)}


def parse_targets(text: str) -> list[Target]:
    """'cortex-m4', 'cortex-m4,rpi4' or 'all' -> targets."""
    names = list(TARGETS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise OtterliteError(f"unknown target {', '.join(unknown) or text!r}; choose from {', '.join(TARGETS)} "
                             f"(comma-separated) or all")
    return [TARGETS[n] for n in names]

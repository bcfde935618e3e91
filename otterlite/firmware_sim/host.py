"""Build the generated C with the host compiler and run its harness (`otl_host`).

Harness contract: `otl_host IN.ppm OUT.bin` writes the raw int8 latents, scale group by
scale group, each in C, H, W order (H, W of the frame padded to the largest patch);
`otl_host --container IN.ppm OUT.otl` writes the .otl container bytes."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.firmware_sim.toolchains import HOST_CFLAGS, LIBRARY, SANITIZE_CFLAGS

RUN_TIMEOUT_S = 300
LIBJPEG_FIX = "apt-get install libjpeg-dev (Debian: libjpeg62-turbo-dev), or otterlite setup toolchains"


def find_compiler() -> str | None:
    """$CC if set, else cc or gcc on PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def compiler_missing() -> str | None:
    if find_compiler():
        return None
    return ("no C compiler found ($CC, cc or gcc); install one (Debian: apt-get install gcc) "
            "or set CC=/path/to/compiler")


def libjpeg_missing() -> str | None:
    """Why the C consumer (csrc/otl_jpeg.c) cannot link libjpeg here, or None."""
    reason = compiler_missing()
    if reason:
        return reason
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("#include <stdio.h>\n#include <jpeglib.h>\nint main(void) {\n"
                         "    struct jpeg_decompress_struct c; struct jpeg_error_mgr e;\n"
                         "    c.err = jpeg_std_error(&e); jpeg_create_decompress(&c); return 0;\n}\n")
        done = subprocess.run([find_compiler(), str(probe), "-o", str(Path(tmp) / "probe"), "-ljpeg"],
                              capture_output=True, text=True)
    return None if done.returncode == 0 else f"libjpeg's headers or library not found: {LIBJPEG_FIX}"


def build_host(folder: str | Path, sanitize: bool = False, defines: tuple[str, ...] = ()) -> Path:
    """Compile `folder`'s sources into folder/otl_host (or otl_host_sanitize) with the flags
    the Makefile uses, plus -D`defines` (e.g. OTL_PORTABLE: the plain C kernel); compiler
    errors are raised in full."""
    folder = Path(folder)
    reason = compiler_missing()
    if reason:
        raise OtterliteError(reason)
    if not (folder / "otl_model.c").is_file():
        raise OtterliteError(f"{folder}: no generated sources; run 'otterlite firmware DIR -o {folder}' first")
    binary = folder / ("otl_host_sanitize" if sanitize else "otl_host")
    binary = binary.with_name("_".join([binary.name, *defines]).lower())
    flags = [*HOST_CFLAGS, *(SANITIZE_CFLAGS if sanitize else ()), *(f"-D{d}" for d in defines)]
    done = subprocess.run([find_compiler(), *flags, "-o", binary.name, *LIBRARY, "otl_host.c"], cwd=folder,
                          capture_output=True, text=True)
    if done.returncode:
        raise OtterliteError(f"compiling {folder} failed:\n{done.stderr.strip()}")
    return binary.resolve()


def build_library(folder: str | Path, trace: bool = False) -> Path:
    """Compile `folder`'s encoder library into folder/libotl.so, for in-process use; with
    trace, folder/libotl_trace.so built with -DOTL_TRACE (the accumulator hook, LibraryEncoder.trace)."""
    folder = Path(folder)
    reason = compiler_missing()
    if reason:
        raise OtterliteError(reason)
    name = "libotl_trace.so" if trace else "libotl.so"
    done = subprocess.run([find_compiler(), *HOST_CFLAGS, *(["-DOTL_TRACE"] if trace else []), "-shared", "-fPIC",
                           "-o", name, *LIBRARY], cwd=folder, capture_output=True, text=True)
    if done.returncode:
        raise OtterliteError(f"compiling {folder} failed:\n{done.stderr.strip()}")
    return (folder / name).resolve()


class LibraryEncoder:
    """The compiled encoder called in process (ctypes): pixels straight from numpy memory, raw
    latents into a numpy buffer, through otl_encode_raw."""

    def __init__(self, library: str | Path, spec):
        import ctypes

        self.spec, self.layouts = spec, {}
        self.lib = ctypes.CDLL(str(library))
        size_t, c_int, ptr = ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p
        self.lib.otl_work_bytes.restype, self.lib.otl_work_bytes.argtypes = size_t, (c_int, c_int, c_int)
        self.lib.otl_latent_bytes.restype, self.lib.otl_latent_bytes.argtypes = size_t, (c_int, c_int)
        self.lib.otl_encode_raw.restype = ctypes.c_char_p
        self.lib.otl_encode_raw.argtypes = (ptr, c_int, c_int, c_int, ptr, size_t, ptr, size_t)

    def encode(self, pixels: np.ndarray, planar: bool = False) -> list[np.ndarray]:
        """(H, W, 3) uint8, or (3, H, W) with planar -> per group (C, H, W) int8 latents of the
        edge-padded frame (views of one output buffer)."""
        pixels = np.ascontiguousarray(pixels, np.uint8)
        h, w = pixels.shape[1:] if planar else pixels.shape[:2]
        out_bytes, work_bytes, views = self.frame_layout(h, w)
        out = np.empty(out_bytes, np.int8)
        work = np.empty(work_bytes, np.uint8)  # numpy aligns to 16 bytes
        error = self.lib.otl_encode_raw(pixels.ctypes.data, w, h, int(planar), out.ctypes.data, out_bytes,
                                        work.ctypes.data, work_bytes)
        if error:
            raise OtterliteError(f"C encoder: {error.decode()}")
        return [out[a:b].reshape(shape) for a, b, shape in views]

    def frame_layout(self, height: int, width: int) -> tuple[int, int, list[tuple[int, int, tuple]]]:
        """(output bytes, work bytes, per group (start, stop, (C, h, w)) in the output) of an
        H x W frame, worked out once per size: at 1080p the per-call numpy and ctypes calls
        that computed them cost ~0.2 ms with cold caches (13% of the frame's time)."""
        if (height, width) in self.layouts:
            return self.layouts[height, width]
        shapes = latent_shapes(self.spec, height, width)
        stops = np.cumsum([int(np.prod(s)) for s in shapes]).tolist()
        out_bytes = self.lib.otl_latent_bytes(width, height)
        if out_bytes != stops[-1]:
            raise OtterliteError(f"C encoder: {out_bytes} latent bytes, expected {stops[-1]} for groups {shapes}")
        layout = out_bytes, self.lib.otl_work_bytes(width, height, 0), list(zip([0, *stops], stops, shapes))
        self.layouts[height, width] = layout
        return layout

    def trace(self, pixels: np.ndarray, planar: bool = False) -> list[np.ndarray]:
        """Per group the (C, h, w) int32 accumulators the C computed before counting thresholds
        (a library from build_library(..., trace=True))."""
        import ctypes

        h, w = pixels.shape[1:] if planar else pixels.shape[:2]
        accs = [np.zeros(s, np.int32) for s in latent_shapes(self.spec, h, w)]
        i32 = ctypes.POINTER(ctypes.c_int32)

        def keep(group, row, acc, channels, cols):
            accs[group][:, row] = np.ctypeslib.as_array(acc, (cols, channels)).T
        hook = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, i32, ctypes.c_int, ctypes.c_int)(keep)
        slot = ctypes.c_void_p.in_dll(self.lib, "otl_trace")
        slot.value = ctypes.cast(hook, ctypes.c_void_p).value
        try:
            self.encode(pixels, planar)
        finally:
            slot.value = None
        return accs


def write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(rgb, np.uint8).tobytes())


def latent_shapes(spec, height: int, width: int) -> list[tuple[int, int, int]]:
    hp, wp = spec.padded_size(height, width)
    return [(s.weights.shape[0], hp // s.stride, wp // s.stride) for s in spec.stages]


def split_latents(raw: bytes | np.ndarray, shapes: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """The raw harness output -> per group (C, H, W) int8 views of it."""
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.frombuffer(raw, np.int8)
    if flat.size != sum(sizes):
        raise OtterliteError(f"harness wrote {flat.size} bytes, expected {sum(sizes)} for groups {shapes}")
    starts = np.cumsum([0, *sizes])
    return [flat[at:at + size].reshape(shape) for at, size, shape in zip(starts, sizes, shapes)]


def run_harness(command, rgb: np.ndarray, container: bool = False, timeout: float = RUN_TIMEOUT_S) -> bytes:
    """Run a harness in a scratch folder on an (H, W, 3) uint8 image; returns the output
    bytes. command: a list the arguments ([--container] in.ppm out.bin) are appended to, or
    a function of the arguments returning the full command (e.g. under an emulator)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_ppm(Path(tmp) / "in.ppm", rgb)
        harness_args = [*(["--container"] if container else []), "in.ppm", "out.bin"]
        args = command(harness_args) if callable(command) else [*command, *harness_args]
        program = " ".join(Path(a).name for a in args if a == args[0] or a.startswith("/"))  # e.g. qemu + ELF
        try:
            done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OtterliteError(f"{program}: no exit after {timeout:g} s (hung?); stopped") from None
        out = Path(tmp) / "out.bin"
        if done.returncode or not out.is_file():
            raise OtterliteError(f"{program} failed (exit {done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[:500]}")
        return out.read_bytes()


def encode_c(binary: str | Path, spec, rgb: np.ndarray) -> list[np.ndarray]:
    """Latents of an (H, W, 3) uint8 image from a built harness, per group (C, H, W) int8."""
    raw = run_harness([str(binary)], rgb)
    return split_latents(raw, latent_shapes(spec, *rgb.shape[:2]))


def bench_c(binary: str | Path, rgb: np.ndarray, frames: int = 5) -> float:
    """MPx/s of the compiled encoder on this image (rows from memory, one thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_ppm(Path(tmp) / "in.ppm", rgb)
        done = subprocess.run([str(binary), "--bench", str(frames), "in.ppm"], cwd=tmp,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode:
        raise OtterliteError(f"{binary} --bench failed: {done.stderr.strip()}")
    fields = done.stdout.split()
    return float(fields[fields.index("mpx_s") + 1])

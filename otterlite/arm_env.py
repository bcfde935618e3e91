"""The ARM builds of the runtimes users run on Pis and phones, under qemu-user on this host:
an aarch64 user space (Debian bookworm's arm64 python3.11, unpacked by mmdebstrap without
running scripts) plus the aarch64 wheels of numpy, Pillow, onnxruntime and ai-edge-litert
(the host's versions where installed), and an armhf one (32-bit Pi OS) with Debian's own
numpy and Pillow (PyPI has no armv7 wheels of them or of the runtimes).
`otterlite setup arm-runtimes` creates both.

Location: $OTTERLITE_ARM_RUNTIMES, else ~/.cache/otterlite/arm-runtimes, holding
    root-arm64/, root-armhf/   the Debian files;  site/  the aarch64 wheels (pip --target)
    cpus/<name>/   one root per emulated CPU: symlinks into root/ plus a /proc/cpuinfo and
                   /sys/devices/system/cpu true to that CPU (onnxruntime's CPU probe reads
                   them, and crashes on the host's x86 ones: ../shared/design/ARM.md)
    ready.json     versions and sizes, written last
One worker per CPU (arm_worker.py under `qemu-aarch64 -cpu NAME`) serves every backend of
that CPU, so the runtimes are imported once.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.tflite_runtime_worker import read_arrays, write_arrays

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = {  # per Debian architecture: what mmdebstrap unpacks
    "arm64": "python3.11-minimal,libpython3.11-stdlib,libstdc++6,libgomp1,zlib1g,libexpat1,libffi8,libssl3,"
             "libbz2-1.0,liblzma5,libsqlite3-0,libuuid1,libgcc-s1",
    "armhf": "python3.11-minimal,libpython3.11-stdlib,python3-numpy,python3-pil,libstdc++6,zlib1g,libexpat1,"
             "libffi8,libgcc-s1",  # no armv7 wheels of numpy, onnxruntime or LiteRT: Debian's numpy and Pillow
}
WHEELS = ("numpy", "pillow", "onnxruntime", "ai-edge-litert")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")


@dataclass(frozen=True)
class ArmCpu:
    qemu_cpu: str  # qemu -cpu
    board: str  # what it stands for
    midr: tuple[int, int, int, int]  # implementer, variant, part, revision (the fake /proc/cpuinfo)
    arch: str = "arm64"  # Debian architecture: arm64 (numpy, onnxruntime, LiteRT) or armhf (numpy only)

    @property
    def qemu(self) -> str:
        return "qemu-aarch64" if self.arch == "arm64" else "qemu-arm"

    @property
    def runtimes(self) -> tuple[str, ...]:
        return ("ort", "litert", "numpy") if self.arch == "arm64" else ("numpy",)


CPUS = {
    "a53": ArmCpu("cortex-a53", "Pi 3, Pi Zero 2", (0x41, 0x0, 0xd03, 4)),
    "a72": ArmCpu("cortex-a72", "Pi 4", (0x41, 0x0, 0xd08, 3)),
    "a76": ArmCpu("cortex-a76", "Pi 5, phones: dot product", (0x41, 0x4, 0xd0b, 1)),
    "max": ArmCpu("max", "QEMU max: SVE, i8mm, fp16, bf16", (0x00, 0x0, 0x051, 0)),  # QEMU's own MIDR for max
    "a7": ArmCpu("cortex-a7", "32-bit Pi OS (armhf)", (0x41, 0x0, 0xc07, 5), "armhf"),
}
REQUEST_TIMEOUT_S = 1800
WORKER = Path(__file__).with_name("arm_worker.py")


def env_dir() -> Path:
    return Path(os.environ.get("OTTERLITE_ARM_RUNTIMES") or Path.home() / ".cache" / "otterlite" / "arm-runtimes")


def qemu_missing() -> str | None:
    absent = sorted({c.qemu for c in CPUS.values() if not shutil.which(c.qemu)})
    return f"{' and '.join(absent)} not installed (otterlite setup toolchains)" if absent else None


def missing() -> str | None:
    reason = qemu_missing()
    if reason:
        return reason
    if not (env_dir() / "ready.json").is_file():
        return f"ARM runtimes not installed at {env_dir()} (otterlite setup arm-runtimes)"
    return None


def run_step(command: list[str], what: str, fix: str, env: dict | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OtterliteError(f"{what} failed: {last[0][:300]} ({fix})")
    return done.stdout


def cpuinfo(cpu: str, features: list[str]) -> str:
    """A /proc/cpuinfo for 2 cores of `cpu` with the hwcaps the emulated CPU reports."""
    implementer, variant, part, revision = CPUS[cpu].midr
    block = (f"BogoMIPS\t: 100.00\nFeatures\t: {' '.join(features)}\nCPU implementer\t: 0x{implementer:02x}\n"
             f"CPU architecture: {8 if CPUS[cpu].arch == 'arm64' else 7}\nCPU variant\t: 0x{variant:x}\n"
             f"CPU part\t: 0x{part:03x}\nCPU revision\t: {revision}\n")
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(2))


def python_command(root: Path, cpu: str) -> list[str]:
    return [CPUS[cpu].qemu, "-L", str(root), "-cpu", CPUS[cpu].qemu_cpu, str(root / "usr" / "bin" / "python3.11")]


def otterlite_path(folder: Path) -> Path:
    """A folder holding only a link to this otterlite package (one per checkout), so the guest
    imports otterlite and nothing else of the host's (x86) site-packages."""
    package = Path(__file__).resolve().parent
    link = folder / "pkg" / hashlib.sha256(str(package).encode()).hexdigest()[:12] / "otterlite"  # one per checkout
    if not (link.is_symlink() and link.resolve() == package):
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".otterlite.{os.getpid()}.{threading.get_ident()}")
        tmp.symlink_to(package)
        tmp.replace(link)
    return link.parent


def worker_env(folder: Path, cpu: str) -> dict:
    """The guest's sys.path: the wheels (arm64) or Debian's packages (armhf), and otterlite."""
    packages = folder / "site" if CPUS[cpu].arch == "arm64" else "/usr/lib/python3/dist-packages"
    return {"PYTHONPATH": f"{packages}:{otterlite_path(folder)}", "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(folder)}


def cpu_root(folder: Path, cpu: str, features: list[str]) -> Path:
    """cpus/<cpu>: symlinks to its architecture's root's top-level entries, and its own proc/ and sys/."""
    target = folder / "cpus" / cpu
    target.mkdir(parents=True)
    root = f"root-{CPUS[cpu].arch}"
    for entry in (folder / root).iterdir():
        if entry.name not in ("proc", "sys"):
            (target / entry.name).symlink_to(Path("..", "..", root, entry.name))
    (target / "proc").mkdir()
    (target / "proc" / "cpuinfo").write_text(cpuinfo(cpu, features))
    cpus = target / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0-1\n")
    return target


def unpack_debian(folder: Path, arch: str) -> None:
    """mmdebstrap --variant=extract: the packages' files, no scripts run; then the BLAS / LAPACK
    links that Debian's alternatives would have made (numpy needs libblas.so.3)."""
    root = folder / f"root-{arch}"
    run_step(["mmdebstrap", "--quiet", f"--architectures={arch}", "--variant=extract",
              f"--include={DEBIAN_PACKAGES[arch]}", DEBIAN_SUITE, str(root)], f"mmdebstrap ({arch})",
             "needs the Debian mirror and root")
    for lib in root.glob("usr/lib/*-linux-gnu*/*/lib*.so.3"):
        if lib.parent.name in ("blas", "lapack") and not (lib.parent.parent / lib.name).exists():
            (lib.parent.parent / lib.name).symlink_to(Path(lib.parent.name, lib.name))


def setup(say=print) -> Path:
    """Create the environment (about 400 MB, a minute); on failure nothing is left behind.
    Idempotent: an existing complete one is kept."""
    target = env_dir()
    if missing() is None:
        say(f"ARM runtimes already at {target}")
        return target
    reason = qemu_missing()
    if reason:
        raise OtterliteError(reason)
    if not shutil.which("mmdebstrap"):
        from otterlite.debian import apt_install

        say("installing mmdebstrap (apt-get)")
        apt_install(["mmdebstrap"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        for arch in DEBIAN_PACKAGES:
            say(f"unpacking Debian {DEBIAN_SUITE} {arch} python3.11 into {target}/root-{arch} (mmdebstrap)")
            unpack_debian(tmp, arch)
        wheels = [f"{w}=={host_version(w)}" if host_version(w) else w for w in WHEELS]
        say(f"fetching aarch64 wheels: {' '.join(wheels)}")
        run_step([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                  str(tmp / "site"), *(f"--platform={p}" for p in PLATFORMS), "--only-binary=:all:",
                  "--python-version=3.11", "--implementation=cp", *wheels], "pip (aarch64 wheels)", "needs PyPI access")
        probe = "from otterlite.arm_worker import cpu_features; print(' '.join(cpu_features()))"
        imports = {"ort": "onnxruntime", "litert": "ai_edge_litert.interpreter", "numpy": "numpy, PIL"}
        features = {}
        for cpu, spec in CPUS.items():
            env = worker_env(tmp, cpu)
            features[cpu] = run_step([*python_command(tmp / f"root-{spec.arch}", cpu), "-c", probe],
                                     f"{spec.arch} python on {cpu}", f"{spec.qemu} could not run the unpacked python",
                                     env).split()
            root = cpu_root(tmp, cpu, features[cpu])
            modules = ", ".join(imports[r] for r in spec.runtimes)
            run_step([*python_command(root, cpu), "-c", f"import {modules}"], f"importing {modules} on {cpu}",
                     "a package is missing or not for this architecture; remove the folder and re-run setup", env)
            say(f"  {cpu} ({spec.qemu_cpu}, {spec.board}): {', '.join(spec.runtimes)}; hwcaps {' '.join(features[cpu])}")
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file() and not f.is_symlink())
        (tmp / "ready.json").write_text(json.dumps({"wheels": wheels, "debian": DEBIAN_SUITE, "bytes": size,
                                                    "hwcaps": features}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"ARM runtimes ready: {target} ({size / 2 ** 20:.0f} MB)")
    return target


def host_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class Worker:
    """arm_worker.py on one emulated CPU, kept alive and shared by that CPU's backends."""

    def __init__(self, cpu: str):
        reason = missing()
        if reason:
            raise OtterliteError(reason)
        folder = env_dir()
        self.cpu = cpu
        self.process = subprocess.Popen([*python_command(folder / "cpus" / cpu, cpu), str(WORKER)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=worker_env(folder, cpu))
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.stderr = (self.stderr + [line.decode(errors="replace").rstrip()])[-20:]

    def request(self, header: dict, *arrays: np.ndarray) -> tuple[dict, list[np.ndarray]]:
        timer = threading.Timer(REQUEST_TIMEOUT_S, self.process.kill)
        timer.start()
        try:
            write_arrays(self.process.stdin, [np.frombuffer(json.dumps(header).encode(), np.uint8), *arrays])
            reply = read_arrays(self.process.stdout)
        except (EOFError, BrokenPipeError, OSError):
            code = self.process.wait()
            how = "timed out" if not timer.is_alive() else f"died (exit {code})"
            last = [s for s in self.stderr if s.strip()][-1:] or ["no output"]
            raise OtterliteError(f"ARM worker on {self.cpu} {how}: {last[0][:200]}") from None
        finally:
            timer.cancel()
        answer = json.loads(reply[0].tobytes())
        if "error" in answer:
            raise OtterliteError(f"on {self.cpu}: {answer['error']}")
        return answer, reply[1:]

    def alive(self) -> bool:
        return self.process.poll() is None


_WORKERS: dict[str, Worker] = {}


def worker(cpu: str) -> Worker:
    """The shared worker of `cpu`, restarted if it died."""
    if cpu not in _WORKERS or not _WORKERS[cpu].alive():
        _WORKERS[cpu] = Worker(cpu)
    return _WORKERS[cpu]


def stop_workers(cpus) -> None:
    """End the workers of these CPUs (they are started again when needed)."""
    for cpu in cpus:
        w = _WORKERS.pop(cpu, None)
        if w and w.alive():
            w.process.stdin.close()
            try:
                w.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.process.kill()


def runner(cpu: str, backend: str, path: Path):
    """-> (run(x NCHW) -> outputs, detail): the host backend `backend` on one artifact, on `cpu`."""
    w = worker(cpu)
    answer, _ = w.request({"op": "load", "backend": backend, "path": str(Path(path).resolve())})
    handle = answer["handle"]

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [np.array(o) for o in w.request({"op": "run", "handle": handle}, np.ascontiguousarray(x))[1]]
    return run, answer["detail"]

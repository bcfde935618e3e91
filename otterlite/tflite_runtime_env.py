"""tflite-runtime 2.14 needs numpy<2, so it runs in its own virtual environment, talking to
`tflite_runtime_worker.py` over pipes. `otterlite setup tflite-runtime` creates it.

Location: $OTTERLITE_TFLITE_RUNTIME_VENV, else ~/.cache/otterlite/tflite-runtime-venv.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.tflite_runtime_worker import read_arrays, write_arrays

PACKAGES = ["numpy<2", "tflite-runtime==2.14.0"]
WORKER = Path(__file__).with_name("tflite_runtime_worker.py")


def venv_dir() -> Path:
    return Path(os.environ.get("OTTERLITE_TFLITE_RUNTIME_VENV") or
                Path.home() / ".cache" / "otterlite" / "tflite-runtime-venv")


def python() -> Path:
    return venv_dir() / "bin" / "python"


def missing() -> str | None:
    if not python().is_file():
        return f"tflite-runtime environment not found at {venv_dir()} (run 'otterlite setup tflite-runtime')"
    return None


def setup(say=print) -> Path:
    """Create the environment (python -m venv, then pip install numpy<2 tflite-runtime 2.14);
    on failure nothing is left behind."""
    target = venv_dir()
    if missing() is None:
        say(f"tflite-runtime environment already at {target}")
        return target
    say(f"creating {target} with {' '.join(PACKAGES)} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True, text=True)
        subprocess.run([str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
                       check=True, capture_output=True, text=True)
        subprocess.run([str(python()), "-c", "import tflite_runtime.interpreter"], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        shutil.rmtree(target, ignore_errors=True)
        detail = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise OtterliteError(f"could not create the tflite-runtime environment at {target}: {detail[0]} "
                             f"(needs PyPI access and Python 3.8-3.11)") from None
    say(f"tflite-runtime environment ready: {python()}")
    return target


class Worker:
    """A tflite-runtime interpreter in the other environment, one NHWC input per request
    (framing in tflite_runtime_worker.py)."""

    def __init__(self, model_path: Path):
        reason = missing()
        if reason:
            raise OtterliteError(reason)
        self.process = subprocess.Popen([str(python()), str(WORKER), str(model_path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.input_shape = self._read_arrays()[0].tolist()

    def _read_arrays(self) -> list[np.ndarray]:
        try:
            return read_arrays(self.process.stdout)
        except EOFError:
            err = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            raise OtterliteError(f"tflite-runtime worker failed: {err[-1] if err else 'no output'}") from None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        write_arrays(self.process.stdin, [x])
        return self._read_arrays()

    def __del__(self):
        process = getattr(self, "process", None)
        if process and process.poll() is None:
            process.stdin.close()
            process.wait(timeout=10)

"""File helpers every layer may use: atomic writes (a failure never leaves a partial
output) and reads that name the missing file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from otterlite.errors import OtterliteError


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write via a temporary file and rename, so a failure never leaves a partial output."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise OtterliteError(f"output folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    """`data` as indented JSON, written atomically (write_atomic)."""
    return write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_bytes(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise OtterliteError(f"{path}: no such file; give the {what}")
    return path.read_bytes()


def check_writable(path: str | Path | None) -> None:
    """Refuse an output path whose folder is missing or not writable, before any work."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OtterliteError(f"{path} is a folder; give a file name for the report")
    if not path.parent.is_dir():
        raise OtterliteError(f"output folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise OtterliteError(f"output folder {path.parent} is not writable; choose another path")

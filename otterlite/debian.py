"""Debian packages on demand: the cross toolchains, QEMU and mmdebstrap come from apt."""
from __future__ import annotations

import os
import shutil
import subprocess

from otterlite.errors import OtterliteError


def apt_install(packages: list[str]) -> None:
    """apt-get update + install (through sudo when not root), one error line on failure."""
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

"""Runs inside an ARM user space under qemu-user (arm_env.py): the host's own backends
(otterlite.backends: onnxruntime, LiteRT, otterlite's numpy runtime; armhf: numpy only) on the
ARM builds of those packages, answering requests on stdin.

Request and reply: the framing of tflite_runtime_worker.py; the first array is a JSON
header as uint8, the others are data (NCHW, as every backend takes and gives).
    {"op": "load", "backend": "ort-O3-t1" | "litert-builtin" | "numpy" | ..., "path": FILE}
        -> {"handle": N, "detail": "..."}   (the last KEEP stay loaded)
    {"op": "run", "handle": N}, x -> {}, outputs...
    any failure -> {"error": "one line"}
"""
import itertools
import json
import struct
import sys
import traceback

import numpy as np

from otterlite.tflite_runtime_worker import read_arrays, write_arrays

HWCAPS = {  # Linux's hwcap bit names: (AT_HWCAP, AT_HWCAP2) per word size of the machine
    8: ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
        "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg",
        "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
        "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme"),
    4: ("swp half thumb 26bit fastmult fpa vfp edsp java iwmmxt crunch thumbee neon vfpv3 vfpv3d16 tls vfpv4 "
        "idiva idivt vfpd32 lpae evtstrm", "aes pmull sha1 sha2 crc32"),
}
SHOWN = ("asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "neon", "vfpv4")  # what int8 / fp16 kernels choose by
NUMPY_SHOWN = ("ASIMDHP", "ASIMDDP", "ASIMDFHM", "SVE", "NEON", "NEON_VFPV4")  # numpy's dispatch targets
KEEP = 8  # loaded models kept per worker


def cpu_features() -> list[str]:
    """The Linux hwcap names the (emulated) CPU reports in the auxiliary vector."""
    word = struct.calcsize("P")
    pairs = np.fromfile("/proc/self/auxv", dtype=np.uint64 if word == 8 else np.uint32).reshape(-1, 2)
    values = {int(k): int(v) for k, v in pairs}
    names = []
    for key, table in zip((16, 26), HWCAPS[word]):  # AT_HWCAP, AT_HWCAP2
        names += [n for i, n in enumerate(table.split()) if values.get(key, 0) >> i & 1]
    return names


def detail(backend: str) -> str:
    """The runtime build a backend ran on (numpy: also its dispatch targets on this CPU)."""
    if backend.startswith("ort-"):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if backend.startswith("litert"):
        import ai_edge_litert

        return f"LiteRT {getattr(ai_edge_litert, '__version__', '')}".strip()
    core = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1 (Debian's armhf numpy)
    features = core._multiarray_umath.__cpu_features__
    found = [k for k in NUMPY_SHOWN if features.get(k)]
    return f"numpy {np.__version__} dispatch {' '.join(found) or 'baseline'}"


def load(backend: str, path: str):
    """The host's own backend of that name (otterlite.backends), run here on ARM."""
    from pathlib import Path

    from otterlite.backends import BACKENDS
    from otterlite.integer_spec.types import load_spec

    chosen = BACKENDS[backend]
    spec = load_spec(Path(path).read_bytes(), path) if chosen.artifact == "spec" else None
    return chosen.load(Path(path), spec)


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    runners, handles = {}, itertools.count()
    shown = [f for f in cpu_features() if f in SHOWN]
    while stdin.peek(1):
        arrays = read_arrays(stdin)
        header = json.loads(arrays[0].tobytes())
        try:
            if header["op"] == "load":
                handle = next(handles)
                runners[handle] = load(header["backend"], header["path"])
                runners.pop(handle - KEEP, None)  # the host runs one artifact at a time: free the old ones
                reply = {"handle": handle, "detail": f"{detail(header['backend'])}; cpu {' '.join(shown) or 'base'}"}
                write_arrays(stdout, [np.frombuffer(json.dumps(reply).encode(), np.uint8)])
            else:
                if header["handle"] not in runners:
                    raise KeyError(f"model {header['handle']} was freed ({KEEP} are kept); load it again")
                outputs = runners[header["handle"]](arrays[1])
                write_arrays(stdout, [np.frombuffer(b"{}", np.uint8), *outputs])
        except Exception as err:  # reported to the host as one line; the worker keeps serving
            line = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            traceback.print_exc(file=sys.stderr)
            write_arrays(stdout, [np.frombuffer(json.dumps({"error": line}).encode(), np.uint8)])


if __name__ == "__main__":
    main()

"""Runs inside an ARM user space under qemu-user (arm_env.py): the ARM builds of onnxruntime,
LiteRT and numpy (with otterlite's numpy runtime; armhf: numpy only) answer requests on stdin.

Request and reply: the framing of tflite_runtime_worker.py; the first array is a JSON
header as uint8, the others are data.
    {"op": "load", "runtime": "ort:ORT_ENABLE_ALL" | "litert:AUTO" | "numpy", "path": FILE}
        -> {"handle": N, "input_shape": [...], "detail": "..."}   (the last KEEP stay loaded)
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


def load_ort(level: str, path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})), session.get_inputs()[0].shape, f"onnxruntime {ort.__version__}"


def load_litert(resolver: str, path: str):
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=path, num_threads=1,
                              experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()

    def run(x):
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        return [interpreter.get_tensor(o["index"]) for o in outputs]
    return run, source["shape"].tolist(), f"LiteRT {getattr(ai_edge_litert, '__version__', '')}".strip()


def load_numpy(path: str):
    """otterlite's numpy runtime on this numpy: NCHW uint8 in, NCHW outputs."""
    from otterlite.runtime import ConsumerDecoder, apply_forward, encode_frame
    from otterlite.spec.types import load_spec

    with open(path, "rb") as f:
        spec = load_spec(f.read(), path)
    if spec.kind == "frappe-encoder":
        def run(x):
            return [z[None] for z in encode_frame(spec, np.ascontiguousarray(x[0].transpose(1, 2, 0)))]
    else:
        transform = ConsumerDecoder(spec).transform if spec.kind == "seaotter-inverse" else \
            (lambda rgb: apply_forward(spec, rgb))

        def run(x):
            return [np.ascontiguousarray(transform(x[0].transpose(1, 2, 0)).transpose(2, 0, 1))[None]]
    core = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1 (Debian's armhf numpy)
    features = core._multiarray_umath.__cpu_features__
    found = [k for k in NUMPY_SHOWN if features.get(k)]
    return run, None, f"numpy {np.__version__} dispatch {' '.join(found) or 'baseline'}"


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    runners, handles = {}, itertools.count()
    shown = [f for f in cpu_features() if f in SHOWN]
    while stdin.peek(1):
        arrays = read_arrays(stdin)
        header = json.loads(arrays[0].tobytes())
        try:
            if header["op"] == "load":
                kind, _, option = header["runtime"].partition(":")
                loader = {"ort": lambda p: load_ort(option, p), "litert": lambda p: load_litert(option, p),
                          "numpy": load_numpy}[kind]
                run, shape, detail = loader(header["path"])
                handle = next(handles)
                runners[handle] = run
                runners.pop(handle - KEEP, None)  # the host runs one artifact at a time: free the old ones
                reply = {"handle": handle, "input_shape": shape,
                         "detail": f"{detail}; cpu {' '.join(shown) or 'base'}"}
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

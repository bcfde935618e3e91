"""The one registry of backends. Each backend loads one exported artifact and runs it on
uint8 input batches of shape (1, 3, H, W), returning NCHW outputs (NHWC artifacts are
transposed at the boundary); verify, tests and the CLI iterate this table. A runner that
reads interleaved pixels natively also has `run.nhwc(x)` for (1, H, W, 3) input, which
`bench` times so that the transposition of the test input is not counted. A runner whose
runtime can show its intermediate values has `run.probe(x)`: {"outputs": [...], probe name:
array} in divergence.py's names and layout, for verify to say where a difference began."""
from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from otterlite.arm_env import CPUS as ARM_CPUS
from otterlite.errors import OtterliteError
from otterlite.firmware_sim.toolchains import CROSS
from otterlite.integer_spec.types import ENCODER_KINDS


def module(name: str, install: str) -> Callable[[], str | None]:
    """A requirement: the python module `name`, installed by `install`."""
    return lambda: None if importlib.util.find_spec(name) else f"{name} not installed ({install})"


@dataclass(frozen=True)
class Backend:
    name: str
    artifact: str  # file suffix it runs: "spec", "onnx" or "tflite"
    requires: Callable[[], str | None]  # None when usable, else why not
    load: Callable  # (artifact path, spec) -> run(x uint8 ndarray) -> list of ndarrays
    kinds: tuple[str, ...] = ()  # the spec kinds it runs; empty: all
    arm_cpu: str | None = None  # an ARM build of a runtime under qemu-user on this CPU: minutes, not seconds

    @property
    def emulated(self) -> bool:
        return self.arm_cpu is not None

    def missing(self) -> str | None:
        return self.requires()

    def runs(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


def check_input(x: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    """Refuse an input the artifact was not exported for, naming the fix."""
    if x.dtype != np.uint8 or tuple(x.shape) != tuple(shape):
        raise OtterliteError(f"{path.name}: input {x.dtype} {tuple(x.shape)} but the model takes uint8 "
                             f"{tuple(shape)} (NCHW); convert the image to uint8 {shape[2]}x{shape[3]}, or "
                             f"re-export with --input-size HxW for your size")


def nhwc_runner(invoke: Callable, input_shape_nhwc, path: Path) -> Callable:
    """run(x NCHW) around invoke(x NHWC) -> NHWC outputs."""
    n, h, w, c = (int(v) for v in input_shape_nhwc)

    def run_nhwc(x):
        check_input(x.transpose(0, 3, 1, 2), (n, c, h, w), path)
        return [np.ascontiguousarray(o.transpose(0, 3, 1, 2)) for o in invoke(x)]

    def run(x):
        check_input(x, (n, c, h, w), path)
        return run_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    run.nhwc = run_nhwc
    return run


def load_torch_reference(path: Path, spec):
    import torch

    from otterlite.integer_spec.torch_reference import run_spec

    def run(x):
        return [o.numpy() for o in run_spec(spec, torch.from_numpy(x))]

    def probe(x):
        outputs, trace = run_spec(spec, torch.from_numpy(x), intermediate=True)
        return {"outputs": [o.numpy() for o in outputs], **{k: v.numpy() for k, v in trace.items()}}
    run.probe = probe
    return run


def load_numpy_frame(path: Path, spec):
    """encode_frame, apply_forward or the consumer's transform; the encoder and the forward
    transform probe their accumulators (the inverse's 2^24-entry lookup has no intermediate)."""
    from otterlite.runtime import ConsumerDecoder, apply_forward
    from otterlite.runtime.encoder import FrameEncoder
    from otterlite.runtime.forward import forward_accumulator

    if spec.kind in ENCODER_KINDS:
        encoder = FrameEncoder(spec)
        run = hwc_runner(encoder.encode)
        return with_probe(run, lambda rgb: [a.transpose(2, 0, 1) for a in encoder.accumulators(rgb)])
    if spec.kind == "seaotter-inverse":
        return transform_runner(ConsumerDecoder(spec).transform)
    run = transform_runner(lambda rgb: apply_forward(spec, rgb))
    return with_probe(run, lambda rgb: [forward_accumulator(spec, rgb).transpose(2, 0, 1)])


def load_numpy_streaming(path: Path, spec):
    from otterlite.runtime import streaming_encoder

    run = hwc_runner(lambda rgb: streaming_encoder(spec, rgb.shape[1], rgb.shape[0]).encode(rgb))
    return with_probe(run, lambda rgb: streaming_encoder(spec, rgb.shape[1], rgb.shape[0]).trace(rgb))


def with_probe(run: Callable, accumulators: Callable) -> Callable:
    """run.probe from accumulators((H, W, 3) uint8) -> per stage (C, h, w)."""
    def probe(x):
        accs = accumulators(np.ascontiguousarray(x[0].transpose(1, 2, 0)))
        return {"outputs": run(x), **{f"stage{i}.accumulator": a[None].astype(np.int64) for i, a in enumerate(accs)}}
    run.probe = probe
    return run


def hwc_runner(encode: Callable) -> Callable:
    """run(x NCHW) and run.nhwc(x) around encode((H, W, 3) uint8) -> per group (C, h, w)."""
    def run_nhwc(x):
        return [z[None] for z in encode(x[0])]

    def run(x):
        return run_nhwc(x.transpose(0, 2, 3, 1))
    run.nhwc = run_nhwc
    return run


def transform_runner(transform: Callable) -> Callable:
    """run(x NCHW) -> [NCHW] around transform((H, W, 3) uint8) -> (H, W, 3) uint8."""
    def run(x):
        return [np.ascontiguousarray(transform(x[0].transpose(1, 2, 0)).transpose(2, 0, 1))[None]]
    return run


def load_c_library(path: Path, spec):
    """The generated C99 encoder (or SEA OTTER inverse) as a shared library called in process (ctypes)."""
    from otterlite.firmware_sim import generate, host

    folder = tempfile.TemporaryDirectory(prefix="otterlite-c-")
    if spec.kind == "seaotter-inverse":
        from otterlite.firmware_sim.consumer import LibraryInverse

        run_inverse = transform_runner(LibraryInverse(spec, folder.name).transform)
        run_inverse.folder = folder
        return run_inverse
    source = generate(spec, Path(folder.name) / "src")
    encoder = host.LibraryEncoder(host.build_library(source), spec)
    traced = []

    def run(x):  # the C interleaves the planes row by row, faster than a numpy transpose
        return [z[None] for z in encoder.encode(x[0], planar=True)]

    def probe(x):  # a second build of the same sources with the accumulator hook (-DOTL_TRACE)
        if not traced:
            traced.append(host.LibraryEncoder(host.build_library(source, trace=True), spec))
        accs = traced[0].trace(x[0], planar=True)
        return {"outputs": [z[None] for z in traced[0].encode(x[0], planar=True)],
                **{f"stage{i}.accumulator": a[None].astype(np.int64) for i, a in enumerate(accs)}}
    run.nhwc = lambda x: [z[None] for z in encoder.encode(x[0])]
    run.probe = probe
    run.folder = folder
    return run


def c_loader(cross_target: str | None):
    """The generated C99 encoder built with the host compiler (cross_target None) or cross-built
    and run under QEMU; sources in a temporary folder that lives as long as the runner."""
    def load(path: Path, spec):
        from otterlite.firmware_sim import cross, generate, host

        folder = tempfile.TemporaryDirectory(prefix="otterlite-c-")
        sources = generate(spec, Path(folder.name) / "src")
        if cross_target is None:
            binary = host.build_host(sources)
            harness = lambda rgb: host.run_harness([str(binary)], rgb)  # noqa: E731
        else:
            target = CROSS[cross_target]
            binary = cross.build_cross(sources, target)
            harness = lambda rgb: cross.run_cross(target, binary, rgb)  # noqa: E731

        def run(x):
            rgb = np.ascontiguousarray(x[0].transpose(1, 2, 0))
            latents = host.split_latents(harness(rgb), host.latent_shapes(spec, *rgb.shape[:2]))
            return [z[None] for z in latents]
        run.folder = folder
        return run
    return load


def c_ready(cross_target: str | None) -> Callable[[], str | None]:
    def missing():
        from otterlite.firmware_sim import host
        from otterlite.firmware_sim.toolchains import missing

        return host.compiler_missing() if cross_target is None else missing(CROSS[cross_target])
    return missing


def onnxruntime_loader(level: str, threads: int):
    def load(path: Path, spec):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        probing = []

        def run(x):
            return session.run(None, {name: x})

        def probe(x):  # a copy of the graph with the intermediate tensors as extra outputs
            import onnx

            from otterlite.export import onnx_writer

            wanted = onnx_writer.probe_outputs(spec)
            if not probing:
                model = onnx.load(str(path))
                model.graph.output.extend(onnx.helper.make_tensor_value_info(tensor, dtype, None)
                                          for tensor, dtype in wanted.values())
                probing.append(ort.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"]))
            values = probing[0].run(None, {name: x})
            n = len(values) - len(wanted)
            extra = onnx_writer.probe_values(spec, dict(zip(wanted, values[n:])), *x.shape[2:])
            return {"outputs": values[:n], **extra}
        run.probe = probe
        return run
    return load


def litert_loader(resolver: str):
    """LiteRT with AUTO (default resolver, XNNPACK delegate), BUILTIN_WITHOUT_DEFAULT_DELEGATES
    or BUILTIN_REF (reference kernels); one thread."""
    def load(path: Path, spec):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_content=path.read_bytes(), num_threads=1,
                                  experimental_op_resolver_type=getattr(OpResolverType, resolver))
        interpreter.allocate_tensors()
        source = interpreter.get_input_details()[0]
        outputs = interpreter.get_output_details()

        def invoke(x):
            interpreter.set_tensor(source["index"], x)
            interpreter.invoke()
            return [interpreter.get_tensor(o["index"]) for o in outputs]

        def probe(x):
            """LiteRT's preserved tensors; preserving them turns the default delegates (XNNPACK)
            off, so divergence.py checks that this run reproduces the difference."""
            from otterlite.export import tflite_writer

            with warnings.catch_warnings():  # "intended for debugging purposes only": this is one
                warnings.simplefilter("ignore")
                kept = Interpreter(model_content=path.read_bytes(), num_threads=1,
                                   experimental_preserve_all_tensors=True,
                                   experimental_op_resolver_type=getattr(OpResolverType, resolver))
            kept.allocate_tensors()
            kept.set_tensor(source["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            kept.invoke()
            index = {d["name"]: d["index"] for d in kept.get_tensor_details()}

            def tensor(name):
                return tuple(kept.get_tensor(index[n]) for n in name) if isinstance(name, tuple) else \
                    kept.get_tensor(index[name])
            values = {k: tensor(n) for k, n in tflite_writer.probe_tensors(spec).items()}
            got = [np.ascontiguousarray(kept.get_tensor(o["index"]).transpose(0, 3, 1, 2)) for o in outputs]
            return {"outputs": got, **tflite_writer.probe_values(spec, values, *x.shape[2:])}
        run = nhwc_runner(invoke, source["shape"], path)
        run.probe = probe
        return run
    return load


def load_tflite_runtime(path: Path, spec):
    from otterlite import tflite_runtime_env

    worker = tflite_runtime_env.Worker(path)
    return nhwc_runner(worker.run, worker.input_shape, path)


def load_tflm(path: Path, spec):
    """TFLite Micro; the runner's `detail` reports the arena bytes the model used."""
    from tflite_micro.python.tflite_micro import runtime

    from otterlite.export.tflite_info import read_tflite

    data = path.read_bytes()
    model = read_tflite(data, path.name)
    arena = model.activation_bytes + 2 ** 20  # an upper bound; the used figure is read back below
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
    used = {}

    def invoke(x):
        interpreter.set_input(x, 0)
        interpreter.invoke()
        if not used:
            used["arena"] = tflm_arena_bytes(interpreter)
        return [interpreter.get_output(i) for i in range(len(model.outputs))]
    run = nhwc_runner(invoke, model.inputs[0].shape, path)
    run.detail = lambda: f"arena {used['arena']} B" if used else None
    run.arena_bytes = lambda: used.get("arena")
    return run


def tflm_arena_bytes(interpreter) -> int:
    """TFLM prints its allocations only to the C++ stderr: capture fd 2 around the call."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    if not found:
        raise OtterliteError(f"tflite-micro did not report its arena (got {text[:200]!r})")
    return int(found.group(1))


def arm_loader(cpu: str, backend: str):
    """The host backend `backend` run on the ARM build of its runtime under qemu-user
    (arm_env.py); the runner's `detail` names that build and the CPU features it ran with."""
    def load(path: Path, spec):
        from otterlite import arm_env
        from otterlite.integer_spec.types import save_spec

        folder = None
        if BACKENDS[backend].artifact == "spec":  # the worker reads the spec blob itself
            folder = tempfile.TemporaryDirectory(prefix="otterlite-arm-")
            path = Path(folder.name) / f"{spec.kind}.spec"
            path.write_bytes(save_spec(spec))
        run, detail = arm_env.runner(cpu, backend, path)
        run.detail = lambda: detail
        run.folder = folder
        return run
    return load


def arm_ready() -> str | None:
    from otterlite import arm_env

    return arm_env.missing()


def tflite_runtime_ready() -> str | None:
    from otterlite import tflite_runtime_env

    return tflite_runtime_env.missing()


ORT_LEVELS = {"O0": "ORT_DISABLE_ALL", "O1": "ORT_ENABLE_BASIC", "O2": "ORT_ENABLE_EXTENDED", "O3": "ORT_ENABLE_ALL"}
LITERT_RESOLVERS = {"litert": "AUTO", "litert-builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
                    "litert-reference": "BUILTIN_REF"}

NUMPY = module("numpy", "pip install numpy")
BACKENDS: dict[str, Backend] = {
    "torch-int": Backend("torch-int", "spec", module("torch", "pip install torch==2.13.0"), load_torch_reference),
    "numpy": Backend("numpy", "spec", NUMPY, load_numpy_frame),
    "numpy-streaming": Backend("numpy-streaming", "spec", NUMPY, load_numpy_streaming, ENCODER_KINDS),
    "c": Backend("c", "spec", c_ready(None), c_loader(None), ENCODER_KINDS),
    "c-lib": Backend("c-lib", "spec", c_ready(None), load_c_library, (*ENCODER_KINDS, "seaotter-inverse")),
}
for _target in CROSS:
    BACKENDS[f"qemu-{_target}"] = Backend(f"qemu-{_target}", "spec", c_ready(_target), c_loader(_target),
                                          ENCODER_KINDS)
for _short, _level in ORT_LEVELS.items():
    for _threads in (1, 2):
        _name = f"ort-{_short}-t{_threads}"
        BACKENDS[_name] = Backend(_name, "onnx", module("onnxruntime", "pip install 'otterlite[onnx]'"),
                                  onnxruntime_loader(_level, _threads))
for _name, _resolver in LITERT_RESOLVERS.items():
    BACKENDS[_name] = Backend(_name, "tflite", module("ai_edge_litert", "pip install 'otterlite[litert]'"),
                              litert_loader(_resolver))
for _cpu, _arm in ARM_CPUS.items():  # the host's backends on the ARM builds under qemu-user (arm_env.py)
    _runs = {}
    if "ort" in _arm.runtimes:
        _runs.update({f"ort-{short}-{_cpu}": f"ort-{short}-t1" for short in ORT_LEVELS})
    if "litert" in _arm.runtimes:
        _runs.update({f"{name}-{_cpu}": name for name in LITERT_RESOLVERS})
    _runs[f"numpy-{_cpu}"] = "numpy"
    for _name, _host in _runs.items():
        BACKENDS[_name] = Backend(_name, BACKENDS[_host].artifact, arm_ready, arm_loader(_cpu, _host), arm_cpu=_cpu)
BACKENDS["tflite-runtime"] = Backend("tflite-runtime", "tflite", tflite_runtime_ready, load_tflite_runtime)
BACKENDS["tflm"] = Backend("tflm", "tflite", module("tflite_micro", "pip install 'otterlite[tflm]'"), load_tflm)


"""The one registry of backends. Each backend loads one exported artifact and runs it on
uint8 input batches of shape (1, 3, H, W); verify, tests and the CLI iterate this table."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Backend:
    name: str
    artifact: str  # file suffix it runs: "spec" or "onnx"
    needs: str  # python module that must be importable
    load: Callable  # (artifact path, spec) -> run(x uint8 ndarray) -> list of ndarrays

    def missing(self) -> str | None:
        return None if importlib.util.find_spec(self.needs) else f"{self.needs} not installed"


def load_torch_reference(path: Path, spec):
    import torch

    from otterlite.spec.torch_reference import run_spec

    def run(x):
        return [o.numpy() for o in run_spec(spec, torch.from_numpy(x))]
    return run


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

        def run(x):
            return session.run(None, {name: x})
        return run
    return load


ORT_LEVELS = {"O0": "ORT_DISABLE_ALL", "O1": "ORT_ENABLE_BASIC", "O2": "ORT_ENABLE_EXTENDED", "O3": "ORT_ENABLE_ALL"}

BACKENDS: dict[str, Backend] = {"torch-int": Backend("torch-int", "spec", "torch", load_torch_reference)}
for _short, _level in ORT_LEVELS.items():
    for _threads in (1, 2):
        _name = f"ort-{_short}-t{_threads}"
        BACKENDS[_name] = Backend(_name, "onnx", "onnxruntime", onnxruntime_loader(_level, _threads))


"""Read a .tflite file back (schema package only): op list, tensors, signature. Used by
`otterlite info model.tflite` and to size the TFLM arena."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from otterlite.errors import OtterliteError

TYPE_NAMES = {"FLOAT32": "float32", "INT32": "int32", "UINT8": "uint8", "INT8": "int8", "BOOL": "bool",
              "INT64": "int64", "INT16": "int16"}


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    constant: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass
class TfliteModel:
    version: int
    description: str
    ops: list[str]
    tensors: list[TensorInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @property
    def activation_bytes(self) -> int:
        """Sum of every non-constant tensor: what an arena needs with no reuse at all."""
        return sum(t.nbytes for t in self.tensors if not t.constant)

    def op_counts(self) -> list[tuple[str, int]]:
        return sorted(Counter(self.ops).items(), key=lambda kv: -kv[1])


def _names(enum) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def read_tflite(data: bytes, source: str = "model.tflite") -> TfliteModel:
    import tflite

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise OtterliteError(f"{source}: not a TFLite file (no TFL3 identifier); export one with "
                             f"'otterlite export MODEL --format tflite'")
    ops, types = _names(tflite.BuiltinOperator), _names(tflite.TensorType)
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise ValueError(f"{model.SubgraphsLength()} subgraphs")
        graph = model.Subgraphs(0)
        buffers = [model.Buffers(i) for i in range(model.BuffersLength())]
        for b in buffers:
            if b.DataLength() and b.DataAsNumpy().size != b.DataLength():
                raise ValueError("constant data cut short")
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            constant = t.Buffer() > 0 and buffers[t.Buffer()].DataLength() > 0
            dtype = types.get(t.Type(), f"type{t.Type()}")
            tensors.append(TensorInfo(t.Name().decode(), TYPE_NAMES.get(dtype, dtype.lower()),
                                      [int(v) for v in t.ShapeAsNumpy()] if t.ShapeLength() else [], constant))
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        names = []
        for i in range(graph.OperatorsLength()):
            code = codes[graph.Operators(i).OpcodeIndex()]
            names.append(ops.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
        inputs = [tensors[i] for i in graph.InputsAsNumpy()]
        outputs = [tensors[i] for i in graph.OutputsAsNumpy()]
        description = (model.Description() or b"").decode(errors="replace")
    except Exception as err:  # flatbuffers reports damage as whatever error it trips on
        raise OtterliteError(f"{source}: truncated or corrupted TFLite file ({type(err).__name__}: {err}); "
                             f"re-export it") from None
    return TfliteModel(model.Version(), description, names, tensors, inputs, outputs)


def describe(model: TfliteModel) -> list[str]:
    def sig(t: TensorInfo) -> str:
        return f"{t.name}: {t.dtype} {t.shape}"
    lines = [f"TFLite schema version {model.version}, {len(model.ops)} operators, {len(model.tensors)} tensors"
             f" ({model.description})",
             "inputs:  " + "; ".join(sig(t) for t in model.inputs),
             "outputs: " + "; ".join(sig(t) for t in model.outputs),
             "ops:     " + ", ".join(f"{name} x{n}" for name, n in model.op_counts())]
    dtypes = Counter(t.dtype for t in model.tensors)
    lines.append("tensor dtypes: " + ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items())))
    const = sum(t.nbytes for t in model.tensors if t.constant)
    lines.append(f"constants {const} B; activations {model.activation_bytes} B before any arena reuse")
    return lines

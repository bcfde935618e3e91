"""Integer spec -> TFLite flatbuffer, authored with the `tflite` schema package (no TensorFlow).

Layout is NHWC: input (1, H, W, 3) uint8, outputs (1, h, w, C). Only exact forms are used
(see shared EXACTNESS facts), and every op used exists in LiteRT, tflite-runtime and TFLM:
- accumulators: uint8 -> DEQUANTIZE (scale 1) -> one float32 CONV_2D whose blocks of output
  channels are the base-16 digit planes of the weights, W = sum_i 16^i D_i, with each plane's
  partial sums below 2^24 (so exact in any summation order, XNNPACK included) -> one plane:
  that float32 output; else CAST int32 (exact integers) -> per block SLICE, MUL 16^i, ADD.
  Patch convs (stride = kernel k): the uint8 image RESHAPEd to (1, H, W/L, 3L) first (no
  data moves; TFLM takes uint8 only there), L pixels folded into one (fold_width: FRAPPE's
  32 for every group), then DEQUANTIZE, and per group a CONV_2D with kernel (k, 1) and stride
  (k, 1) whose outputs are the L/k patches of a fold side by side (block-diagonal weights),
  RESHAPEd back to (1, H/k, W/k, outputs): the same sums, with no SPACE_TO_DEPTH copy and
  the small groups' 3 or 6 outputs filling more of XNNPACK's 16-wide GEMM columns.
  A wrap-around border (WaLLoC) is SLICE + CONCATENATION of the float32 image first.
- thresholds: a bucket table where its buckets hold at most BUCKET_COMPARES thresholds
  (integer_spec.ThresholdBuckets: a' = MAXIMUM/MINIMUM-clipped a, b = (a' - lo_c) / 2^s_c by
  int32 DIV, or in float32 by 2^-s_c and FLOOR where the range allows (float_count),
  count = base[c, b] + sum_m (a' >= cand[m, c, b]) + the piles outside the range;
  base and candidates GATHERed from float32 tables: exact below 2^24, larger thresholds as
  two 16-bit halves). Else
  an 8-step binary search, count = #{j : a >= T[c, j]}. T is padded to 256
  columns with INT32_MAX and stored as two float32 tables hi = T >> 16, lo = T & 0xFFFF
  (both exact in float32); each step GATHERs hi and lo at c*256 + pos + step - 1, rebuilds
  T = int32(hi) * 65536 + int32(lo) and adds step where a >= T. Working memory per step is
  a few (h, w, C) tensors, never a (patches, C, 254) comparison.
- inverse tables (the bias folded into channel 0's centre tap): a float32 CONV_2D with
  one-hot weights turns each tap's code z + 1 (zero padded: 0 = outside) into the row
  257 * term + z + 1 of one (terms * 257, 6) float32 table; one GATHER per term and pixel
  fetches its six values, the entry's parts hi = e >> 16 and lo = e & 0xFFFF for the three
  outputs (float32-exact); two CONV_2Ds sum them per output with weights 2^(16-j) and 2^-j,
  j = min(shift, 16) (powers of two: exact; partial sums below 2^24 as |acc| < 2^39), and
  floor(acc / 2^shift) = floor((H 2^(16-j) + floor(L 2^-j)) 2^(j-shift)) for the summed
  parts H, L (FLOOR and power-of-two MULs of integers below 2^24: exact; for shift < 16 a
  value beyond 2^24 may round, but stays beyond the clamp); MAXIMUM/MINIMUM clamp to
  [0, 255], QUANTIZE (integers, scale 1) narrows. Every op after the GATHER is a float32 one
  that XNNPACK runs (at 1080p on LiteRT, 1 thread, here: 170 -> 53 ms against two GATHERs of
  one value per term and output and an int32 tail).
"""
from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
import tflite
from tflite.BuiltinOperator import BuiltinOperator as Op

from otterlite.integer_spec.types import (FLOAT_EXACT_LIMIT, INT32_LIMIT, TableMixSpec, ThresholdConvSpec,
                                          accumulator_range, padded_thresholds, stage_buckets, wrap_runs)

TYPES = {np.dtype(np.float32): tflite.TensorType.FLOAT32, np.dtype(np.int32): tflite.TensorType.INT32,
         np.dtype(np.uint8): tflite.TensorType.UINT8, np.dtype(np.int8): tflite.TensorType.INT8,
         np.dtype(np.bool_): tflite.TensorType.BOOL}
OPTIONS = {  # builtin op -> its options table (fields passed to TfliteGraph.op)
    Op.CONV_2D: "Conv2D", Op.ADD: "Add", Op.MUL: "Mul", Op.DIV: "Div", Op.GATHER: "Gather",
    Op.CAST: "Cast", Op.GREATER_EQUAL: "GreaterEqual", Op.PAD: "Pad", Op.MAXIMUM: "MaximumMinimum",
    Op.MINIMUM: "MaximumMinimum", Op.DEQUANTIZE: "Dequantize", Op.QUANTIZE: "Quantize",
    Op.SLICE: "Slice", Op.CONCATENATION: "Concatenation",
    Op.FLOOR: None, Op.RESHAPE: None,
}


def _schema(table: str):
    """The generated flatbuffer module of one schema table (Start/Add.../End builders)."""
    return importlib.import_module(f"tflite.{table}")


fb_opcode = _schema("OperatorCode")
fb_subgraph = _schema("SubGraph")
fb_model = _schema("Model")
fb_buffer = _schema("Buffer")
fb_quant = _schema("QuantizationParameters")
fb_tensor = _schema("Tensor")
fb_operator = _schema("Operator")


class TfliteGraph:
    """Tensors and operators of one subgraph, in execution order; `serialize` writes the file."""

    def __init__(self):
        self.tensors = []  # (name, dtype, shape, constant data or None, zero point or None)
        self.ops = []  # (builtin code, input ids, output ids, option fields)

    def tensor(self, name: str, dtype, shape, data: np.ndarray | None = None, zero_point: int | None = None) -> int:
        """zero_point set: quantized with scale 1, so (DE)QUANTIZE is an exact shift by it."""
        self.tensors.append((name, np.dtype(dtype), [int(s) for s in shape], data, zero_point))
        return len(self.tensors) - 1

    def const(self, name: str, array) -> int:
        array = np.ascontiguousarray(array)
        return self.tensor(name, array.dtype, array.shape, array)

    def op(self, code: int, inputs: list[int], dtype, shape, name: str, zero_point: int | None = None,
           **fields) -> int:
        out = self.tensor(name, dtype, shape, zero_point=zero_point)
        self.ops.append((code, inputs, [out], fields))
        return out

    def shape(self, t: int) -> list[int]:
        return self.tensors[t][2]

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        b = flatbuffers.Builder(1024)
        buffers, tensor_buffer = [_buffer(b, None)], []  # buffer 0 stays empty
        for _, _, _, data, _ in self.tensors:
            if data is None:
                tensor_buffer.append(0)
            else:
                buffers.append(_buffer(b, data.tobytes()))
                tensor_buffer.append(len(buffers) - 1)
        tensors = [_tensor(b, t, buf) for t, buf in zip(self.tensors, tensor_buffer)]
        codes = list(dict.fromkeys(code for code, *_ in self.ops))
        operators = [_operator(b, codes.index(code), ins, outs, code, fields) for code, ins, outs, fields in self.ops]
        opcodes = []
        for code in codes:
            fb_opcode.Start(b)
            fb_opcode.AddDeprecatedBuiltinCode(b, min(code, 127))
            fb_opcode.AddBuiltinCode(b, code)
            fb_opcode.AddVersion(b, 1)
            opcodes.append(fb_opcode.End(b))
        name = b.CreateString(description)
        t_vec, i_vec, o_vec, op_vec = (_offsets(b, tensors), _ints(b, inputs), _ints(b, outputs),
                                       _offsets(b, operators))
        fb_subgraph.Start(b)
        fb_subgraph.AddTensors(b, t_vec)
        fb_subgraph.AddInputs(b, i_vec)
        fb_subgraph.AddOutputs(b, o_vec)
        fb_subgraph.AddOperators(b, op_vec)
        fb_subgraph.AddName(b, name)
        subgraph = fb_subgraph.End(b)
        codes_vec, sub_vec, buf_vec = _offsets(b, opcodes), _offsets(b, [subgraph]), _offsets(b, buffers)
        desc = b.CreateString("otterlite " + description)
        fb_model.Start(b)
        fb_model.AddVersion(b, 3)
        fb_model.AddOperatorCodes(b, codes_vec)
        fb_model.AddSubgraphs(b, sub_vec)
        fb_model.AddDescription(b, desc)
        fb_model.AddBuffers(b, buf_vec)
        b.Finish(fb_model.End(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _offsets(b, items: list[int]) -> int:
    b.StartVector(4, len(items), 4)
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    return b.EndVector()


def _ints(b, values: list[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, np.int32))


def _buffer(b, data: bytes | None) -> int:
    if data:
        b.StartVector(1, len(data), 16)  # constants 16-byte aligned for every kernel
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        vec = b.EndVector()
    fb_buffer.Start(b)
    if data:
        fb_buffer.AddData(b, vec)
    return fb_buffer.End(b)


def _tensor(b, tensor, buffer: int) -> int:
    name, dtype, shape, _, zero_point = tensor
    name_off, shape_off = b.CreateString(name), _ints(b, shape)
    quant = None
    if zero_point is not None:
        scale = b.CreateNumpyVector(np.ones(1, np.float32))
        zero = b.CreateNumpyVector(np.array([zero_point], np.int64))
        fb_quant.Start(b)
        fb_quant.AddScale(b, scale)
        fb_quant.AddZeroPoint(b, zero)
        quant = fb_quant.End(b)
    fb_tensor.Start(b)
    fb_tensor.AddShape(b, shape_off)
    fb_tensor.AddType(b, TYPES[dtype])
    fb_tensor.AddBuffer(b, buffer)
    fb_tensor.AddName(b, name_off)
    if quant is not None:
        fb_tensor.AddQuantization(b, quant)
    return fb_tensor.End(b)


def _operator(b, opcode_index: int, inputs: list[int], outputs: list[int], code: int, fields: dict) -> int:
    table = OPTIONS[code]  # None: an op without options
    if table:
        module = _schema(f"{table}Options")
        module.Start(b)
        for field, value in fields.items():
            getattr(module, f"Add{field}")(b, value)
        options = module.End(b)
    in_vec, out_vec = _ints(b, inputs), _ints(b, outputs)
    fb_operator.Start(b)
    fb_operator.AddOpcodeIndex(b, opcode_index)
    fb_operator.AddInputs(b, in_vec)
    fb_operator.AddOutputs(b, out_vec)
    if table:
        fb_operator.AddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, f"{table}Options"))
        fb_operator.AddBuiltinOptions(b, options)
    return fb_operator.End(b)


def digit_planes(weights: np.ndarray) -> list[np.ndarray]:
    """W = sum_i 16^i D_i with the fewest planes whose float32 conv of uint8 input is exact:
    lower planes in [-8, 7], the top plane whatever remains, each plane's partial sums below
    2^24 (255 * max(sum of its positive digits, -sum of its negative ones) per channel)."""
    def bound(w):
        lo, hi = accumulator_range(w)
        return int(max(-lo.min(), hi.max()))
    planes, rest = [], weights.astype(np.int64)
    while bound(rest) >= FLOAT_EXACT_LIMIT:
        low = (rest + 8) % 16 - 8
        planes.append(low)
        rest = (rest - low) // 16
    planes.append(rest)
    for i, plane in enumerate(planes):
        assert bound(plane) * 16 ** i < INT32_LIMIT, "a digit plane's scaled sum must fit int32"
    return planes


def conv_float(g: TfliteGraph, x: int, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int, tag: str) -> int:
    """float32 CONV_2D of x (NHWC) with OIHW integer weights; zero padding by an explicit PAD."""
    if pad:
        n, h, w, c = g.shape(x)
        paddings = g.const(f"{tag}_paddings", np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]], np.int32))
        x = g.op(Op.PAD, [x, paddings], np.float32, [n, h + 2 * pad, w + 2 * pad, c], f"{tag}_padded")
    n, h, w, _ = g.shape(x)
    kh, kw = weights.shape[2:]
    shape = [n, (h - kh) // stride + 1, (w - kw) // stride + 1, weights.shape[0]]
    filt = g.const(f"{tag}_filter", weights.transpose(0, 2, 3, 1).astype(np.float32))  # OHWI
    return g.op(Op.CONV_2D, [x, filt, g.const(f"{tag}_bias", bias.astype(np.float32))], np.float32, shape,
                f"{tag}_conv", Padding=tflite.Padding.VALID, StrideW=stride, StrideH=stride,
                DilationWFactor=1, DilationHFactor=1)


def wrap_pad(g: TfliteGraph, x: int, pad: int, tag: str) -> int:
    """NHWC x wrap-padded by `pad` on every side: SLICE + CONCATENATION of wrap_runs, rows then columns."""
    for axis in (1, 2):
        shape = list(g.shape(x))  # a copy: the input's recorded shape stays as it is
        parts = []
        for i, (a, b) in enumerate(wrap_runs(shape[axis], pad)):
            begin, size = [0, 0, 0, 0], list(shape)
            begin[axis], size[axis] = a, b - a
            parts.append(g.op(Op.SLICE, [x, g.const(f"{tag}_wrap{axis}_{i}_begin", np.array(begin, np.int32)),
                                         g.const(f"{tag}_wrap{axis}_{i}_size", np.array(size, np.int32))],
                              np.float32, size, f"{tag}_wrap{axis}_{i}"))
        shape[axis] += 2 * pad
        x = g.op(Op.CONCATENATION, parts, np.float32, shape, f"{tag}_wrapped{axis}", Axis=axis,
                 FusedActivationFunction=0) if len(parts) > 1 else parts[0]
    return x


def is_patch_conv(stage) -> bool:
    return stage.stride == stage.weights.shape[-1] and not stage.pad and stage.border != "wrap"


FOLD_COLUMNS = 16  # outputs a fold may give: one 16-wide column block of XNNPACK's float32 GEMM


def fold_width(stage, width: int, largest: int) -> int:
    """Pixels L a patch-k group's image rows are folded by: the largest patch when its L/k
    patches' outputs (C per digit plane) number at most FOLD_COLUMNS, else the widest k r
    that does and divides the width (at least k itself)."""
    k, outputs = stage.stride, stage.weights.shape[0] * len(digit_planes(stage.weights))
    if largest % k == 0 and width % largest == 0 and largest // k * outputs <= FOLD_COLUMNS:
        return largest
    return k * max(r for r in range(1, FOLD_COLUMNS + 1)
                   if width % (k * r) == 0 and (r == 1 or r * outputs <= FOLD_COLUMNS))


def folded_image(g: TfliteGraph, image: int, fold: int) -> int:
    """The uint8 (1, H, W, 3) image as float32 (1, H, W / fold, 3 fold): RESHAPE, then DEQUANTIZE."""
    n, h, w, _ = g.shape(image)
    shape = [n, h, w // fold, 3 * fold]
    folded = g.op(Op.RESHAPE, [image, g.const(f"fold{fold}_shape", np.array(shape, np.int32))], np.uint8, shape,
                  f"image_fold{fold}", zero_point=0)
    return g.op(Op.DEQUANTIZE, [folded], np.float32, shape, f"image_f32_fold{fold}")


def fold_conv(g: TfliteGraph, folded: int, fold: int, weights: np.ndarray, tag: str) -> int:
    """The k x k stride-k conv of the image from its fold (folded_image): a CONV_2D with kernel
    and stride (k, 1) and r = fold / k patches side by side, filter[p O + o, y, 0, 3 (p k + v) + ch]
    = W[o, ch, y, v] (zero off the diagonal blocks), then RESHAPE (1, H/k, W/fold, r O) ->
    (1, H/k, W/k, O): the outputs of patch j = r J + p are those of fold J's block p."""
    n, h, w, depth = g.shape(folded)
    o, k = weights.shape[0], weights.shape[-1]
    r = fold // k
    filt = np.zeros((r, o, k, 1, r, k, 3), np.float32)
    for p in range(r):
        filt[p, :, :, 0, p] = weights.transpose(0, 2, 3, 1)  # (o, y, v, ch)
    sums = g.op(Op.CONV_2D, [folded, g.const(f"{tag}_filter", filt.reshape(r * o, k, 1, depth)),
                             g.const(f"{tag}_bias", np.zeros(r * o, np.float32))], np.float32,
                [n, h // k, w, r * o], f"{tag}_conv_folded", Padding=tflite.Padding.VALID, StrideW=1, StrideH=k,
                DilationWFactor=1, DilationHFactor=1)
    shape = [n, h // k, w * r, o]
    return g.op(Op.RESHAPE, [sums, g.const(f"{tag}_conv_shape", np.array(shape, np.int32))], np.float32, shape,
                f"{tag}_conv")


def accumulate(g: TfliteGraph, x: int, weights: np.ndarray, stride: int, pad: int, tag: str,
               folded: tuple[int, int] | None = None) -> int:
    """Exact accumulator sum W * x of float32 x holding uint8 values: the digit planes as blocks
    of output channels of one float32 CONV_2D (plane i in channels i*C .. i*C + C - 1), on
    folded = (folded_image tensor, its fold) for a patch conv; one plane: that float32
    output itself (integers below 2^24), else CAST to int32, block i SLICEd, times 16^i, added."""
    c = weights.shape[0]
    planes = digit_planes(weights)
    if folded is not None:
        sums = fold_conv(g, *folded, np.concatenate(planes), tag)
    else:
        sums = conv_float(g, x, np.concatenate(planes), np.zeros(len(planes) * c), stride, pad, tag)
    shape = g.shape(sums)
    if len(planes) == 1:
        return sums
    sums = g.op(Op.CAST, [sums], np.int32, shape, f"{tag}_planes_int")
    n, h, w, _ = shape
    acc = None
    for i in range(len(planes)):
        part = g.op(Op.SLICE, [sums, g.const(f"{tag}_plane{i}_begin", np.array([0, 0, 0, i * c], np.int32)),
                               g.const(f"{tag}_plane{i}_size", np.array([n, h, w, c], np.int32))],
                    np.int32, [n, h, w, c], f"{tag}_plane{i}_int")
        if i:
            part = g.op(Op.MUL, [part, g.const(f"{tag}_scale{i}", np.array([16 ** i], np.int32))], np.int32,
                        [n, h, w, c], f"{tag}_plane{i}_scaled")
            part = g.op(Op.ADD, [acc, part], np.int32, [n, h, w, c], f"{tag}_sum{i}")
        acc = part
    return acc


def float_count(buckets) -> bool:
    """Whether the bucket index can be taken in float32: the clipped accumulator, its offset
    from lo and every candidate (at most hi + 1) are integers below 2^24 in magnitude, so
    the clip, the shift (times 2^-s, FLOOR) and the compares are exact."""
    lo, hi = buckets.lo.astype(np.int64), buckets.hi.astype(np.int64)
    return bool((hi - lo < FLOAT_EXACT_LIMIT).all() and (np.maximum(-lo, hi + 1) < FLOAT_EXACT_LIMIT).all())


def count_thresholds(g: TfliteGraph, acc: int, stage, tag: str) -> int:
    """(1, h, w, C) accumulators (int32, or float32 integers below 2^24) -> int32 counts
    #{j : a >= T[c, j]}: by the bucket table (integer_spec.ThresholdBuckets) when its buckets
    hold at most BUCKET_COMPARES thresholds, else by binary search; both exact for every int32
    a < INT32_MAX. A float32 accumulator whose range allows it (float_count) keeps float32
    through the bucket index and the compares (XNNPACK's kernels instead of int32 broadcasting
    ones), exact for every a in the stage's accumulator range [lo, hi] (all a one-plane conv
    can give), the piles outside the range folded into the base table; else it is CAST to
    int32 first. TFLM has no int32 GATHER, so the tables are float32 (counts, and thresholds
    below 2^24, are exact; larger ones are stored as two 16-bit halves)."""
    buckets = stage_buckets(stage)
    shape = g.shape(acc)
    in_float = g.tensors[acc][1] == np.float32 and buckets is not None and float_count(buckets)
    if g.tensors[acc][1] == np.float32 and not in_float:
        acc = g.op(Op.CAST, [acc], np.int32, shape, f"{tag}_acc_int")
    if buckets is None:
        return binary_search_count(g, acc, stage.thresholds, tag)
    c, nb = buckets.base.shape
    kind = np.float32 if in_float else np.int32
    column = lambda name, v: g.const(f"{tag}_{name}", np.asarray(v, kind))  # noqa: E731  (C,): the last axis
    inside = g.op(Op.MAXIMUM, [acc, column("range_lo", buckets.lo)], kind, shape, f"{tag}_above_range_lo")
    inside = g.op(Op.MINIMUM, [inside, column("range_hi", buckets.hi)], kind, shape, f"{tag}_in_range")
    shifted = g.op(Op.ADD, [inside, column("minus_lo", -buckets.lo)], kind, shape, f"{tag}_above_lo")
    if in_float:  # x 2^-s exact; FLOOR of a value >= 0; the offset keeps it below 2^24
        bucket = g.op(Op.MUL, [shifted, column("bucket_scale", np.ldexp(1.0, -buckets.shift.astype(np.int64)))],
                      kind, shape, f"{tag}_bucket_scaled")
        bucket = g.op(Op.FLOOR, [bucket], kind, shape, f"{tag}_bucket")
    else:
        bucket = g.op(Op.DIV, [shifted, column("bucket_width", np.int64(1) << buckets.shift)], kind, shape,
                      f"{tag}_bucket")  # >= 0: truncation is floor
    index = g.op(Op.ADD, [bucket, column("bucket_offset", nb * np.arange(c))], kind, shape, f"{tag}_bucket_offset")
    if in_float:
        index = g.op(Op.CAST, [index], np.int32, shape, f"{tag}_bucket_index")

    def lookup(table: np.ndarray, name: str, as_float: bool = False) -> int:
        """table[index] as int32 (as_float: the float32 GATHER itself, entries below 2^24):
        one float32 GATHER, or hi = t >> 16 and lo = t & 0xFFFF when some entry reaches
        2^24, rebuilt as int32(hi) * 65536 + int32(lo)."""
        halves = [("", table)] if np.abs(table).max() < FLOAT_EXACT_LIMIT else [("_hi", table >> 16),
                                                                                 ("_lo", table & 0xFFFF)]
        parts = []
        for half, values in halves:
            value = g.op(Op.GATHER, [g.const(f"{tag}_{name}{half}_table", values.reshape(-1).astype(np.float32)), index],
                         np.float32, shape, f"{tag}_{name}{half}_f32", Axis=0, BatchDims=0)
            if as_float:
                return value
            parts.append(g.op(Op.CAST, [value], np.int32, shape, f"{tag}_{name}{half}"))
        if len(parts) == 1:
            return parts[0]
        upper = g.op(Op.MUL, [parts[0], g.const(f"{tag}_{name}_65536", np.array([65536], np.int32))], np.int32, shape,
                     f"{tag}_{name}_upper")
        return g.op(Op.ADD, [upper, parts[1]], np.int32, shape, f"{tag}_{name}")
    piles = range(buckets.values.shape[0])
    base = buckets.base.astype(np.int64)
    if in_float:  # a float32 a lies in [lo, hi]: a pile at or below lo is always passed, one above hi never
        below = buckets.values <= buckets.lo[None, :]  # outside: T <= lo or T > hi
        base, piles = base + (buckets.counts * below).sum(axis=0)[:, None], range(0)
    count = lookup(base, "bucket_base")
    terms = []
    for m in range(buckets.candidates.shape[0]):  # INT32_MAX -> hi + 1: never passed by a clipped a either
        candidate = lookup(np.minimum(buckets.candidates[m], buckets.hi[:, None] + 1), f"candidate{m}", in_float)
        passed = g.op(Op.GREATER_EQUAL, [inside, candidate], np.bool_, shape, f"{tag}_ge{m}")
        terms.append(g.op(Op.CAST, [passed], np.int32, shape, f"{tag}_passed{m}"))
    for k in piles:  # the piles of thresholds outside the range
        passed = g.op(Op.GREATER_EQUAL, [acc, column(f"outside{k}", buckets.values[k])], np.bool_, shape,
                      f"{tag}_ge_outside{k}")
        passed = g.op(Op.CAST, [passed], np.int32, shape, f"{tag}_passed_outside{k}")
        counts = g.const(f"{tag}_outside{k}_count", buckets.counts[k].astype(np.int32))
        terms.append(g.op(Op.MUL, [passed, counts], np.int32, shape, f"{tag}_outside{k}"))
    for i, term in enumerate(terms):
        count = g.op(Op.ADD, [count, term], np.int32, shape, f"{tag}_count{i}")
    return count


def binary_search_count(g: TfliteGraph, acc: int, thresholds: np.ndarray, tag: str) -> int:
    """(1, h, w, C) int32 accumulators -> int32 counts #{j : a >= T[c, j]} by binary search, any a < INT32_MAX."""
    shape = g.shape(acc)
    c = thresholds.shape[0]
    padded = padded_thresholds(thresholds)
    hi = g.const(f"{tag}_thresholds_hi", (padded >> 16).astype(np.float32).ravel())
    lo = g.const(f"{tag}_thresholds_lo", (padded & 0xFFFF).astype(np.float32).ravel())
    first = g.const(f"{tag}_threshold_127", padded[:, 127].astype(np.int32))
    ge = g.op(Op.GREATER_EQUAL, [acc, first], np.bool_, shape, f"{tag}_ge128")
    pos = g.op(Op.CAST, [ge], np.int32, shape, f"{tag}_hit128")
    pos = g.op(Op.MUL, [pos, g.const(f"{tag}_step128", np.array([128], np.int32))], np.int32, shape, f"{tag}_pos128")
    for step in (64, 32, 16, 8, 4, 2, 1):
        offset = g.const(f"{tag}_offset{step}", (np.arange(c) * 256 + step - 1).astype(np.int32))
        index = g.op(Op.ADD, [pos, offset], np.int32, shape, f"{tag}_index{step}")
        parts = []
        for half, table in (("hi", hi), ("lo", lo)):
            value = g.op(Op.GATHER, [table, index], np.float32, shape, f"{tag}_{half}{step}", Axis=0, BatchDims=0)
            parts.append(g.op(Op.CAST, [value], np.int32, shape, f"{tag}_{half}{step}_int"))
        upper = g.op(Op.MUL, [parts[0], g.const(f"{tag}_65536_{step}", np.array([65536], np.int32))], np.int32,
                     shape, f"{tag}_upper{step}")
        threshold = g.op(Op.ADD, [upper, parts[1]], np.int32, shape, f"{tag}_threshold{step}")
        ge = g.op(Op.GREATER_EQUAL, [acc, threshold], np.bool_, shape, f"{tag}_ge{step}")
        hit = g.op(Op.CAST, [ge], np.int32, shape, f"{tag}_hit{step}")
        if step > 1:
            hit = g.op(Op.MUL, [hit, g.const(f"{tag}_step{step}", np.array([step], np.int32))], np.int32, shape,
                       f"{tag}_add{step}")
        pos = g.op(Op.ADD, [pos, hit], np.int32, shape, f"{tag}_pos{step}")
    return pos


def narrow(g: TfliteGraph, value: int, offset: int, dtype, name: str) -> int:
    """int32 (value + offset) -> int8 or uint8 output. TFLM cannot CAST to uint8, so uint8 is
    CAST to int8 of (value + offset - 128), then QUANTIZE with zero point 128 (exact shift)."""
    shape = g.shape(value)
    shift = -128 if dtype == np.uint8 else 0
    if offset + shift:
        value = g.op(Op.ADD, [value, g.const(f"{name}_offset", np.array([offset + shift], np.int32))], np.int32,
                     shape, f"{name}_int32")
    if dtype == np.int8:
        return g.op(Op.CAST, [value], np.int8, shape, name)
    value = g.op(Op.CAST, [value], np.int8, shape, f"{name}_int8", zero_point=0)
    return g.op(Op.QUANTIZE, [value], np.uint8, shape, name, zero_point=128)


def threshold_conv_model(spec: ThresholdConvSpec, height: int, width: int, output_names: list[str]) -> bytes:
    g = TfliteGraph()
    image = g.tensor("image", np.uint8, [1, height, width, 3], zero_point=0)
    out_dtype = np.int8 if spec.out_dtype == "int8" else np.uint8
    outputs, folds, x = [], {}, None
    largest = max((s.stride for s in spec.stages if is_patch_conv(s)), default=0)
    for i, (stage, name) in enumerate(zip(spec.stages, output_names)):
        tag = f"s{i}"
        if is_patch_conv(stage):
            fold = fold_width(stage, width, largest)
            if fold not in folds:
                folds[fold] = folded_image(g, image, fold)
            acc = accumulate(g, None, stage.weights, stage.stride, 0, tag, (folds[fold], fold))
        else:
            if x is None:
                x = g.op(Op.DEQUANTIZE, [image], np.float32, [1, height, width, 3], "image_f32")
            wrap = stage.border == "wrap"
            acc = accumulate(g, wrap_pad(g, x, stage.pad, tag) if wrap else x, stage.weights, stage.stride,
                             0 if wrap else stage.pad, tag)
        count = count_thresholds(g, acc, stage, tag)
        outputs.append(narrow(g, count, spec.base, out_dtype, name))
    return g.serialize([image], outputs, spec.kind)


def probe_tensors(spec) -> dict[str, str | tuple[str, str]]:
    """divergence.py's probe name -> the tensor of these graphs holding it (for the inverse's
    accumulator, its summed hi and lo parts), read from LiteRT's preserved tensors."""
    if isinstance(spec, TableMixSpec):
        return {"table": "table", "accumulator": "sum_conv"}
    out = {}
    for i, stage in enumerate(spec.stages):
        planes = len(digit_planes(stage.weights))
        out[f"stage{i}.accumulator"] = f"s{i}_sum{planes - 1}" if planes > 1 else f"s{i}_conv"
    return out


def probe_values(spec, tensors: dict[str, np.ndarray | tuple], height: int, width: int) -> dict[str, np.ndarray]:
    """Preserved NHWC tensors -> divergence.py's layout. The inverse's table rows (1, H, W,
    terms, 6) come back as hi * 65536 + lo per (term, output), with the bias taken back out of
    channel 0's centre tap; its accumulator as H * 65536 + L from the two scaled sums."""
    if not isinstance(spec, TableMixSpec):
        return {name: t.transpose(0, 3, 1, 2).astype(np.int64) for name, t in tensors.items()}
    n, h, w = tensors["table"].shape[0], height, width
    rows = tensors["table"].astype(np.int64).reshape(n, h, w, -1, 6)
    entries = (rows[..., :3] * 65536 + rows[..., 3:]).transpose(0, 3, 1, 2, 4).copy()  # (1, T, H, W, 3)
    k = spec.kernel
    entries[:, (k // 2) * k + k // 2] -= spec.bias
    j = min(spec.shift, 16)
    parts = np.rint(tensors["accumulator"].astype(np.float64).reshape(n, h, w, 6) * 2.0 ** np.repeat([j - 16, j], 3))
    acc = parts[..., :3].astype(np.int64) * 65536 + parts[..., 3:].astype(np.int64)
    return {"table": entries, "accumulator": acc.transpose(0, 3, 1, 2)}


def table_mix_model(spec: TableMixSpec, height: int, width: int, output_name: str) -> bytes:
    g = TfliteGraph()
    c, k = spec.tables.shape[0], spec.kernel
    terms = c * k * k
    shape = [1, height, width, 3]
    codec = g.tensor("codec", np.uint8, shape, zero_point=0)
    z = g.op(Op.DEQUANTIZE, [codec], np.float32, shape, "codec_f32")
    if spec.pad:  # + 1 before the zero padding, so that 0 means outside
        z = g.op(Op.ADD, [z, g.const("one_f32", np.array([1], np.float32))], np.float32, shape, "codec_plus_one")
    select = np.zeros((terms, c, k, k))  # output channel (c, u, v) picks z + 1 at that tap
    for j, (ci, u, v) in enumerate(np.ndindex(c, k, k)):
        select[j, ci, u, v] = 1
    offsets = 257 * np.arange(terms) + (0 if spec.pad else 1)
    index = conv_float(g, z, select, offsets, 1, spec.pad, "select")  # an ADD of the offsets took 4 ms longer at 1080p
    index = g.op(Op.CAST, [index], np.int32, g.shape(index), "row_index")
    rows = spec.rows()
    rows[0, k // 2, k // 2, 1:] += spec.bias  # the centre tap is always inside the image
    total = (np.abs(rows).max(axis=3).reshape(terms, 3).sum(axis=0) // 65536).max() + terms  # summed |hi| parts
    assert total < FLOAT_EXACT_LIMIT, "freeze keeps |acc| < 2^39, so the summed hi parts are float32-exact"
    rows = rows.reshape(terms * 257, 3)
    table = np.concatenate([rows >> 16, rows & 0xFFFF], axis=1).astype(np.float32)  # (T * 257, 6): hi, lo
    n = height * width
    index = g.op(Op.RESHAPE, [index, g.const("index_shape", np.array([1, n, terms], np.int32))], np.int32,
                 [1, n, terms], "row_index_flat")
    picked = g.op(Op.GATHER, [g.const("table_rows", table), index], np.float32, [1, n, terms, 6], "table", Axis=0,
                  BatchDims=0)
    j = min(spec.shift, 16)
    sum_terms = np.zeros((6, 6, 1, terms))  # (1, T) kernel: per part and output, the sum over the terms, scaled
    for i in range(6):
        sum_terms[i, i] = 2.0 ** (16 - j) if i < 3 else 2.0 ** -j
    parts = conv_float(g, picked, sum_terms, np.zeros(6), 1, 0, "sum")  # (1, N, 1, 6): H 2^(16-j), L 2^-j
    parts = g.op(Op.FLOOR, [parts], np.float32, g.shape(parts), "sum_floor")  # the H side is integers already
    out = conv_float(g, parts, np.concatenate([np.eye(3), np.eye(3)], axis=1).reshape(3, 6, 1, 1), np.zeros(3), 1, 0,
                     "mixed")
    flat = g.shape(out)
    if spec.shift > j:
        out = g.op(Op.MUL, [out, g.const("shift_scale", np.array([2.0 ** (j - spec.shift)], np.float32))], np.float32,
                   flat, "scaled")
        out = g.op(Op.FLOOR, [out], np.float32, flat, "scaled_floor")
    out = g.op(Op.MAXIMUM, [out, g.const("zero_f32", np.array([0], np.float32))], np.float32, flat, "clamped_low")
    out = g.op(Op.MINIMUM, [out, g.const("top_f32", np.array([255], np.float32))], np.float32, flat, "clamped")
    out = g.op(Op.QUANTIZE, [out], np.int8, flat, "rgb_int8", zero_point=-128)  # integers, scale 1: exact
    out = g.op(Op.QUANTIZE, [out], np.uint8, flat, "rgb_flat", zero_point=0)
    rgb = g.op(Op.RESHAPE, [out, g.const("rgb_shape", np.array(shape, np.int32))], np.uint8, shape, output_name,
               zero_point=0)
    return g.serialize([codec], [rgb], spec.kind)

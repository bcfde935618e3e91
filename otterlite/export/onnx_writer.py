"""Integer spec -> ONNX graph, built node by node with onnx.helper (no torch.onnx).

Only exact forms are used (see shared EXACTNESS facts):
- accumulators: float32 Conv of the uint8 image cast to float, per part of kernel rows whose
  bound 255 * max(sum of positive, -sum of negative weights) is below 2^24 (row_parts: every
  partial sum an integer below 2^24, exact in any summation order), Cast to int32 and added
  (below 2^31 by freeze): for a patch conv one Conv with a block of output channels per part
  (zero weights outside its rows), for an overlapping kernel one Conv per part. Only
  if one kernel row alone exceeds 2^24: ConvInteger on uint8 x uint8 weights (int8 + 128,
  w_zero_point 128), 9..12-bit weights split W = 16 * W_hi + W_lo and combined in int32.
  Patch groups whose kernels divide the largest one K share one Conv with kernel and
  stride K while its outputs stay within MERGED_OUTPUTS (merged_patch_stages): each group's
  (K/k)^2 patches per window as blocks of output channels, DepthToSpace'd back; one read
  of the float image instead of one per group (at 1080p ~1 ms less on ORT here).
  A wrap-around border (WaLLoC) is Slice + Concat of the image before a pad-0 conv.
- thresholds: a bucket table when each bucket holds at most BUCKET_COMPARES thresholds
  (integer_spec.ThresholdBuckets: a' = clip(a, lo_c, hi_c), b = (a' - lo_c) / 2^s_c, count =
  base[c, b] + sum_m (a' >= cand[m, c, b]) + the piles outside the range; GatherElements + int32
  compares, exact for every int32 a); else the two-level count: T padded to 256
  columns with INT32_MAX; k = #{m : a >= T[16m + 15]} (0..15), then out = base + 16k +
  #{i < 16 : a >= T[16k + i]}, the 16 fine thresholds fetched with GatherElements.
- inverse tables: each tap's codes (+ 1, zero padded so 0 means outside the image) plus
  257 o pick output o's entry from the term's row of 3 x 257 (GatherElements: one element
  per term, output and pixel; a Gather of (term, 3) rows cost 3x more here); the terms are
  summed by an integer MatMul with a row of ones (ReduceSum took 4x longer); floor(acc /
  2^shift) is a Div of a value first clipped to [0, 256 * 2^shift - 1], so truncation equals
  floor. int32 when the spec's accumulator bound is below 2^31 (the default's is 2^29.9:
  every partial sum fits), else int64 (|acc| < 2^39 by freeze). At 1080p on ORT (1 thread,
  here) 75 -> 25 ms against an int64 Gather of (term, 3) rows and ReduceSum.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from otterlite.integer_spec.types import (FLOAT_EXACT_LIMIT, INT32_LIMIT, TableMixSpec, ThresholdConvSpec, exact_parts,
                                         padded_thresholds, stage_buckets, wrap_runs)

OPSET = 17


class GraphBuilder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self.count += 1
        out = name or f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}_{op_type}", **attrs))
        return out


def row_parts(weights: np.ndarray, limit: int = FLOAT_EXACT_LIMIT) -> list[tuple[int, int]] | None:
    """Kernel rows [a, b) in consecutive parts whose bound stays below `limit` for every
    channel c (integer_spec.types.exact_parts over the rows), or None if one row alone exceeds it."""
    w = weights.astype(np.int64)
    return exact_parts(np.maximum(w, 0).sum(axis=(1, 3)).T, np.minimum(w, 0).sum(axis=(1, 3)).T, limit)


def accumulate(g: GraphBuilder, x: str, weights: np.ndarray, stride: int, pad: int, tag: str, height: int) -> str:
    """Exact int32 accumulator of the integer conv of uint8 input x (height rows), float32 per
    part of kernel rows (row_parts: every partial sum an integer below 2^24, so exact in any
    order), Cast to int32 and added: a patch conv (stride = kernel, memory bound) as one Conv
    with a block of output channels per part (zero weights outside its rows), an overlapping
    kernel (compute bound) as one Conv per part on the rows it reads. Else ConvInteger."""
    k, c = weights.shape[-1], weights.shape[0]
    parts = row_parts(weights)
    if parts is not None:
        xf = g.op("Cast", [x], to=TensorProto.FLOAT)
        if len(parts) == 1 or stride == k:
            sums = g.op("Conv", [xf, g.const(f"{tag}_weights_f32", part_blocks(weights, parts))], kernel_shape=[k, k],
                        strides=[stride, stride], pads=[pad] * 4)
            return add_parts(g, sums, c, len(parts), tag)
        if pad:  # zero border made explicit, so that each part slices rows
            xf = g.op("Pad", [xf, g.const(f"{tag}_pads", np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))])
            height, pad = height + 2 * pad, 0
        acc = None
        for i, (a, b) in enumerate(parts):
            part = g.op("Conv", [along(g, xf, 2, a, height - (k - b), f"{tag}_part{i}"),
                                 g.const(f"{tag}_weights{i}_f32", weights[:, :, a:b, :].astype(np.float32))],
                        kernel_shape=[b - a, k], strides=[stride, stride], pads=[pad] * 4)
            part = g.op("Cast", [part], to=TensorProto.INT32)
            acc = part if acc is None else g.op("Add", [acc, part], f"{tag}_accumulator" if i == len(parts) - 1 else None)
        return acc
    conv = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    zp128 = g.const(f"{tag}_w_zero_point", np.array(128, np.uint8))
    if np.abs(weights).max() <= 127:
        w = g.const(f"{tag}_weights_u8", (weights + 128).astype(np.uint8))
        return g.op("ConvInteger", [x, w, "", zp128], f"{tag}_accumulator", **conv)
    assert np.abs(weights).max() <= 2047, "freeze keeps weights that a row's float bound refuses within 12 bits"
    lo = np.mod(weights, 16)
    hi = (weights - lo) // 16
    w_hi = g.const(f"{tag}_weights_hi_u8", (hi + 128).astype(np.uint8))
    w_lo = g.const(f"{tag}_weights_lo_u8", lo.astype(np.uint8))
    a_hi = g.op("ConvInteger", [x, w_hi, "", zp128], f"{tag}_accumulator_hi", **conv)
    a_lo = g.op("ConvInteger", [x, w_lo], f"{tag}_accumulator_lo", **conv)
    scaled = g.op("Mul", [a_hi, g.const(f"{tag}_sixteen", np.array(16, np.int32))])
    return g.op("Add", [scaled, a_lo], f"{tag}_accumulator")


def part_blocks(weights: np.ndarray, parts: list[tuple[int, int]]) -> np.ndarray:
    """(parts * C, 3, k, k) float32: block i holds the weights of kernel rows parts[i], zero elsewhere."""
    c = weights.shape[0]
    blocks = np.zeros((len(parts) * c, *weights.shape[1:]), np.float32)
    for i, (a, b) in enumerate(parts):
        blocks[i * c:(i + 1) * c, :, a:b] = weights[:, :, a:b]
    return blocks


def add_parts(g: GraphBuilder, sums: str, c: int, n_parts: int, tag: str) -> str:
    """(1, n_parts * C, h, w) float32 part sums (integers below 2^24) -> the int32 accumulator
    `{tag}_accumulator`: Cast, each block of C channels Sliced, added (below 2^31 by freeze)."""
    sums = g.op("Cast", [sums], f"{tag}_accumulator" if n_parts == 1 else None, to=TensorProto.INT32)
    if n_parts == 1:
        return sums
    acc = along(g, sums, 1, 0, c, f"{tag}_block0")
    for i in range(1, n_parts):
        acc = g.op("Add", [acc, along(g, sums, 1, i * c, (i + 1) * c, f"{tag}_block{i}")],
                   f"{tag}_accumulator" if i == n_parts - 1 else None)
    return acc


MERGED_OUTPUTS = 32  # output channels of one merged patch Conv: two of MLAS's 16-channel NCHWc blocks


def merged_patch_stages(stages, height: int, width: int) -> list[int]:
    """Indices of the patch-conv stages (stride = kernel k, no padding, float parts) that one
    Conv over the largest patch K reads together: the largest first, then smaller patches
    whose k divides K, largest first, while the outputs ((K/k)^2 patches x parts x C each)
    stay within MERGED_OUTPUTS. One image read instead of one per stage, for the same
    multiplications (each output's 16-channel block costs the same at any k)."""
    patch = [i for i, s in enumerate(stages) if s.stride == s.weights.shape[-1] and not s.pad and s.border != "wrap"
             and row_parts(s.weights) is not None]
    if not patch:
        return []
    outputs = lambda i, big: (big // stages[i].stride) ** 2 * len(row_parts(stages[i].weights)) * stages[i].weights.shape[0]  # noqa: E731
    patch.sort(key=lambda i: -stages[i].stride)
    big = stages[patch[0]].stride
    if height % big or width % big:
        return []
    chosen, total = [], 0
    for i in patch:
        if big % stages[i].stride == 0 and total + outputs(i, big) <= MERGED_OUTPUTS:
            chosen.append(i)
            total += outputs(i, big)
    return chosen if len(chosen) > 1 else []


def merged_accumulators(g: GraphBuilder, stages, chosen: list[int]) -> dict[int, str]:
    """{stage index: int32 accumulator} of the stages merged_patch_stages chose, from one
    float32 Conv with kernel and stride K: stage i's n x n patches per window (n = K / k_i)
    as blocks of output channels in DepthToSpace order ((dy n + dx) parts C + part C + c,
    each the stage's part_blocks placed at (k dy, k dx), zero elsewhere: the same integer sums),
    Sliced out and DepthToSpace'd (n) back to (1, parts C, H / k, W / k)."""
    big = stages[chosen[0]].stride
    blocks, ranges = [], []
    for i in chosen:
        k, weights = stages[i].stride, stages[i].weights
        part = part_blocks(weights, row_parts(weights))
        n = big // k
        placed = np.zeros((n * n, *part.shape[:2], big, big), np.float32)
        for dy in range(n):
            for dx in range(n):
                placed[dy * n + dx, :, :, k * dy:k * (dy + 1), k * dx:k * (dx + 1)] = part
        start = sum(b.shape[0] for b in blocks)
        blocks.append(placed.reshape(-1, 3, big, big))
        ranges.append((start, start + blocks[-1].shape[0], n))
    xf = g.op("Cast", ["image"], to=TensorProto.FLOAT)
    sums = g.op("Conv", [xf, g.const("merged_weights_f32", np.concatenate(blocks))], "merged_sums",
                kernel_shape=[big, big], strides=[big, big])
    accs = {}
    for i, (a, b, n) in zip(chosen, ranges):
        tag = f"s{i}"
        mine = along(g, sums, 1, a, b, f"{tag}_merged")
        if n > 1:
            mine = g.op("DepthToSpace", [mine], blocksize=n, mode="DCR")
        accs[i] = add_parts(g, mine, stages[i].weights.shape[0], len(row_parts(stages[i].weights)), tag)
    return accs


def along(g: GraphBuilder, x: str, axis: int, start: int, stop: int, tag: str) -> str:
    """x[start:stop] along axis (Slice)."""
    return g.op("Slice", [x, g.const(f"{tag}_start", np.array([start], np.int64)),
                          g.const(f"{tag}_stop", np.array([stop], np.int64)),
                          g.const(f"{tag}_axis", np.array([axis], np.int64))])


def count_thresholds(g: GraphBuilder, acc: str, stage, shape: tuple[int, int, int], tag: str) -> str:
    """(1, C, h, w) int32 accumulators -> (1, C, h, w) int32 counts #{j : a >= T[c, j]}: by
    the bucket table (integer_spec.ThresholdBuckets) when its buckets hold at most
    BUCKET_COMPARES thresholds, else by the two-level count; both exact for every int32 a < INT32_MAX.
    The bucket count runs on (1, C, h*w): each (1, C, buckets) table is read by GatherElements
    along its last axis, channel c's accumulators in row c."""
    buckets = stage_buckets(stage)
    if buckets is None:
        return count_two_level(g, acc, stage.thresholds, shape, tag)
    c, nb = buckets.base.shape
    h, w = shape[1:]
    column = lambda name, v: g.const(f"{tag}_{name}", np.asarray(v, np.int32).reshape(1, c, 1))  # noqa: E731
    table = lambda name, v: g.const(f"{tag}_{name}", np.asarray(v, np.int32).reshape(1, c, nb))  # noqa: E731
    flat = g.op("Reshape", [acc, g.const(f"{tag}_shape_1cn", np.array([1, c, h * w], np.int64))])
    inside = g.op("Min", [g.op("Max", [flat, column("range_lo", buckets.lo)]), column("range_hi", buckets.hi)])
    bucket = g.op("Div", [g.op("Sub", [inside, column("bucket_lo", buckets.lo)]),  # >= 0: Div is floor
                          column("bucket_width", np.int64(1) << buckets.shift)])
    count = g.op("GatherElements", [table("bucket_base", buckets.base), bucket], axis=2)
    terms = []
    for i in range(buckets.candidates.shape[0]):
        candidate = g.op("GatherElements", [table(f"bucket_candidates{i}", buckets.candidates[i]), bucket], axis=2)
        terms.append(g.op("Cast", [g.op("GreaterOrEqual", [inside, candidate])], to=TensorProto.INT32))
    for k in range(buckets.values.shape[0]):  # the piles of thresholds outside the range
        passed = g.op("Cast", [g.op("GreaterOrEqual", [flat, column(f"outside{k}", buckets.values[k])])],
                      to=TensorProto.INT32)
        terms.append(g.op("Mul", [passed, column(f"outside{k}_count", buckets.counts[k])]))
    for term in terms:
        count = g.op("Add", [count, term])
    return g.op("Reshape", [count, g.const(f"{tag}_shape_out", np.array([1, c, h, w], np.int64))], f"{tag}_count")


def count_two_level(g: GraphBuilder, acc: str, thresholds: np.ndarray, shape: tuple[int, int, int], tag: str) -> str:
    """(1, C, h, w) int32 accumulators -> (1, C, h, w) int32 counts #{j : a >= T[c, j]}, any a < INT32_MAX."""
    c, h, w = shape
    padded = padded_thresholds(thresholds).astype(np.int32)
    flat = g.op("Reshape", [acc, g.const(f"{tag}_shape_c1n", np.array([c, 1, h * w], np.int64))])
    coarse = g.const(f"{tag}_coarse_thresholds", padded[:, 15::16].reshape(c, 16, 1))
    block = g.op("ReduceSum", [g.op("Cast", [g.op("GreaterOrEqual", [flat, coarse])], to=TensorProto.INT32),
                               g.const(f"{tag}_axis1", np.array([1], np.int64))], keepdims=1)
    start = g.op("Mul", [block, g.const(f"{tag}_block", np.array(16, np.int32))])  # (C, 1, N)
    index = g.op("Add", [g.op("Cast", [start], to=TensorProto.INT64),
                         g.const(f"{tag}_offsets", np.arange(16, dtype=np.int64).reshape(1, 16, 1))])
    index = g.op("Reshape", [index, g.const(f"{tag}_shape_c_16n", np.array([c, 16 * h * w], np.int64))])
    fine = g.op("GatherElements", [g.const(f"{tag}_thresholds", padded), index], axis=1)
    fine = g.op("Reshape", [fine, g.const(f"{tag}_shape_c16n", np.array([c, 16, h * w], np.int64))])
    within = g.op("ReduceSum", [g.op("Cast", [g.op("GreaterOrEqual", [flat, fine])], to=TensorProto.INT32),
                                g.const(f"{tag}_axis1b", np.array([1], np.int64))], keepdims=1)
    total = g.op("Add", [start, within])
    return g.op("Reshape", [total, g.const(f"{tag}_shape_out", np.array([1, c, h, w], np.int64))], f"{tag}_count")


def wrap_pad(g: GraphBuilder, x: str, pad: int, height: int, width: int) -> str:
    """NCHW x wrap-padded by `pad` on every side: Slice + Concat of wrap_runs, rows then columns."""
    for axis, n in ((2, height), (3, width)):
        parts = [g.op("Slice", [x, g.const(f"wrap{axis}_{i}_start", np.array([a], np.int64)),
                                g.const(f"wrap{axis}_{i}_stop", np.array([b], np.int64)),
                                g.const(f"wrap{axis}_{i}_axis", np.array([axis], np.int64))])
                 for i, (a, b) in enumerate(wrap_runs(n, pad))]
        x = g.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
    return x


def output_shape(stage, height: int, width: int) -> tuple[int, int, int]:
    k = stage.weights.shape[-1]
    return (stage.weights.shape[0], (height + 2 * stage.pad - k) // stage.stride + 1,
            (width + 2 * stage.pad - k) // stage.stride + 1)


def threshold_conv_model(spec: ThresholdConvSpec, height: int, width: int, output_names: list[str]) -> onnx.ModelProto:
    g = GraphBuilder()
    out_type = TensorProto.INT8 if spec.out_dtype == "int8" else TensorProto.UINT8
    outputs = []
    merged = merged_accumulators(g, spec.stages, chosen) if (chosen := merged_patch_stages(spec.stages, height, width)) else {}
    for i, (stage, name) in enumerate(zip(spec.stages, output_names)):
        tag = f"s{i}"
        shape = output_shape(stage, height, width)
        if i in merged:
            acc = merged[i]
        elif stage.border == "wrap":
            x = wrap_pad(g, "image", stage.pad, height, width)
            acc = accumulate(g, x, stage.weights, stage.stride, 0, tag, height + 2 * stage.pad)
        else:
            acc = accumulate(g, "image", stage.weights, stage.stride, stage.pad, tag, height)
        count = count_thresholds(g, acc, stage, shape, tag)
        level = g.op("Add", [count, g.const(f"{tag}_base", np.array(spec.base, np.int32))])
        g.op("Cast", [level], name, to=out_type)
        outputs.append(helper.make_tensor_value_info(name, out_type, [1, *shape]))
    inputs = [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, height, width])]
    return finish(g, spec.kind, inputs, outputs)


def inverse_int_type(spec: TableMixSpec) -> int:
    """The integer type of the inverse graph: int32 when its accumulator bound allows, else int64."""
    return TensorProto.INT32 if spec.accumulator_bound < INT32_LIMIT else TensorProto.INT64


def table_mix_model(spec: TableMixSpec, height: int, width: int, output_name: str) -> onnx.ModelProto:
    g = GraphBuilder()
    c, k, p = spec.tables.shape[0], spec.kernel, spec.pad
    terms, n = c * k * k, height * width
    int_type = inverse_int_type(spec)
    ints = np.int32 if int_type == TensorProto.INT32 else np.int64
    z = g.op("Cast", ["codec"], to=int_type)
    if p:  # codes + 1 inside the image, 0 (each row's zero entry) outside
        z = g.op("Add", [z, g.const("one", np.array(1, ints))])
        z = g.op("Pad", [z, g.const("pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))], "codec_padded")
    if k > 1:  # one (1, 1, H, W) slice per term, in the table's (c, u, v) order
        taps = [g.op("Slice", [z, g.const(f"start_{ci}{u}{v}", np.array([ci, u, v], np.int64)),
                               g.const(f"end_{ci}{u}{v}", np.array([ci + 1, u + height, v + width], np.int64)),
                               g.const(f"axes_{ci}{u}{v}", np.array([1, 2, 3], np.int64))])
                for ci in range(c) for u in range(k) for v in range(k)]
        z = g.op("Concat", taps, "taps", axis=1)
    offsets = (257 * np.arange(3) + (0 if p else 1)).astype(ints).reshape(1, 3, 1)  # + 1 here when unpadded
    index = g.op("Add", [g.op("Reshape", [z, g.const("shape_t1n", np.array([terms, 1, n], np.int64))]),
                         g.const("output_offsets", offsets)])
    index = g.op("Reshape", [index, g.const("shape_t_3n", np.array([terms, 3 * n], np.int64))])
    rows = spec.rows().reshape(terms, 257, 3).transpose(0, 2, 1).reshape(terms, 3 * 257).astype(ints)
    picked = g.op("GatherElements", [g.const("table_rows", rows), index], "table_values", axis=1)  # (T, 3N)
    summed = g.op("MatMul", [g.const("ones", np.ones((1, terms), ints)), picked])  # (1, 3N): integer, exact
    summed = g.op("Reshape", [summed, g.const("shape_3n", np.array([3, n], np.int64))])
    acc = g.op("Add", [summed, g.const("bias", spec.bias.astype(ints).reshape(3, 1))], "accumulator")  # (3, N)
    top = 256 * 2 ** spec.shift - 1
    clipped = g.op("Clip", [acc, g.const("zero", np.array(0, ints)), g.const("top", np.array(top, ints))])
    out = g.op("Div", [clipped, g.const("divisor", np.array(2 ** spec.shift, ints))])
    out = g.op("Cast", [out], to=TensorProto.UINT8)
    g.op("Reshape", [out, g.const("shape_13hw", np.array([1, 3, height, width], np.int64))], output_name)
    inputs = [helper.make_tensor_value_info("codec", TensorProto.UINT8, [1, 3, height, width])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.UINT8, [1, 3, height, width])]
    return finish(g, spec.kind, inputs, outputs)


def probe_outputs(spec) -> dict[str, tuple[str, int]]:
    """divergence.py's probe name -> (tensor of these graphs, its element type): the
    intermediate values verify adds as extra outputs to a copy of the graph."""
    if isinstance(spec, TableMixSpec):
        ints = inverse_int_type(spec)
        return {"table": ("table_values", ints), "accumulator": ("accumulator", ints)}
    return {f"stage{i}.accumulator": (f"s{i}_accumulator", TensorProto.INT32) for i in range(len(spec.stages))}


def probe_values(spec, values: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """The extra outputs in divergence.py's layout: table (T, 3 N) -> (1, T, H, W, 3),
    accumulator (3, N) -> (1, 3, H, W); encoder accumulators are NCHW already."""
    if not isinstance(spec, TableMixSpec):
        return values
    return {"table": values["table"].reshape(1, -1, 3, height, width).transpose(0, 1, 3, 4, 2),
            "accumulator": values["accumulator"].reshape(1, 3, height, width)}


def finish(g: GraphBuilder, name: str, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="otterlite")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model

"""Integer spec types and their binary blob (numpy only).

ThresholdConvSpec (frappe-encoder, walloc-encoder, seaotter-forward), per stage (scale group):
    a[c, h, w] = sum_{i,u,v} W[c, i, u, v] * x[i, h*stride + u - pad, w*stride + v - pad]
                 (x uint8; border "zero": 0 outside the image, "wrap": rows and columns taken
                 modulo the frame's sides; exact integer, |a| <= accumulator_bound)
    out[c, h, w] = base + #{ j : a[c, h, w] >= T[c, j] }      (T ascending per channel)
  i.e. a monotone per-channel step function of an exact accumulator: no rounding at run
  time; all rounding (the float model's round-half-even) is inside the thresholds.

TableMixSpec (seaotter-inverse): the per-channel stages and the channel mix folded into one
table per (input channel c, tap u, v), holding all three outputs:
    acc[o, h, w] = bias[o] + sum_{c,u,v} tables[c, u, v, z[c, h + u - pad, w + v - pad], o]
                   (z uint8; a tap outside the image adds 0; exact integer sum,
                   |acc| <= accumulator_bound < 2^39: exact in int64 and float64; the
                   TFLite form sums hi * 2^16 + lo parts, each below 2^24 in float32)
    out[o, h, w] = clamp(floor(acc / 2^shift), 0, 255)      (bias holds +2^(shift-1):
                   round half up of the scaled sum)
  Every table entry is one rounded product round(W' * t(z) * 2^shift), so a huge table value
  (a singular code) never costs the ordinary codes their precision (integer_spec/freeze.py).

Blob layout (little-endian): magic b"OTLS", u8 version (2), 3 zero bytes, u32 JSON length
N, N bytes of UTF-8 JSON (kind, fields, and for each array its name, dtype, shape and
byte offset from the start of the array area), zero padding to a multiple of 16, then the
arrays, each C-contiguous and starting at a multiple of 16.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError

MAGIC = b"OTLS"
VERSION = 2  # 2: the inverse as folded tables (1 held tables + weights)
FLOAT_EXACT_LIMIT = 2 ** 24  # every partial sum below this is exact in float32
INT32_LIMIT = 2 ** 31
INT32_MAX = INT32_LIMIT - 1
TABLE_SUM_LIMIT = 2 ** 39  # the inverse's sum: exact in int64 / float64, and in TFLite's two float32 parts


def padded_thresholds(thresholds: np.ndarray, columns: int = 256) -> np.ndarray:
    """(C, L) thresholds -> (C, columns) int64, the extra columns INT32_MAX (never reached:
    freeze keeps every accumulator below it), so a count over all columns is unchanged."""
    padded = np.full((thresholds.shape[0], columns), INT32_MAX, np.int64)
    padded[:, : thresholds.shape[1]] = thresholds
    return padded


@dataclass
class ThresholdBuckets:
    """A threshold count as one table lookup and a few compares, exact for every int32 a.
    The thresholds inside channel c's accumulator range (lo_c < T <= hi_c) go into a table:
    [lo_c, hi_c] is cut into buckets of width 2^shift_c; with a' = clip(a, lo_c, hi_c) and
    b = (a' - lo_c) >> shift_c (bucket b covers lo_c + b 2^shift_c .. lo_c + (b + 1) 2^shift_c - 1),
        #{j : a >= T[c, j]} = base[c, b] + sum_m (a' >= candidates[m, c, b])
                              + sum_k counts[k, c] * (a >= values[k, c])
    base: the inside thresholds at or below the bucket's first value (passed by every a' in
    it); candidates: the at most M inside thresholds in the bucket (INT32_MAX: never passed);
    values / counts: the distinct thresholds outside the range (freeze piles the unreachable
    levels on lo and on just above hi), how many share each (padding: INT32_MAX, 0)."""
    shift: np.ndarray  # (C,) int64
    lo: np.ndarray  # (C,) int64
    hi: np.ndarray  # (C,) int64
    base: np.ndarray  # (C, B) int64, B buckets (the widest channel's; unused ones repeat the last)
    candidates: np.ndarray  # (M, C, B) int64
    values: np.ndarray  # (K, C) int64
    counts: np.ndarray  # (K, C) int64


def threshold_buckets(thresholds: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      max_buckets: int = 4096) -> ThresholdBuckets:
    """The smallest table (64, 128, ... up to max_buckets buckets per channel) whose buckets
    hold at most one threshold each, or the largest if none does."""
    tables = 64
    while True:
        buckets = bucket_table(thresholds, lo, hi, tables)
        if buckets.candidates.shape[0] == 1 or 2 * tables > max_buckets:
            return buckets
        tables *= 2


BUCKET_COMPARES = 4  # the most compares per accumulator of the emitters' bucket count; more: they search


def stage_buckets(stage) -> ThresholdBuckets | None:
    """The stage's bucket table for the emitters (ONNX, TFLite, C), or None where a bucket
    would hold more than BUCKET_COMPARES thresholds or the range spans 2^31 (int32 a - lo):
    those count by their search instead."""
    lo, hi = stage.accumulator_range()
    buckets = threshold_buckets(stage.thresholds, lo, hi)
    if buckets.candidates.shape[0] > BUCKET_COMPARES or int((hi - lo).max()) >= 2 ** 31:
        return None
    return buckets


def bucket_table(thresholds: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_buckets: int) -> ThresholdBuckets:
    """Per channel the narrowest power-of-two bucket width with at most max_buckets buckets
    over [lo_c, hi_c]; M = the most thresholds any bucket holds."""
    t = np.asarray(thresholds, np.int64)
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    c = t.shape[0]
    shift = np.zeros(c, np.int64)
    for i in range(c):
        while ((int(hi[i]) - int(lo[i])) >> int(shift[i])) + 1 > max_buckets:
            shift[i] += 1
    buckets = int(max(((int(h) - int(l)) >> int(s)) + 1 for h, l, s in zip(hi, lo, shift)))
    start = lo[:, None] + (np.arange(buckets)[None, :] << shift[:, None])  # (C, B) first value of each bucket
    end = np.minimum(start + (np.int64(1) << shift[:, None]) - 1, hi[:, None])
    inner = (t > lo[:, None]) & (t <= hi[:, None])  # (C, L)
    base = ((t[:, None, :] <= start[:, :, None]) & inner[:, None, :]).sum(-1)
    inside = (t[:, None, :] > start[:, :, None]) & (t[:, None, :] <= end[:, :, None])  # (C, B, L)
    m = max(int(inside.sum(-1).max()), 1)
    candidates = np.full((m, c, buckets), INT32_MAX, np.int64)
    for i in range(c):
        for b in np.flatnonzero(inside[i].any(-1)):
            found = t[i][inside[i, b]]
            candidates[: found.size, i, b] = found
    outside = [np.unique(t[i][~inner[i]], return_counts=True) for i in range(c)]
    k = max(1, max(len(v) for v, _ in outside))
    values, counts = np.full((k, c), INT32_MAX, np.int64), np.zeros((k, c), np.int64)
    for i, (v, n) in enumerate(outside):
        values[: len(v), i], counts[: len(v), i] = v, n
    return ThresholdBuckets(shift, lo, hi, base, candidates, values, counts)


def wrap_runs(n: int, pad: int) -> list[tuple[int, int]]:
    """The rows (or columns) of a side of n samples wrap-padded by `pad`, i.e. indices
    (-pad .. n + pad - 1) mod n, as contiguous [start, stop) runs: what the emitters slice
    and concatenate (pad <= n: [n - pad, n), [0, n), [0, pad))."""
    runs, index = [], -pad
    while index < n + pad:
        start = index % n
        stop = min(n, start + (n + pad - index))
        runs.append((start, stop))
        index += stop - start
    return runs


def accumulator_range(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (min, max) of sum W * x over all uint8 inputs x."""
    w = weights.reshape(weights.shape[0], -1).astype(np.int64)
    return 255 * np.minimum(w, 0).sum(1), 255 * np.maximum(w, 0).sum(1)


def exact_parts(positive: np.ndarray, negative: np.ndarray,
                limit: int = FLOAT_EXACT_LIMIT) -> list[tuple[int, int]] | None:
    """Terms [a, b) in consecutive parts (greedy, fewest) whose bound stays below `limit` for
    every channel, or None if one term alone exceeds it; positive / negative: (n, C) each
    term's sum of positive / negative weights. The bound of a part is 255 * max(its positive
    sum, -its negative sum): every partial sum of its products x * W (x in 0..255) lies between."""
    most = (limit - 1) // 255  # the largest sum whose bound is below limit
    zero = np.zeros((1, positive.shape[1]), np.int64)
    up = np.concatenate([zero, np.cumsum(positive.astype(np.int64), axis=0)])      # nondecreasing
    down = np.concatenate([zero, -np.cumsum(negative.astype(np.int64), axis=0)])  # nondecreasing
    n, parts, start = positive.shape[0], [], 0
    while start < n:  # the part ends where the first channel's positive or negative sum passes `most`
        stop = min(int(np.searchsorted(sums[:, c], sums[start, c] + most, side="right")) - 1
                   for sums in (up, down) for c in range(sums.shape[1]))
        if stop == start:
            return None
        parts.append((start, stop))
        start = stop
    return parts


@dataclass
class ConvStage:
    weights: np.ndarray  # (C, Cin, k, k) int32 holding the integer weights
    thresholds: np.ndarray  # (C, L) int64 ascending per channel
    stride: int
    pad: int
    channels: tuple[int, int] = (0, 0)  # latent channel range [start, end) for FRAPPE groups
    border: str = "zero"  # "zero": x = 0 outside the image; "wrap": x[(i mod H), (j mod W)] (WaLLoC)

    @property
    def weight_bits(self) -> int:
        """Bits of a signed integer that holds every weight."""
        return int(np.abs(self.weights).max()).bit_length() + 1

    def accumulator_range(self) -> tuple[np.ndarray, np.ndarray]:
        return accumulator_range(self.weights)


@dataclass
class ThresholdConvSpec:
    kind: str  # "frappe-encoder" | "walloc-encoder" | "seaotter-forward"
    stages: list[ConvStage]
    base: int  # -127 (int8 latents) or 0 (uint8 codec values)
    out_dtype: str  # "int8" | "uint8"
    source_sha256: str
    info: dict = field(default_factory=dict)

    @property
    def accumulator_bound(self) -> int:
        return int(max(max(-lo.min(), hi.max()) for lo, hi in (s.accumulator_range() for s in self.stages)))

    @property
    def largest_stride(self) -> int:
        return max(s.stride for s in self.stages)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) rounded up to multiples of the largest patch (the encoded frame)."""
        big = self.largest_stride
        return -(-height // big) * big, -(-width // big) * big


@dataclass
class TableMixSpec:
    kind: str  # "seaotter-inverse"
    tables: np.ndarray  # (C, k, k, 256, 3) int64: tables[c, u, v, z, o]
    bias: np.ndarray  # (3,) int64, includes the rounding constant 2^(shift-1)
    shift: int
    pad: int
    source_sha256: str
    info: dict = field(default_factory=dict)

    @property
    def kernel(self) -> int:
        return self.tables.shape[1]

    def rows(self) -> np.ndarray:
        """(C, k, k, 257, 3): row 0 of every term is 0 (a tap outside the image), row z + 1 is
        tables[c, u, v, z]; the emitters index it with the zero-padded codes + 1."""
        return np.concatenate([np.zeros(self.tables.shape[:3] + (1, 3), np.int64), self.tables], axis=3)

    @property
    def accumulator_bound(self) -> int:
        """max over outputs o of |bias[o]| + sum_{c,u,v} max_z |tables[c, u, v, z, o]|."""
        peaks = np.abs(self.tables).max(axis=3).reshape(-1, self.tables.shape[-1]).sum(axis=0)
        return int((peaks + np.abs(self.bias)).max())


def _arrays(spec) -> dict[str, np.ndarray]:
    if isinstance(spec, TableMixSpec):
        return {"tables": spec.tables, "bias": spec.bias}
    out = {}
    for i, s in enumerate(spec.stages):
        out[f"stage{i}.weights"] = s.weights
        out[f"stage{i}.thresholds"] = s.thresholds
    return out


def _fields(spec) -> dict:
    if isinstance(spec, TableMixSpec):
        return {"class": "TableMixSpec", "kind": spec.kind, "shift": spec.shift, "pad": spec.pad,
                "source_sha256": spec.source_sha256, "info": spec.info}
    return {"class": "ThresholdConvSpec", "kind": spec.kind, "base": spec.base, "out_dtype": spec.out_dtype,
            "source_sha256": spec.source_sha256, "info": spec.info,
            "stages": [{"stride": s.stride, "pad": s.pad, "channels": list(s.channels), "border": s.border}
                       for s in spec.stages]}


def save_spec(spec) -> bytes:
    arrays, layout, offset = _arrays(spec), [], 0
    for name, arr in arrays.items():
        dtype = "<i4" if np.abs(arr).max(initial=0) < INT32_LIMIT else "<i8"
        layout.append({"name": name, "dtype": dtype, "shape": list(arr.shape), "offset": offset})
        offset += -(-arr.size * np.dtype(dtype).itemsize // 16) * 16
    meta = json.dumps({**_fields(spec), "arrays": layout}).encode()
    head = MAGIC + struct.pack("<B3xI", VERSION, len(meta)) + meta
    head += bytes(-len(head) % 16)
    body = bytearray(offset)
    for item, arr in zip(layout, arrays.values()):
        raw = np.ascontiguousarray(arr, dtype=item["dtype"]).tobytes()
        body[item["offset"]: item["offset"] + len(raw)] = raw
    return head + bytes(body)


def read_spec(source, file_name: str) -> tuple:
    """(spec, name for messages) from its bytes, a .spec file, or an export DIR holding `file_name`."""
    if isinstance(source, bytes):
        return load_spec(source, "spec"), "spec"
    path = Path(source)
    path = path / file_name if path.is_dir() else path
    if not path.is_file():
        model = file_name.removesuffix(".spec")
        raise OtterliteError(f"{path}: no such file; run 'otterlite export {model} -o DIR' and pass DIR")
    return load_spec(path.read_bytes(), str(path)), str(path)


ENCODER_KINDS = ("frappe-encoder", "walloc-encoder")
BORDERS = ("zero", "wrap")
KINDS = {"ThresholdConvSpec": (*ENCODER_KINDS, "seaotter-forward"), "TableMixSpec": ("seaotter-inverse",)}
OUT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
MAX_NDIM = 6


def load_spec(data: bytes, source: str = "spec"):
    """Parse and check a spec blob: header, JSON fields and types, each array's dtype, shape
    and place inside the file, and the spec's invariants (square kernels, ascending
    thresholds within the output range, table shapes, the accumulator bounds) before anything
    runs it. Any fault is one OtterliteError naming the file."""
    def bad(what: str) -> OtterliteError:
        return OtterliteError(f"{source}: corrupted integer spec ({what}); re-run 'otterlite export'")

    if len(data) < 12 or data[:4] != MAGIC:
        raise OtterliteError(f"{source}: not an otterlite integer spec (magic {data[:4]!r})")
    version, length = struct.unpack_from("<B3xI", data, 4)
    if version != VERSION:
        fix = "re-run 'otterlite export' with this otterlite" if version < VERSION else "upgrade otterlite"
        raise OtterliteError(f"{source}: spec version {version}; this otterlite reads {VERSION}: {fix}")
    if 12 + length > len(data):
        raise bad(f"header of {length} bytes in a file of {len(data)}: truncated")
    try:
        meta = json.loads(data[12:12 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise bad(f"header is not JSON: {str(err)[:80]}") from None
    if not isinstance(meta, dict) or meta.get("class") not in KINDS:
        raise bad(f"class {meta.get('class') if isinstance(meta, dict) else meta!r:.40}")
    if meta.get("kind") not in KINDS[meta["class"]]:
        raise bad(f"kind {meta.get('kind')!r:.40} for {meta['class']}")
    for key, kind in (("source_sha256", str), ("info", dict), ("arrays", list)):
        if not isinstance(meta.get(key), kind):
            raise bad(f"field {key!r} missing or not a {kind.__name__}")
    arrays = read_arrays(data, meta["arrays"], 12 + length + (-(12 + length) % 16), bad)
    if meta["class"] == "TableMixSpec":
        return table_mix_spec(meta, arrays, bad)
    return threshold_conv_spec(meta, arrays, bad)


def is_int(value, low: int = -2 ** 63, high: int = 2 ** 63) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def read_arrays(data: bytes, layout: list, start: int, bad) -> dict[str, np.ndarray]:
    """The arrays the layout names, each checked to lie inside `data` (so no length field can
    make this allocate more than the file holds), as int64."""
    arrays = {}
    for item in layout:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item.get("dtype") not in ("<i4", "<i8"):
            raise bad(f"array entry {str(item)[:60]}")
        shape, offset = item.get("shape"), item.get("offset")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(is_int(d, 0, len(data)) for d in shape) \
                or not is_int(offset, 0, len(data)):
            raise bad(f"array {item['name']!r:.40}: shape {str(shape):.40}, offset {str(offset):.20}")
        count = int(np.prod(shape, dtype=object))
        if start + offset + count * np.dtype(item["dtype"]).itemsize > len(data):
            raise bad(f"array {item['name']!r:.40} of shape {shape} runs past the end of the file")
        arr = np.frombuffer(data, dtype=item["dtype"], count=count, offset=start + offset)
        arrays[item["name"]] = arr.reshape(shape).astype(np.int64)
    return arrays


def array(arrays: dict, name: str, ndim: int, bad) -> np.ndarray:
    if name not in arrays or arrays[name].ndim != ndim:
        raise bad(f"array {name!r} missing or not {ndim}-D")
    return arrays[name]


def table_mix_spec(meta: dict, arrays: dict, bad) -> TableMixSpec:
    tables, bias = array(arrays, "tables", 5, bad), array(arrays, "bias", 1, bad)
    c, k, k2, codes, outs = tables.shape
    if not (c == 3 and k == k2 and k % 2 == 1 and codes == 256 and outs == 3) or bias.shape != (3,):
        raise bad(f"tables of shape {tables.shape}, bias {bias.shape}: expected (3, k, k, 256, 3), k odd, and (3,)")
    if not is_int(meta.get("shift"), 0, 40) or not is_int(meta.get("pad"), 0, k // 2):
        raise bad(f"shift {meta.get('shift')!r:.20} (0..40) or pad {meta.get('pad')!r:.20} (0..{k // 2})")
    spec = TableMixSpec(meta["kind"], tables, bias, meta["shift"], meta["pad"], meta["source_sha256"], meta["info"])
    if spec.accumulator_bound >= TABLE_SUM_LIMIT:
        raise bad(f"accumulator bound {spec.accumulator_bound} is not below 2^39")
    return spec


def threshold_conv_spec(meta: dict, arrays: dict, bad) -> ThresholdConvSpec:
    if meta.get("out_dtype") not in OUT_RANGES or not is_int(meta.get("base"), -128, 255):
        raise bad(f"out_dtype {meta.get('out_dtype')!r:.20} or base {meta.get('base')!r:.20}")
    low, high = OUT_RANGES[meta["out_dtype"]]
    stages = meta.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= 16:
        raise bad("stages missing, empty or more than 16")
    out = []
    for i, s in enumerate(stages):
        weights = array(arrays, f"stage{i}.weights", 4, bad)
        thresholds = array(arrays, f"stage{i}.thresholds", 2, bad)
        if not isinstance(s, dict) or not is_int(s.get("stride"), 1, 1024) or not is_int(s.get("pad"), 0, 1024) \
                or not isinstance(s.get("channels"), list) or len(s["channels"]) != 2 \
                or not all(is_int(v, 0, 4096) for v in s["channels"]):
            raise bad(f"stage {i}: stride, pad or channels of {str(s)[:60]}")
        if s.get("border", "zero") not in BORDERS:
            raise bad(f"stage {i}: border {s.get('border')!r:.20} (expected one of {', '.join(BORDERS)})")
        if weights.shape[2] != weights.shape[3] or weights.shape[0] != thresholds.shape[0] or weights.shape[0] < 1 \
                or weights.shape[1] != 3:  # every threshold spec reads RGB
            raise bad(f"stage {i}: weights {weights.shape} and thresholds {thresholds.shape} do not match")
        if np.any(np.diff(thresholds, axis=1) < 0):
            raise bad(f"stage {i}: thresholds not ascending")
        if not (low <= meta["base"] and meta["base"] + thresholds.shape[1] <= high):
            raise bad(f"stage {i}: {thresholds.shape[1]} thresholds from base {meta['base']} leave {meta['out_dtype']}")
        out.append(ConvStage(weights, thresholds, s["stride"], s["pad"], tuple(s["channels"]), s.get("border", "zero")))
    check_info(meta["kind"], meta["info"], out, bad)
    spec = ThresholdConvSpec(meta["kind"], out, meta["base"], meta["out_dtype"], meta["source_sha256"], meta["info"])
    if spec.accumulator_bound >= INT32_LIMIT or any(np.abs(s.thresholds).max(initial=0) > INT32_MAX for s in out):
        raise bad(f"accumulator bound {spec.accumulator_bound} or a threshold beyond int32")
    return spec


def check_info(kind: str, info: dict, stages: list[ConvStage], bad) -> None:
    """The info fields the runtimes read: an encoder's scale groups (as its stages) and
    channel count; a forward transform's qtables (K x 3 x 64 ints in 1..255), when present."""
    if kind in ENCODER_KINDS:
        groups = info.get("groups")
        if not isinstance(groups, list) or [list(g) if isinstance(g, list) else g for g in groups] != \
                [[s.stride, *s.channels] for s in stages] or not is_int(info.get("n_ch"), 1, 4096):
            raise bad(f"info groups {str(groups)[:60]} do not match the stages, or n_ch {info.get('n_ch')!r:.20}")
    if kind == "walloc-encoder" and (len(stages) != 1 or stages[0].border != "wrap"
                                     or not is_int(info.get("J"), 1, 8) or stages[0].stride != 2 ** info["J"]
                                     or stages[0].weights.shape[-1] != 2 * stages[0].pad + 1):
        raise bad(f"a walloc-encoder spec has one wrap-around stage of stride 2^J and kernel 2 pad + 1 "
                  f"(J {info.get('J')!r:.20})")
    qtables = info.get("qtables")
    if kind == "seaotter-forward" and qtables is not None:
        if not isinstance(qtables, list) or not all(
                isinstance(q, list) and len(q) == 3 and all(isinstance(t, list) and len(t) == 64 and
                                                            all(is_int(v, 1, 255) for v in t) for t in q)
                for q in qtables):
            raise bad("qtables are not lists of 3 x 64 ints in 1..255")


def check_encoder_spec(spec, name: str = "spec", kinds: tuple[str, ...] = ENCODER_KINDS) -> None:
    """A FRAPPE encoder (patch convs) or a WaLLoC one (one wrap-around stage, load_spec checked),
    of one of `kinds`."""
    if not isinstance(spec, ThresholdConvSpec) or spec.kind not in kinds:
        codecs = " or ".join({"frappe-encoder": "FRAPPE", "walloc-encoder": "WaLLoC"}[k] for k in kinds)
        files = " or ".join(f"{k}.spec" for k in kinds)
        raise OtterliteError(f"{name}: a {getattr(spec, 'kind', type(spec).__name__)} spec, not a {codecs} "
                             f"encoder; pass the {files} written by 'otterlite export'")
    for s in spec.stages:
        if spec.kind == "frappe-encoder" and (s.pad or s.stride != s.weights.shape[-1] or s.weights.shape[1] != 3):
            raise OtterliteError(f"{name}: stage with stride {s.stride}, pad {s.pad}: not a patch conv")

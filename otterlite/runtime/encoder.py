"""The sensor: the FRAPPE encoder's integer spec run on rows as a sensor reads them out.
numpy only; the sums run on BLAS, exact by construction.

For a scale group with patch k (stride k, no padding) and image row r = k*i + u:
    acc[i, j, c] += sum_{v, ch} row_r[k*j + v, ch] * W[c, ch, u, v]
    after row u = k - 1: latent[c, i, j] = -127 + #{t : acc[i, j, c] >= T[c, t]}, then acc = 0.
The streaming encoder takes two rows at a time (a band) as one small matmul per group with
the weights of those two kernel rows. The products are floating point holding integers,
exact because every partial sum is an integer of magnitude at most 255 * sum |W| over its
terms: below 2^31 (the freeze step proved it), so always exact in float64, and exact in
float32 over any part of a patch whose bound is below 2^24 (exact_parts, checked when an
encoder is built: the streaming band's product, or the parts of the whole frame's
products in FrameEncoder). Band and part sums are added in int32 or float64, exact as well.
Between rows the streaming encoder keeps one accumulator row per group and its band buffer.

WaLLoC's spec (one 57x57 stride-8 stage whose border wraps around) runs as a whole frame
(WrapStage) or row by row (WrapStreamingEncoder).

Sizes that are not multiples of the largest patch are padded by edge replication to the
right (each row) and at the bottom (the last row repeated by `finish`), as `otterlite
encode` does, so every image size the model accepts gives the reference's latents.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.integer_spec.types import (FLOAT_EXACT_LIMIT, ThresholdBuckets, ThresholdConvSpec, accumulator_range,
                                         check_encoder_spec, exact_parts, read_spec, stage_buckets, wrap_runs)


def load_encoder_spec(source: str | Path | bytes, kind: str = "frappe-encoder") -> ThresholdConvSpec:
    """An exported encoder spec (FRAPPE, or WaLLoC with kind="walloc-encoder"): a DIR from
    `otterlite export`, a .spec file, or its bytes."""
    spec, name = read_spec(source, f"{kind}.spec")
    check_encoder_spec(spec, name, (kind,))
    return spec


def count_levels(thresholds: np.ndarray, acc: np.ndarray, base: int = -127) -> np.ndarray:
    """(..., C) accumulators (integers, any dtype) -> (C, ...) int8 base + #{t : acc >= T[c, t]}."""
    out = np.empty((thresholds.shape[0],) + acc.shape[:-1], np.int8)
    for c in range(thresholds.shape[0]):
        out[c] = np.searchsorted(thresholds[c], acc[..., c], side="right") + base
    return out


class ChannelSearch:
    """count_levels for (C, n) int32 accumulator rows in one searchsorted over all channels:
    T[c, t] + c 2^33 (int64) ascends across channels (|T|, |a| < 2^31), so
    #{t : a_c >= T[c, t]} = searchsorted(that, a_c + c 2^33, right) - c L."""

    def __init__(self, thresholds: np.ndarray):
        c, levels = thresholds.shape
        self.offset = (np.arange(c, dtype=np.int64) << 33)[:, None]
        self.flat = (thresholds.astype(np.int64) + self.offset).ravel()
        self.first = (levels * np.arange(c, dtype=np.int64))[:, None]

    def count(self, acc: np.ndarray, base: int = -127) -> np.ndarray:
        """(C, n) accumulators -> (C, n) int8 base + #{t : acc >= T[c, t]}."""
        return (np.searchsorted(self.flat, acc + self.offset, side="right") - self.first + base).astype(np.int8)


def kernel_rows(stage) -> np.ndarray:
    """W[c, ch, u, v] -> (K, 3K, C) int64: per kernel row u its (3K, C) weights in (ch, v)
    order, the order of a window of wrapped pixels (3, K) flattened."""
    w = stage.weights.astype(np.int64)
    return w.transpose(2, 1, 3, 0).reshape(w.shape[2], 3 * w.shape[3], w.shape[0])


def wrapped_index(n: int, pad: int) -> np.ndarray:
    """The indices (-pad .. n + pad - 1) mod n (wrap_runs as one array)."""
    return np.concatenate([np.arange(a, b) for a, b in wrap_runs(n, pad)])


class WrapStage:
    """WaLLoC's one stage: kernel K, stride s, wrap-around border pad p. Per kernel row u,
        a[i, j, c] += sum_{ch, v} x[s*i + u - p, s*j + v - p, ch] * W[c, ch, u, v]   (indices mod H, W)
    as one batched matmul of the frame's (h, w, 3K) windows by the (3K, C) slice of row u:
    float32 where row u's partial sums stay below 2^24 (255 * max(sum of its positive
    weights, -sum of its negative ones)), float64 otherwise; the rows u summed in float64
    (below 2^31: exact)."""

    def __init__(self, stage):
        self.k, self.s, self.p = stage.weights.shape[-1], stage.stride, stage.pad
        rows = kernel_rows(stage)
        bounds = [max(-lo.min(), hi.max()) for lo, hi in (accumulator_range(stage.weights[:, :, u:u + 1])
                                                          for u in range(self.k))]
        self.dtypes = [np.float32 if b < FLOAT_EXACT_LIMIT else np.float64 for b in bounds]
        self.rows = [np.ascontiguousarray(r, d) for r, d in zip(rows, self.dtypes)]

    def accumulate(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8, sides multiples of s -> (H/s, W/s, C) float64 holding the integers."""
        height, width = rgb.shape[:2]
        h, w = height // self.s, width // self.s
        rows, cols = wrapped_index(height, self.p), wrapped_index(width, self.p)
        frames = {d: rgb.astype(d)[rows][:, cols] for d in set(self.dtypes)}
        acc = np.zeros((h, w, self.rows[0].shape[1]), np.float64)
        for u, (weights, dtype) in enumerate(zip(self.rows, self.dtypes)):
            band = frames[dtype][u: u + self.s * (h - 1) + 1: self.s]  # (h, W + 2p, 3)
            windows = np.lib.stride_tricks.sliding_window_view(band, self.k, axis=1)[:, : self.s * w: self.s]
            acc += np.matmul(windows.reshape(h, w, 3 * self.k), weights)
        return acc


class PatchGroup:
    """Constants of one scale group for the streaming encoder: per band of `band` rows of a
    patch (rows u0 .. u0 + band - 1) its weights (k / band, C, k * band * 3) in the band
    buffer's order (column chunks of `chunk` pixels: jj, b, v, ch with column jj * chunk + v),
    weights[u0 / band][c, ((jj * band + b) * chunk + v) * 3 + ch] = W[c, ch, u0 + b, jj * chunk + v],
    as float32 where every partial sum of a band's product is provably below 2^24 (exact_parts
    finds one part), else float64, with zero rows up to a multiple of 4 channels (OpenBLAS
    takes a (4, K) x (K, n) product faster than a (3, K) one: 4.7 -> 3.1 us here); and the
    thresholds (C, L)."""

    def __init__(self, stage, band: int, chunk: int):
        self.k = stage.stride
        self.channels = stage.weights.shape[0]
        w = stage.weights.astype(np.int64).reshape(self.channels, 3, self.k // band, band, self.k // chunk, chunk)
        phases = w.transpose(2, 0, 4, 3, 5, 1).reshape(self.k // band, self.channels, 3 * self.k * band)
        self.exact32 = all(exact_parts(np.maximum(m, 0).T, np.minimum(m, 0).T) == [(0, m.shape[1])] for m in phases)
        self.weights = np.zeros((phases.shape[0], -(-self.channels // 4) * 4, phases.shape[2]),
                                np.float32 if self.exact32 else np.float64)
        self.weights[:, :self.channels] = phases
        self.search = ChannelSearch(stage.thresholds)

    def count(self, acc: np.ndarray) -> np.ndarray:
        """(C, n) accumulators -> (C, n) int8 latents -127 + #{t : acc >= T[c, t]}."""
        return self.search.count(acc)


class RowEncoder:
    """push / finish / encode / trace shared by the streaming encoders. A subclass sets width,
    height, padded_height, row, traced and a row_buffer of padded_width * 3 float64 values
    (or overrides put and put_last_again), and defines reset(), _accumulate() (adds row `row`,
    returns the completed latent rows) and latent_shapes() (per group (C, h, w))."""

    trace_dtype = np.int64

    def push(self, row: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        if not isinstance(row, np.ndarray) or row.dtype != np.uint8 or row.shape != (self.width, 3):
            got = f"{row.dtype} {row.shape}" if isinstance(row, np.ndarray) else type(row).__name__
            raise OtterliteError(f"row {self.row}: expected uint8 ({self.width}, 3), got {got}; the frame "
                                 f"continues at row {self.row}")
        if self.row >= self.height:
            self.reset()
            raise OtterliteError(f"row {self.height}: the frame has only {self.height} rows; frame discarded, "
                                 f"the encoder is reset for a new frame")
        self.put(row)
        return self._accumulate()

    def put(self, row: np.ndarray) -> None:
        """Row `row` into the buffer, padded on the right by repeating its last pixel."""
        pixels = self.row_buffer.reshape(-1, 3)
        pixels[: self.width] = row
        pixels[self.width:] = row[-1]

    def put_last_again(self) -> None:
        """The last image row as row `row` (the bottom padding): the row buffer still holds it."""

    def finish(self) -> list[tuple[int, int, np.ndarray]]:
        """Pad the bottom by repeating the last row and emit the remaining latent rows; the
        encoder is then ready for a new frame."""
        if self.row < self.height:
            missing = self.height - self.row
            self.reset()
            raise OtterliteError(f"frame ended after {self.height - missing} of {self.height} rows; frame "
                                 f"discarded, the encoder is reset for a new frame")
        out = []
        while self.row < self.padded_height:
            self.put_last_again()
            out += self._accumulate()
        self.reset()
        return out

    def encode(self, rgb: np.ndarray) -> list[np.ndarray]:
        """A whole (H, W, 3) frame through the streaming path -> per group (C, h, w) int8."""
        latents = [np.empty(shape, np.int8) for shape in self.latent_shapes()]
        rows = []
        for r in range(rgb.shape[0]):
            rows += self.push(rgb[r])
        for gi, i, z in rows + self.finish():
            latents[gi][:, i] = z
        return latents

    def trace(self, rgb: np.ndarray) -> list[np.ndarray]:
        """A debug path: per group the (C, h, w) accumulators this encoder counted thresholds
        on, for a whole (H, W, 3) frame."""
        self.traced = [np.zeros(shape, self.trace_dtype) for shape in self.latent_shapes()]
        try:
            self.encode(rgb)
            return self.traced
        finally:
            self.traced = None


class WrapStreamingEncoder(RowEncoder):
    """WaLLoC's spec row by row (RowEncoder's push / finish / encode / trace).
    Image row r (of the padded frame, H rows) is row t = r + m*H of the wrapped frame for
    every m with -p <= t < H + p; it adds W[:, :, u, :] . windows(row) to each latent row i
    with u = t - (s*i - p) in 0..K-1, and latent row i is counted once all K of its kernel
    rows are in. So latent rows 0..3 (whose windows start above the frame) complete with
    the frame's last rows, and the bottom ones (which read rows 0..p - s) are started by the
    first rows: their accumulators stay open, no image row is kept. Products in float64
    (every partial sum an integer below 2^31: exact)."""

    def __init__(self, spec: ThresholdConvSpec, width: int, height: int):
        check_encoder_spec(spec)
        stage = spec.stages[0]
        self.k, self.s, self.p = stage.weights.shape[-1], stage.stride, stage.pad
        self.width, self.height = width, height
        self.padded_height, self.padded_width = spec.padded_size(height, width)
        self.rows_out, self.cols_out = self.padded_height // self.s, self.padded_width // self.s
        self.weights = np.ascontiguousarray(kernel_rows(stage), np.float64)
        self.thresholds, self.base = stage.thresholds, spec.base
        self.cols = wrapped_index(self.padded_width, self.p)
        self.row_buffer = np.zeros(self.padded_width * 3, np.float64)
        self.traced, self.peak_open = None, 0
        self.reset()

    def reset(self) -> None:
        self.open, self.counts, self.row = {}, {}, 0

    @property
    def state_bytes(self) -> int:
        """Most accumulator rows open at once so far (float64) plus the row buffer."""
        return self.peak_open * self.cols_out * self.weights.shape[2] * 8 + self.row_buffer.nbytes

    def _accumulate(self) -> list[tuple[int, int, np.ndarray]]:
        r, n, s, p, k = self.row, self.padded_height, self.s, self.p, self.k
        windows = np.lib.stride_tricks.sliding_window_view(self.row_buffer.reshape(-1, 3)[self.cols], k, axis=0)
        windows = windows[: s * self.cols_out: s].reshape(self.cols_out, 3 * k)  # (w, (ch, v))
        done = []
        for t in range(r - n * (-(-(r + p) // n)), n + p, n):  # every wrapped copy t of row r
            if t < -p:
                continue
            for i in range(max(0, -(-(t + p - k + 1) // s)), min(self.rows_out - 1, (t + p) // s) + 1):
                acc = self.open.setdefault(i, np.zeros((self.cols_out, self.weights.shape[2])))
                acc += windows @ self.weights[t - (s * i - p)]
                self.counts[i] = self.counts.get(i, 0) + 1
        self.peak_open = max(self.peak_open, len(self.open))
        for i in [i for i, c in self.counts.items() if c == k]:
            acc = self.open.pop(i)
            del self.counts[i]
            if self.traced is not None:
                self.traced[0][:, i] = acc.T
            done.append((0, i, count_levels(self.thresholds, acc, self.base)))
        self.row += 1
        return done

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [(self.weights.shape[2], self.rows_out, self.cols_out)]


def streaming_encoder(spec: ThresholdConvSpec, width: int, height: int):
    """The row-by-row encoder of an encoder spec: StreamingEncoder (FRAPPE) or
    WrapStreamingEncoder (WaLLoC)."""
    check_encoder_spec(spec)
    cls = WrapStreamingEncoder if spec.kind == "walloc-encoder" else StreamingEncoder
    return cls(spec, width, height)


class StreamingEncoder(RowEncoder):
    """Push one (W, 3) uint8 row at a time; each push returns the latent rows it completed as
    (group index, latent row index, (C, W/k) int8). `finish()` completes the frame.
    Rows are kept in a band buffer of `band` rows (2 when every patch size is even and the
    products of two rows stay exact in float32, else 1), laid out in column chunks of
    `chunk` = gcd(patch sizes) pixels, (W / chunk, band, chunk, 3), so that for a group with
    patch k the band is one contiguous (W/k, k * band * 3) matrix: one product per group and
    band, acc (C, W/k) += weights[u0 / band] @ band^T; and a row is written in runs of chunk
    pixels."""

    def __init__(self, spec: ThresholdConvSpec, width: int, height: int):
        check_encoder_spec(spec)
        if spec.kind != "frappe-encoder":
            raise OtterliteError(f"StreamingEncoder runs FRAPPE specs only, not {spec.kind}; use "
                                 f"streaming_encoder(), which gives WrapStreamingEncoder for it")
        self.big = spec.largest_stride
        if width < self.big or height < self.big:
            raise OtterliteError(f"frame {width}x{height} is smaller than one {self.big}x{self.big} patch")
        self.width, self.height = width, height
        self.padded_height, self.padded_width = spec.padded_size(height, width)
        self.chunk = math.gcd(*(s.stride for s in spec.stages))
        self.groups = [PatchGroup(s, 2, self.chunk) for s in spec.stages] if self.chunk % 2 == 0 else []
        if not self.groups or not all(g.exact32 for g in self.groups):
            self.groups = [PatchGroup(s, 1, self.chunk) for s in spec.stages]
        self.band = self.groups[0].k // self.groups[0].weights.shape[0]
        dtype = np.result_type(*(g.weights for g in self.groups))
        self.acc = [np.zeros((g.channels, self.padded_width // g.k), np.int32) for g in self.groups]
        self.band_buffer = np.zeros((self.padded_width // self.chunk, self.band, self.chunk, 3), dtype)  # kept
        self.product = np.empty(max(g.weights.shape[1] * a.shape[1] for g, a in zip(self.groups, self.acc)), dtype)
        # views made once (at 1080p their making cost ~2 ms a frame): per group the band as its
        # (k band 3, W/k) matrix, its product and the product's rows of real channels; per band
        # row the slot's whole chunks and the row's pixels that fill them
        self.views = []
        for g, a in zip(self.groups, self.acc):
            product = self.product[: g.weights.shape[1] * a.shape[1]].reshape(-1, a.shape[1])
            self.views.append((self.band_buffer.reshape(a.shape[1], -1).T, product, product[:g.channels]))
        self.full = self.width // self.chunk
        self.slots = [self.band_buffer[:self.full, b] for b in range(self.band)]
        self.row = 0
        self.traced = None  # accumulators kept by trace()

    @property
    def state_bytes(self) -> int:
        """Working memory kept between rows: the accumulator rows plus the band buffer (which
        holds the last row for the bottom edge padding), excluding the constant weights and
        thresholds."""
        return sum(a.nbytes for a in self.acc) + self.band_buffer.nbytes

    @property
    def peak_bytes(self) -> int:
        """state_bytes plus the one temporary of a band: a group's matmul product."""
        return self.state_bytes + self.product.nbytes

    def put(self, row: np.ndarray) -> None:
        full = self.full
        self.slots[self.row % self.band][...] = row[: full * self.chunk].reshape(full, self.chunk, 3)
        if full < self.band_buffer.shape[0]:  # the right edge: the last pixel repeated
            slot = self.band_buffer[:, self.row % self.band]
            rest = self.width - full * self.chunk
            slot[full, :rest] = row[full * self.chunk:]
            slot[full, rest:] = row[-1]
            slot[full + 1:] = row[-1]

    def put_last_again(self) -> None:
        b, last = self.row % self.band, (self.height - 1) % self.band
        if b != last:
            self.band_buffer[:, b] = self.band_buffer[:, last]

    def reset(self) -> None:
        for a in self.acc:
            a[:] = 0
        self.row = 0

    def _accumulate(self) -> list[tuple[int, int, np.ndarray]]:
        """Once the band is full: acc (C, W/k) += weights[u0 / band] @ band^T, per group."""
        done, r = [], self.row
        self.row += 1
        if self.row % self.band:
            return done
        for gi, (g, acc, (band, product, kept)) in enumerate(zip(self.groups, self.acc, self.views)):
            np.matmul(g.weights[(r % g.k) // self.band], band, out=product)
            np.add(acc, kept, out=acc, casting="unsafe")  # integers below 2^31: exact in both
            if r % g.k == g.k - 1:
                if self.traced is not None:
                    self.traced[gi][:, r // g.k] = acc
                done.append((gi, r // g.k, g.count(acc)))
                acc[:] = 0
        return done

    trace_dtype = np.int32

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [(g.channels, self.padded_height // g.k, self.padded_width // g.k) for g in self.groups]


def encode_frame(spec: ThresholdConvSpec, rgb: np.ndarray) -> list[np.ndarray]:
    """Whole-frame mode: the same integer formula vectorised over all patch rows at once.
    rgb (H, W, 3) uint8 with sides multiples of the largest patch -> per group (C, h, w) int8.
    (FrameEncoder(spec) once, then .encode per frame, saves building its tables each time.)"""
    return FrameEncoder(spec).encode(rgb)


def frame_accumulators(spec: ThresholdConvSpec, rgb: np.ndarray) -> list[np.ndarray]:
    """encode_frame's accumulators: per group (h, w, C) float64 holding integers."""
    return FrameEncoder(spec).accumulators(rgb)


class FrameEncoder:
    """A whole frame at once. FRAPPE: per band of one largest patch's rows, the band copied
    into nested patch order (nested_patches) so that every group's patches are the rows of one
    matrix, and per group one matrix product with its weights in that order,
    a[patch, c] = sum_t patch[t] * W'[t, c]: float32 over parts of the patch whose bound is
    below 2^24 (exact_parts), each part a block of columns of the same product
    (part_columns), the parts summed in float64 (float64 if one value's bound is not); the
    band stays in cache between the products. The count by the spec's bucket table
    (count_by_buckets) where it has one, else by search (count_levels)."""

    def __init__(self, spec: ThresholdConvSpec):
        check_encoder_spec(spec)
        self.spec = spec
        self.buckets = [stage_buckets(s) for s in spec.stages]
        self.wrap = WrapStage(spec.stages[0]) if spec.kind == "walloc-encoder" else None
        self.chains = []  # FRAPPE: (chain, [(group index, levels, weights, parts)])
        for chain in [] if self.wrap else patch_chains([s.stride for s in spec.stages]):
            groups = []
            for g, stage in enumerate(spec.stages):
                if stage.stride in chain:
                    levels = chain[: chain.index(stage.stride) + 1]
                    weights = nested_weights(stage.weights, chain[len(levels) - 1:])
                    parts = exact_parts(np.maximum(weights, 0), np.minimum(weights, 0))
                    dtype = np.float32 if parts else np.float64
                    parts = parts or [(0, weights.shape[0])]
                    groups.append((g, levels, part_columns(weights, parts).astype(dtype), parts))
            self.chains.append((chain, groups))

    def encode(self, rgb: np.ndarray) -> list[np.ndarray]:
        """(H, W, 3) uint8 -> per group (C, h, w) int8."""
        return [count_levels(stage.thresholds, acc, self.spec.base) if buckets is None
                else count_by_buckets(buckets, acc, self.spec.base)
                for stage, buckets, acc in zip(self.spec.stages, self.buckets, self.accumulators(rgb))]

    def accumulators(self, rgb: np.ndarray) -> list[np.ndarray]:
        """(H, W, 3) uint8 -> per group (h, w, C) float64 holding the integers."""
        spec = self.spec
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise OtterliteError(f"frame must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
        big = spec.largest_stride
        h, w = rgb.shape[:2]
        if h % big or w % big:
            raise OtterliteError(f"frame {w}x{h}: sides must be multiples of {big} (pad with edge replication, "
                                 f"or use StreamingEncoder, which pads)")
        if self.wrap:
            return [self.wrap.accumulate(rgb)]
        out = [np.empty((h // s.stride, w // s.stride, s.weights.shape[0]), np.float64) for s in spec.stages]
        for chain, groups in self.chains:
            for y in range(0, h, chain[0]):
                bands = {}  # the band in nested order, per dtype
                for g, levels, weights, parts in groups:
                    if weights.dtype not in bands:
                        bands[weights.dtype] = nested_patches(rgb[y: y + chain[0]], chain, weights.dtype)
                    sums = small_products(bands[weights.dtype].reshape(-1, weights.shape[0]), weights)
                    c = spec.stages[g].weights.shape[0]
                    if len(parts) > 1:  # more parts: their columns added in float64
                        sums = sum(sums[:, p * c:(p + 1) * c].astype(np.float64) for p in range(len(parts)))
                    sums = sums[:, :c]
                    k = levels[-1]
                    out[g][y // k: (y + chain[0]) // k] = patch_order_to_rows(sums, chain[0], w, levels)
        return out


SMALL_PRODUCT = 10 ** 6  # rows x terms x columns of one product: OpenBLAS's unpacked small-matrix kernel
PRODUCT_COLUMNS = 8  # weight columns padded to a multiple of this


def part_columns(weights: np.ndarray, parts: list[tuple[int, int]]) -> np.ndarray:
    """(T, C) weights -> (T, n): part p's rows [a, b) in columns p C .. p C + C - 1, zero
    elsewhere (each column's partial sums stay within its part's bound), n = len(parts) C
    rounded up to PRODUCT_COLUMNS: OpenBLAS's kernels take N = 8 faster than N = 3 or 6 here
    (AVX2 kernels on this EPYC: 1080p products per band 148 -> 112 us, the 32x32 group's two
    parts in one product)."""
    t, c = weights.shape
    out = np.zeros((t, -(-len(parts) * c // PRODUCT_COLUMNS) * PRODUCT_COLUMNS), weights.dtype)
    for p, (a, b) in enumerate(parts):
        out[a:b, p * c:(p + 1) * c] = weights[a:b]
    return out


def small_products(patches: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """patches @ weights, in blocks of rows whose rows x terms x columns stays within
    SMALL_PRODUCT: OpenBLAS (numpy's wheels) multiplies those without packing the patches
    first. The 16x16 group's (240, 768) x (768, 6) per band costs 69 us as one product and
    30 us as two of 120 rows on a Xeon (1 thread, AVX-512): whole-frame encode 7.6 -> 6.4 ms at 1080p."""
    rows = max(1, SMALL_PRODUCT // (weights.shape[0] * weights.shape[1]))
    if rows >= patches.shape[0]:
        return patches @ weights
    out = np.empty((patches.shape[0], weights.shape[1]), weights.dtype)
    for r in range(0, patches.shape[0], rows):
        np.matmul(patches[r:r + rows], weights, out=out[r:r + rows])
    return out


def count_by_buckets(buckets: ThresholdBuckets, acc: np.ndarray, base: int = -127) -> np.ndarray:
    """(..., C) accumulators (integers) -> (C, ...) int8 base + the count by the bucket table
    (integer_spec.types.ThresholdBuckets: a' = clip(a, lo, hi), b = (a' - lo) >> shift,
    base[c, b] + the candidates a' passes + the piles a passes), as count_levels gives; in
    int32 (a and a' - lo are below 2^31: stage_buckets checks the range)."""
    a = np.moveaxis(acc, -1, 0).astype(np.int32, order="C").reshape(acc.shape[-1], -1)  # (C, n): long rows
    lo, nb = buckets.lo.astype(np.int32)[:, None], buckets.base.shape[1]
    x = np.clip(a, lo, buckets.hi.astype(np.int32)[:, None])
    index = ((x - lo) >> buckets.shift.astype(np.int32)[:, None]) + nb * np.arange(len(lo), dtype=np.int32)[:, None]
    count = np.take(buckets.base.astype(np.int16).reshape(-1), index)
    for candidates in buckets.candidates:
        count += x >= np.take(candidates.astype(np.int32).reshape(-1), index)
    for values, counts in zip(buckets.values, buckets.counts):
        count += (a >= values.astype(np.int32)[:, None]) * counts.astype(np.int16)[:, None]
    return (count + base).astype(np.int8).reshape(np.moveaxis(acc, -1, 0).shape)


def patch_chains(strides: list[int]) -> list[tuple[int, ...]]:
    """The distinct strides in chains, largest first, each dividing the one before it (one
    frame copy per chain serves all its groups)."""
    chains = []
    for k in sorted(set(strides), reverse=True):
        for chain in chains:
            if chain[-1] % k == 0:
                chain.append(k)
                break
        else:
            chains.append([k])
    return [tuple(c) for c in chains]


def digits(chain: tuple[int, ...]) -> list[int]:
    """The radices that split a coordinate below chain[0]: chain[0] / chain[1], ..., chain[-1]."""
    return [a // b for a, b in zip(chain, chain[1:])] + [chain[-1]]


def nested_patches(rgb: np.ndarray, chain: tuple[int, ...], dtype) -> np.ndarray:
    """(H, W, 3) uint8 -> (H/k0, W/k0, y1, x1, ..., yn, xn, 3) in dtype, y = k0 Y + k1 y1 + ...
    (k the chain): each patch of every stride in the chain is a contiguous run of values."""
    h, w = rgb.shape[:2]
    r = digits(chain)
    n = len(r)
    view = rgb.reshape(h // chain[0], *r, w // chain[0], *r, 3)
    order = [0, n + 1] + [a for d in range(1, n + 1) for a in (d, n + 1 + d)] + [2 * n + 2]
    out = np.empty([view.shape[a] for a in order], dtype)
    np.copyto(out, view.transpose(order))
    return out


def nested_weights(weights: np.ndarray, chain: tuple[int, ...]) -> np.ndarray:
    """W[c, ch, u, v] (patch chain[0]) -> (3 k^2, C) int64 in nested_patches' order within a patch."""
    c, _, k, _ = weights.shape
    r = digits(chain)
    n = len(r)
    w = weights.astype(np.int64).transpose(2, 3, 1, 0).reshape(*r, *r, 3, c)  # [u digits][v digits][ch][c]
    order = [a for d in range(n) for a in (d, n + d)] + [2 * n, 2 * n + 1]
    return w.transpose(order).reshape(3 * k * k, c)


def patch_order_to_rows(acc: np.ndarray, h: int, w: int, levels: tuple[int, ...]) -> np.ndarray:
    """(patches, C) in nested order (Y, X, y1, x1, ..., yi, xi) of patch levels[-1] -> (h/k, w/k, C)."""
    k, r = levels[-1], digits(levels)[:-1]
    n = len(r)
    acc = acc.reshape(h // levels[0], w // levels[0], *[d for d in r for _ in (0, 1)], -1)
    order = [0] + [2 + 2 * d for d in range(n)] + [1] + [3 + 2 * d for d in range(n)] + [2 * n + 2]
    return acc.transpose(order).reshape(h // k, w // k, -1)

"""Freeze the float models into integer specs (the only place floats meet integers).

Conv weights: per output channel c, W_int = round_half_even(W / s_c) with
s_c = max|W_c| / (2^(bits-1) - 1). The float model's per-channel function of the
pre-activation u, with u an affine function of the exact accumulator a, becomes the
ascending threshold table T[c, j] = min{ a : level(a) >= base + j }, found by binary
search on the float64 evaluation of the model's own modules. Channels whose function
decreases in a get negated weights, so every table is ascending.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from otterlite.errors import OtterliteError
from otterlite.integer_spec.types import (FLOAT_EXACT_LIMIT, INT32_LIMIT, TABLE_SUM_LIMIT, ConvStage, TableMixSpec,
                                  ThresholdConvSpec, accumulator_range)

FRAPPE_WEIGHT_BITS = 8


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (integer weights, per-channel scale) with W ~= W_int * scale."""
    top = 2 ** (bits - 1) - 1
    peak = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak / top, 1.0)
    return np.round(w / scale.reshape(-1, 1, 1, 1)).astype(np.int64), scale


def elementwise(module: torch.nn.Module):
    """A per-channel elementwise torch module as a float64 numpy function of (C, M) values."""
    module = copy.deepcopy(module).double()  # a float64 copy: the caller's model is left as it is

    def fn(u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(u)[None, :, :, None])[0, :, :, 0].numpy()
    return fn


def threshold_table(level, a_lo: np.ndarray, a_hi: np.ndarray, base: int, n_levels: int) -> np.ndarray:
    """T[c, j] = min{a in [a_lo, a_hi + 1] : level(c, a) >= base + j + 1}, j = 0..n_levels-1.

    `level(a)` maps (C, M) accumulators to (C, M) output levels and is non-decreasing in a.
    A threshold of a_hi + 1 is never reached, one of a_lo always is.
    """
    c = len(a_lo)
    want = base + 1 + np.arange(n_levels)[None, :].repeat(c, 0)
    lo = np.repeat(a_lo[:, None], n_levels, 1).astype(np.int64)
    hi = np.repeat(a_hi[:, None] + 1, n_levels, 1).astype(np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = level(mid) >= want
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    return lo


def freeze_threshold_stage(w_float, scale_of_a, offset, fn, bits, base, n_levels, top,
                           stride, pad, channels, border: str = "zero") -> ConvStage:
    """u(a) = scale_of_a[c] * s_c * a + offset(W_int, s)[c];
    level(a) = clamp(round_half_even(fn(u)), base, top)."""
    w_int, s = quantize_per_channel(w_float, bits)
    gain = scale_of_a * s
    offset = offset(w_int, s)
    lo, hi = accumulator_range(w_int)
    probe = np.stack([lo, hi], 1).astype(np.float64)
    ends = fn(gain[:, None] * probe + offset[:, None])
    flip = ends[:, 1] < ends[:, 0]
    sign = np.where(flip, -1, 1)
    w_int = w_int * sign.reshape(-1, 1, 1, 1)
    gain = gain * sign
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)

    def level(a):
        y = fn(gain[:, None] * a.astype(np.float64) + offset[:, None])
        return np.clip(np.round(y), base, top)

    grid = np.linspace(lo, hi, 4097).T.round().astype(np.int64)
    if np.any(np.diff(level(grid), axis=1) < 0):
        raise OtterliteError("the per-channel activation is not monotone in the accumulator; "
                             "it cannot be frozen into thresholds")
    thresholds = threshold_table(level, lo, hi, base, n_levels)
    return ConvStage(w_int, thresholds, stride, pad, channels, border)


def check_bound(spec, limit: int, what: str, fix: str = "try fewer --weight-bits"):
    bound = spec.accumulator_bound
    if bound + 1 >= limit:  # + 1: a never-reached threshold is stored as the bound + 1
        raise OtterliteError(f"{what}: worst-case accumulator {bound} exceeds the exactness limit "
                             f"{limit}; this checkpoint cannot be exported bit-exactly ({fix})")
    spec.info["accumulator_bound"] = bound
    spec.info["exactness_limit"] = limit
    return spec


def freeze_frappe_encoder(model, source_sha256: str, weight_bits: int | list[int] = FRAPPE_WEIGHT_BITS
                          ) -> ThresholdConvSpec:
    """x_in = x/127.5 - 1, so u = s_c * (a - 127.5 * sum W_int) / 127.5 + b_c. weight_bits: one
    for every scale group, or a list with one per group."""
    enc = model.encoder
    bits = list(weight_bits) if isinstance(weight_bits, (list, tuple)) else [weight_bits] * len(enc.groups)
    if len(bits) != len(enc.groups):
        raise OtterliteError(f"{len(bits)} weight bit widths for {len(enc.groups)} scale groups")
    if enc.linear_input:
        raise OtterliteError("linear_input FRAPPE checkpoints are not supported by the integer "
                             "export yet (the sRGB linearisation would need an input table)")
    stages = []
    for g, seq, group_bits in zip(enc.groups, enc.encoders, bits):
        w = seq[0].weight.detach().double().numpy()
        b = seq[0].bias.detach().double().numpy()
        fn = elementwise(seq[1])

        def offset(w_int, s, b=b):
            return b - s * w_int.reshape(len(s), -1).sum(1)
        stages.append(freeze_threshold_stage(w, np.full(len(b), 1 / 127.5), offset, fn, group_bits,
                                             -127, 254, 127, g.ps, 0, (g.start, g.end)))
    spec = ThresholdConvSpec("frappe-encoder", stages, -127, "int8", source_sha256,
                             {"weight_bits": bits, "n_ch": model.n_ch,
                              "groups": [[g.ps, g.start, g.end] for g in enc.groups]})
    return check_bound(spec, INT32_LIMIT, "frappe-encoder")


WALLOC_WEIGHT_BITS = 12


def freeze_walloc_encoder(model, source_sha256: str, weight_bits: int = WALLOC_WEIGHT_BITS,
                          composed: tuple | None = None) -> ThresholdConvSpec:
    """The wavelet packet + 1x1 conv as one composed stride-2^J wrap-around kernel
    (WallocEncoder.composed_kernel, float64; `composed` its result if already computed),
    quantized per channel; x_in = x/255 - 0.5, so u = s_c * (a - 127.5 * sum W_int) / 255 + b_c;
    ToUniform and round-half-even in the thresholds."""
    if isinstance(weight_bits, (list, tuple)):
        if len(weight_bits) != 1:
            raise OtterliteError(f"{len(weight_bits)} weight bit widths for WaLLoC's one stage")
        weight_bits = weight_bits[0]
    kernel, bias, pad = composed or model.sensor_encoder().composed_kernel()
    fn = elementwise(model.encoder[1])

    def offset(w_int, s):
        return bias - 0.5 * s * w_int.reshape(len(s), -1).sum(1)
    c = model.config
    stage = freeze_threshold_stage(kernel, np.full(len(bias), 1 / 255), offset, fn, weight_bits, -127, 254, 127,
                                   c.stride, pad, (0, c.latent_dim), "wrap")
    spec = ThresholdConvSpec("walloc-encoder", [stage], -127, "int8", source_sha256,
                             {"weight_bits": [weight_bits], "n_ch": c.latent_dim, "J": c.J,
                              "kernel": int(kernel.shape[-1]), "groups": [[c.stride, 0, c.latent_dim]]})
    return check_bound(spec, INT32_LIMIT, "walloc-encoder")


def freeze_seaotter_forward(bundle, source_sha256: str) -> ThresholdConvSpec:
    """u = s_c * a + b_c; codec = clamp(round_half_even(analysis_rest(u) + 128), 0, 255).
    Weight bits are the most that keep every partial sum below 2^24."""
    conv = bundle.fwd.analysis_transform[0]
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy()
    rest = elementwise(torch.nn.Sequential(*list(bundle.fwd.analysis_transform)[1:]))
    taps = w[0].size
    bits = int(np.floor(np.log2(FLOAT_EXACT_LIMIT / (255 * taps)))) + 1

    def fn(u):
        return rest(u) + 128.0
    stage = freeze_threshold_stage(w, np.ones(3), lambda w_int, s: b, fn, bits, 0, 255, 255,
                                   1, conv.padding[0], (0, 3))
    spec = ThresholdConvSpec("seaotter-forward", [stage], 0, "uint8", source_sha256,
                             {"weight_bits": bits, "arch": bundle.arch, "qtables": bundle.qtables})
    return check_bound(spec, FLOAT_EXACT_LIMIT, "seaotter-forward", "its weights need more bits than 2^24 allows")


def inverse_float_parts(inv) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Any arch as t[c] = table_c(z) (256 float entries), out = clamp(round(conv(t, W') + b'))."""
    layers = list(inv.synthesis_transform)
    conv_index = next(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d))
    conv = layers[conv_index]
    z = torch.arange(256, dtype=torch.float64).view(1, 1, 256, 1).repeat(1, 3, 1, 1)
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy()
    if inv.arch == "E":
        table = (z - 128.0) / 126.0
        w, b = w * 127.5, b * 127.5 + 127.5
    else:
        with torch.no_grad():
            table = copy.deepcopy(torch.nn.Sequential(*layers[:conv_index])).double()(z - 128.0)
        b = b + 128.0
    return table[0, :, :, 0].numpy(), w, b, conv.padding[0]


def inverse_terms(inv) -> tuple[np.ndarray, np.ndarray, int]:
    """Any arch as rgb[o] = clamp(round(b'[o] + sum_{c,u,v} P[c, u, v, z, o]), 0, 255) with the
    float64 terms P = W'[o, c, u, v] * table_c(z) (z the code at tap u, v); -> (P, b', pad)."""
    table, w, b, pad = inverse_float_parts(inv)
    if not np.all(np.isfinite(table)):
        raise OtterliteError("seaotter-inverse: the per-channel stages are not finite on uint8 input")
    return np.einsum("ocuv,cz->cuvzo", w, table), b, pad


def freeze_seaotter_inverse(bundle, source_sha256: str) -> TableMixSpec:
    """tables = round_half_even(P * 2^shift), bias = round(b' * 2^shift) + 2^(shift - 1), with
    the largest shift (most precision, up to 21) whose accumulator bound stays below
    TABLE_SUM_LIMIT. Singular codes (a clamped SoftsignExpand denominator gives about -16
    million) keep their exact value, so the sums where they meet follow the float model, and
    the ordinary codes keep full precision: rounding error at most 0.5 * 2^-shift per term and
    for the bias, in output LSB."""
    terms, b, pad = inverse_terms(bundle.inv)
    peak = np.abs(terms).max(axis=3).reshape(-1, 3).sum(axis=0) + np.abs(b)  # |acc| bound in LSB
    shift = min(21, int(np.floor(np.log2(TABLE_SUM_LIMIT / (peak.max() + 64)))) - 1)
    if shift < 1:
        raise OtterliteError(f"seaotter-inverse: the transform's values reach {peak.max():.3g} LSB, beyond the "
                             f"2^38 an exact integer sum holds here; this checkpoint cannot be exported bit-exactly")
    scale = 2.0 ** shift
    spec = TableMixSpec("seaotter-inverse", np.round(terms * scale).astype(np.int64),
                        (np.round(b * scale) + scale / 2).astype(np.int64), shift, pad, source_sha256)
    used = int(np.count_nonzero(np.abs(terms).max(axis=3), axis=(0, 1, 2)).max())  # terms per output
    spec.info = {"arch": bundle.arch, "error_bound_lsb": 0.5 * (used + 1) * 2.0 ** -shift}
    return check_bound(spec, TABLE_SUM_LIMIT, "seaotter-inverse", "its table values span too much")

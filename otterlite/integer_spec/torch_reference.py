"""The PyTorch integer reference: executes an integer spec in torch int64 arithmetic.
This is "the PyTorch reference" that every backend's parity is measured against."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from otterlite.integer_spec.types import TableMixSpec, ThresholdConvSpec


def wrap_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 2 pad, W + 2 pad), rows and columns taken modulo H and W."""
    rows = torch.arange(-pad, x.shape[2] + pad) % x.shape[2]
    cols = torch.arange(-pad, x.shape[3] + pad) % x.shape[3]
    return x[:, :, rows][:, :, :, cols]


def conv_int(x: torch.Tensor, w: torch.Tensor, stride: int, pad: int, border: str = "zero") -> torch.Tensor:
    """Exact int64 convolution of (N, Cin, H, W) by (C, Cin, k, k), zero or wrap-around border."""
    k = w.shape[-1]
    if pad:
        x = wrap_pad(x, pad) if border == "wrap" else F.pad(x, (pad, pad, pad, pad))
    n, cin, h, wd = x.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    if stride == k:
        patches = x[:, :, : oh * k, : ow * k].reshape(n, cin, oh, k, ow, k).permute(0, 2, 4, 1, 3, 5)
        return (patches.reshape(n, oh, ow, -1) @ w.reshape(w.shape[0], -1).T).permute(0, 3, 1, 2)
    out = torch.zeros(n, w.shape[0], oh, ow, dtype=torch.int64)
    for u in range(k):  # kernel row u: the (oh, ow, Cin * k) windows of its image rows times W[:, :, u, :]
        rows = x[:, :, u: u + stride * (oh - 1) + 1: stride, : stride * (ow - 1) + k]
        windows = rows.unfold(3, k, stride)  # (n, Cin, oh, ow, k)
        out += torch.einsum("nihwv,oiv->nohw", windows, w[:, :, u, :])
    return out


def count_thresholds(a: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """#{j : a[n, c, h, w] >= T[c, j]} per element (exact searchsorted)."""
    n, c, h, w = a.shape
    flat = a.permute(1, 0, 2, 3).reshape(c, -1).contiguous()
    counts = torch.searchsorted(thresholds.contiguous(), flat, right=True)
    return counts.reshape(c, n, h, w).permute(1, 0, 2, 3)


def run_threshold_conv(spec: ThresholdConvSpec, x_uint8: torch.Tensor, intermediate: bool = False):
    """-> list of outputs (one per stage), dtype int8/uint8; with intermediate=True also the
    accumulators as {name: tensor}."""
    x = x_uint8.to(torch.int64)
    outs, trace = [], {}
    for i, stage in enumerate(spec.stages):
        a = conv_int(x, torch.from_numpy(stage.weights), stage.stride, stage.pad, stage.border)
        out = (spec.base + count_thresholds(a, torch.from_numpy(stage.thresholds))).to(getattr(torch, spec.out_dtype))
        trace[f"stage{i}.accumulator"] = a
        outs.append(out)
    return (outs, trace) if intermediate else outs


def run_table_mix(spec: TableMixSpec, z_uint8: torch.Tensor, intermediate: bool = False):
    """acc[o] = bias[o] + sum_{c,u,v} tables[c, u, v, z[c, . + u - pad, . + v - pad], o] (0 outside
    the image), rgb = clamp(floor(acc / 2^shift), 0, 255); int64 throughout."""
    c, k = spec.tables.shape[0], spec.kernel
    n, _, h, w = z_uint8.shape
    p = spec.pad
    rows = torch.from_numpy(spec.rows())
    index = F.pad(z_uint8.to(torch.int64) + 1, (p, p, p, p))  # row 0: outside the image
    acc = torch.from_numpy(spec.bias).view(1, 1, 1, 3).repeat(n, h, w, 1)
    for ci in range(c):
        for u in range(k):
            for v in range(k):
                acc += rows[ci, u, v][index[:, ci, u:u + h, v:v + w]]
    acc = acc.permute(0, 3, 1, 2)
    out = torch.clamp(torch.div(acc, 2 ** spec.shift, rounding_mode="floor"), 0, 255).to(torch.uint8)
    return ([out], {"accumulator": acc}) if intermediate else [out]


def run_spec(spec, x_uint8: torch.Tensor, intermediate: bool = False):
    if isinstance(spec, TableMixSpec):
        return run_table_mix(spec, x_uint8, intermediate)
    return run_threshold_conv(spec, x_uint8, intermediate)

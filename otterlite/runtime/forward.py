"""The cloud's SEA OTTER forward transform (RGB -> codec values) by its exported integer spec,
so the transcoded JPEG does not depend on the runtime. numpy only, integer arithmetic only.

    acc[h, w, c] = sum_{i,u,v} W[c, i, u, v] * x[h + u - pad, w + v - pad, i]   (int64, zero outside)
    codec[h, w, c] = #{j : acc[h, w, c] >= T[c, j]}                            (uint8)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from otterlite.errors import OtterliteError
from otterlite.integer_spec.types import ThresholdConvSpec, read_spec


def load_forward_spec(source: str | Path | bytes) -> ThresholdConvSpec:
    """The exported SEA OTTER forward spec: a DIR from `otterlite export`, a .spec file, or its bytes."""
    spec, name = read_spec(source, "seaotter-forward.spec")
    if not isinstance(spec, ThresholdConvSpec) or spec.kind != "seaotter-forward" or len(spec.stages) != 1 \
            or spec.stages[0].stride != 1:
        raise OtterliteError(f"{name}: a {spec.kind} spec, not the SEA OTTER forward transform; pass "
                             f"seaotter-forward.spec")
    return spec


def apply_forward(spec: ThresholdConvSpec, rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 codec values by the formula."""
    stage = spec.stages[0]
    acc = forward_accumulator(spec, rgb)
    out = np.empty_like(rgb)
    for c in range(acc.shape[-1]):
        out[..., c] = spec.base + np.searchsorted(stage.thresholds[c], acc[..., c], side="right")
    return out


def forward_accumulator(spec: ThresholdConvSpec, rgb: np.ndarray) -> np.ndarray:
    """(H, W, C) int64 acc of the formula above."""
    stage = spec.stages[0]
    h, w, _ = rgb.shape
    p, k = stage.pad, stage.weights.shape[-1]
    x = np.pad(rgb.astype(np.int64), ((p, p), (p, p), (0, 0)))
    acc = np.zeros((h, w, stage.weights.shape[0]), np.int64)
    for u in range(k):
        for v in range(k):
            acc += x[u:u + h, v:v + w] @ stage.weights[:, :, u, v].T
    return acc

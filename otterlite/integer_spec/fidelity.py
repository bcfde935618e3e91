"""Fidelity: how close a frozen integer spec is to the float model it came from (the other
half of the promise; parity between backends is verify's job).

The float model is evaluated in float64, i.e. its formula, not float32's rounding noise
(near singular codes arch D's float32 inverse is itself several LSB off its float64 value).
- frappe-encoder: the latents of photos (padded to the largest patch), per scale group.
- SEA OTTER transforms with a 1x1 kernel: all 2^24 input triples; with a larger kernel:
  photos plus uniform random images. An inverse output is "ordinary" when every code it
  reads lies in 1..254 (0 and 255 may be singular codes, UPSTREAM.md); every forward
  output is ordinary.
Figures: equal_share, max_lsb, lsb_histogram (count of outputs per |difference|) and, for
transforms, max_lsb_ordinary.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from otterlite.errors import OtterliteError
from otterlite.images import pad_to_multiple
from otterlite.integer_spec.torch_reference import run_spec
from otterlite.integer_spec.types import ENCODER_KINDS, TableMixSpec

RANDOM_IMAGES = 4  # uniform random 256x256 images (PCG64 seed 11) beside the photos for kxk transforms


@dataclass(frozen=True)
class Target:
    min_equal: float = 0.99  # encoder: share of latents equal to the float model
    max_lsb: int = 1  # encoder: every latent; transforms: every ordinary output
    min_within: float = 0.999  # transforms: share of all outputs within max_lsb

    def __post_init__(self):
        for name, value, lo, hi in (("--min-equal", self.min_equal, 0, 1), ("--min-within", self.min_within, 0, 1),
                                    ("--max-lsb", self.max_lsb, 0, 255)):
            if not lo <= value <= hi:
                raise OtterliteError(f"{name} {value}: out of range; choose {lo}..{hi}")

    def failures(self, kind: str, fid: dict) -> list[str]:
        """What misses the target, each naming the figure and the target (empty: it passes)."""
        out = []
        if kind in ENCODER_KINDS:
            if fid["equal_share"] < self.min_equal:
                out.append(f"{100 * fid['equal_share']:.2f}% of latents equal to the float model "
                           f"(target {100 * self.min_equal:g}%)")
            if fid["max_lsb"] > self.max_lsb:
                out.append(f"latents up to {fid['max_lsb']} LSB off (target {self.max_lsb})")
            return out
        if fid["max_lsb_ordinary"] > self.max_lsb:
            out.append(f"outputs on ordinary inputs up to {fid['max_lsb_ordinary']} LSB off (target {self.max_lsb})")
        within = within_share(fid, self.max_lsb)
        if within < self.min_within:
            out.append(f"{100 * within:.3f}% of outputs within {self.max_lsb} LSB (target {100 * self.min_within:g}%)")
        return out

    def judge(self, kind: str, fid: dict) -> dict:
        """fid with the target, pass and failures added."""
        fails = self.failures(kind, fid)
        keys = ("min_equal", "max_lsb") if kind in ENCODER_KINDS else ("max_lsb", "min_within")
        return {**fid, "target": {k: asdict(self)[k] for k in keys}, "pass": not fails, "failures": fails}


def within_share(fid: dict, lsb: int) -> float:
    hist = fid["lsb_histogram"]
    return sum(hist[: lsb + 1]) / sum(hist)


class Tally:
    """Accumulates |integer - float| over batches."""

    def __init__(self):
        self.hist = np.zeros(256, np.int64)
        self.max_ordinary = 0

    def add(self, ints: torch.Tensor, floats: torch.Tensor, ordinary: torch.Tensor | None = None) -> None:
        d = (ints.to(torch.int64) - floats.to(torch.int64)).abs()
        self.hist += np.bincount(d.flatten().numpy(), minlength=256)[:256]
        if ordinary is not None and bool(ordinary.any()):
            self.max_ordinary = max(self.max_ordinary, int(d[ordinary.expand_as(d)].max()))

    def figures(self) -> dict:
        used = np.nonzero(self.hist)[0]
        hist = self.hist[: int(used.max()) + 1] if len(used) else self.hist[:1]
        return {"equal_share": float(hist[0] / hist.sum()), "max_lsb": len(hist) - 1,
                "lsb_histogram": [int(v) for v in hist]}


def nchw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


def padded(rgb: np.ndarray, multiple: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') edge-padded to multiples of `multiple`."""
    return nchw(pad_to_multiple(rgb, multiple))


def float_latents(model, photos: list[np.ndarray], multiple: int) -> list[list[torch.Tensor]]:
    """Per photo (edge-padded to `multiple`, the spec's largest stride) the float encoder's
    latents (FRAPPE or WaLLoC, model.sensor_encoder()) computed in float64."""
    encoder = copy.deepcopy(model.sensor_encoder()).double()
    with torch.no_grad():
        return [encoder(padded(rgb, multiple)) for rgb in photos]


def encoder_fidelity(spec, model, photos: list[np.ndarray], floats=None) -> dict:
    """Latents of the spec against the float model on photos; per group as well. `floats`:
    float_latents(...) when the caller already has them."""
    if not photos:
        raise OtterliteError("no photos to measure the encoder's fidelity on")
    floats = floats or float_latents(model, photos, spec.largest_stride)
    total, groups = Tally(), [Tally() for _ in spec.stages]
    for rgb, latents in zip(photos, floats):
        x = padded(rgb, spec.largest_stride)
        for t, a, b in zip(groups, run_spec(spec, x), latents):
            t.add(a, b)
            total.add(a, b)
    out = {**total.figures(), "images": len(photos), "groups": []}
    for stage, t in zip(spec.stages, groups):
        out["groups"].append({"channels": list(stage.channels), "patch": stage.stride,
                              "weight_bits": stage.weight_bits, **t.figures()})
    return out


def transform_inputs(kernel: int, photos: list[np.ndarray]):
    """1x1: all 2^24 triples in four 2048x2048 frames; kxk: the photos and RANDOM_IMAGES."""
    if kernel == 1:
        codes = torch.arange(2 ** 24, dtype=torch.int64)
        planes = torch.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255]).to(torch.uint8)
        return [planes[:, i * 2 ** 22:(i + 1) * 2 ** 22].reshape(1, 3, 2048, 2048) for i in range(4)]
    rng = np.random.default_rng(11)
    return [nchw(p) for p in photos] + [torch.from_numpy(rng.integers(0, 256, (1, 3, 256, 256), dtype=np.uint8))
                                        for _ in range(RANDOM_IMAGES)]


def transform_kernel(spec) -> int:
    """The spatial kernel of a SEA OTTER transform spec (1 or 3)."""
    return spec.kernel if isinstance(spec, TableMixSpec) else spec.stages[0].weights.shape[-1]


def transform_fidelity(spec, transform, photos: list[np.ndarray]) -> dict:
    """spec against `transform` (bundle.fwd or bundle.inv) evaluated in float64; `photos` are
    used only for kernels above 1x1."""
    inverse = isinstance(spec, TableMixSpec)
    kernel = transform_kernel(spec)
    model = copy.deepcopy(transform).double()
    tally = Tally()
    inputs = transform_inputs(kernel, photos)
    for x in inputs:
        with torch.no_grad():
            floats = torch.clamp(torch.round(model(x.to(torch.float64))), 0, 255)
        singular = ((x == 0) | (x == 255)).any(dim=1, keepdim=True).to(torch.float32)
        if inverse and kernel > 1:  # an output reads the codes of its whole neighbourhood
            singular = F.max_pool2d(singular, kernel, stride=1, padding=kernel // 2)
        ordinary = singular == 0 if inverse else torch.ones_like(singular, dtype=torch.bool)
        tally.add(run_spec(spec, x)[0], floats, ordinary)
    return {**tally.figures(), "max_lsb_ordinary": tally.max_ordinary,
            "inputs": "all 2^24 triples" if kernel == 1 else f"{len(photos)} photos + {RANDOM_IMAGES} random images"}


AUTO_BITS = range(8, 13)


def auto_weight_bits(model, source_sha256: str, photos: list[np.ndarray], target: Target,
                     freeze_encoder=None, margin: float = 0.0) -> list[int]:
    """Per scale group the fewest weight bits in 8..12 whose latents on `photos` meet the
    target (equal share and max LSB of that group); 12 where none does (export then says so).
    freeze_encoder(model, sha, bits): freeze_frappe_encoder unless given (WaLLoC's).
    margin: the share of the target's allowed miss kept in reserve, so other photos meet it
    too (the equal share must reach 1 - (1 - min_equal) * (1 - margin))."""
    from otterlite.integer_spec.freeze import freeze_frappe_encoder

    freeze_encoder = freeze_encoder or freeze_frappe_encoder
    need = 1 - (1 - target.min_equal) * (1 - margin)
    floats, chosen = None, None
    for bits in AUTO_BITS:
        spec = freeze_encoder(model, source_sha256, bits)
        floats = floats or float_latents(model, photos, spec.largest_stride)
        chosen = chosen or [None] * len(spec.stages)
        for i, group in enumerate(encoder_fidelity(spec, model, photos, floats)["groups"]):
            if chosen[i] is None and group["equal_share"] >= need and group["max_lsb"] <= target.max_lsb:
                chosen[i] = bits
        if None not in chosen:
            break
    return [AUTO_BITS[-1] if b is None else b for b in chosen]

"""SEA OTTER colour transforms (float torch), archs A, B, D, E, F, G.

Forward (cloud):   codec = uint8(clamp(round_half_even(analysis(rgb) + 128), 0, 255))
Inverse (consumer): rgb  = uint8(clamp(round_half_even(synthesis(codec - 128) + 128), 0, 255))
Arch E inverse:     rgb  = uint8(clamp(round_half_even(127.5 * synthesis((codec - 128) / 126) + 127.5)))

Sequential indices follow the published state dicts; parameterless slots where the
research code keeps its training noise are `Identity`.
"""
from __future__ import annotations

import torch
from torch import nn

from otterlite.errors import OtterliteError
from otterlite.models.frappe import ChannelAffine, Identity, Softsign, SoftsignExpand

ARCHS = ("A", "B", "D", "E", "F", "G")
ARCH_E_SCALE = 126.0


def softsign_bits(arch: str) -> int:
    return 6 if arch == "F" else 8


def _r(arch: str) -> int:
    return 2 ** (softsign_bits(arch) - 1) - 1


def _conv(arch: str) -> nn.Conv2d:
    return nn.Conv2d(3, 3, 3, padding=1) if arch == "D" else nn.Conv2d(3, 3, 1)


def analysis_layers(arch: str) -> list[nn.Module]:
    r = _r(arch)
    if arch == "B":
        return [_conv(arch), nn.Hardtanh(-128.0, 127.0), Identity()]
    if arch == "E":
        return [_conv(arch), nn.Sequential(Softsign(3, r), Identity(), ChannelAffine(3))]
    return [_conv(arch), Softsign(3, r), Identity(), ChannelAffine(3)]


def synthesis_layers(arch: str) -> list[nn.Module]:
    r = _r(arch)
    if arch == "B":
        return [Identity(), _conv(arch), nn.Hardtanh(-128.0, 127.0)]
    if arch == "E":
        return [Identity(), _conv(arch), nn.Hardtanh(-1.0, 1.0)]
    if arch == "G":
        return [Softsign(3, r), Identity(), ChannelAffine(3), ChannelAffine(3), SoftsignExpand(3, r),
                ChannelAffine(3), SoftsignExpand(3, r), _conv(arch)]
    return [Identity(), ChannelAffine(3), SoftsignExpand(3, r), _conv(arch)]


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise OtterliteError(f"color_xform_arch = {arch!r} is not supported; use one of {', '.join(ARCHS)}")
    return arch


def round_to_uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x), 0, 255).to(torch.uint8)


class ForwardTransform(nn.Module):
    """RGB (float 0..255) -> codec domain."""

    def __init__(self, arch: str):
        super().__init__()
        self.arch = check_arch(arch)
        self.analysis_transform = nn.Sequential(*analysis_layers(arch))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.analysis_transform(rgb) + 128.0

    @torch.no_grad()
    def to_codec_uint8(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        return round_to_uint8(self(rgb_uint8.to(torch.float32)))


class InverseTransform(nn.Module):
    """Codec domain (float 0..255) -> RGB."""

    def __init__(self, arch: str):
        super().__init__()
        self.arch = check_arch(arch)
        self.synthesis_transform = nn.Sequential(*synthesis_layers(arch))

    def forward(self, codec: torch.Tensor) -> torch.Tensor:
        if self.arch == "E":
            return 127.5 * self.synthesis_transform((codec - 128.0) / ARCH_E_SCALE) + 127.5
        return self.synthesis_transform(codec - 128.0) + 128.0

    @torch.no_grad()
    def to_rgb_uint8(self, codec_uint8: torch.Tensor) -> torch.Tensor:
        return round_to_uint8(self(codec_uint8.to(torch.float32)))


class SeaOtterBundle(nn.Module):
    """One SEA OTTER checkpoint: `fwd.*`, `inv.*`, K qtables and lambdas."""

    def __init__(self, arch: str, qtables: list, lambdas: list[float]):
        super().__init__()
        self.arch = check_arch(arch)
        self.fwd = ForwardTransform(arch)
        self.inv = InverseTransform(arch)
        self.qtables = [clamp_qtable(q) for q in qtables]
        self.lambdas = list(lambdas)

    @property
    def K(self) -> int:
        return len(self.qtables)

    def qtable(self, k: int):
        if not 0 <= k < self.K:
            raise OtterliteError(f"--k {k} is out of range: this SEA OTTER checkpoint has "
                                 f"operating points 0..{self.K - 1}")
        return self.qtables[k]


def clamp_qtable(q) -> list[list[int]]:
    """(3, 8, 8) numbers -> 3 lists of 64 ints in raster order, clamped to 1..255."""
    t = torch.as_tensor(q).to(torch.float64).round().clamp(1, 255).to(torch.int64)
    if tuple(t.shape) != (3, 8, 8):
        raise OtterliteError(f"qtable of shape {tuple(t.shape)}; expected (3, 8, 8)")
    return [t[c].flatten().tolist() for c in range(3)]

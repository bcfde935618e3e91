"""WaLLoC Codec2D with the lightweight encoder, in the published state-dict layout.

Input x = rgb / 255 - 0.5 (sides multiples of 2^J).
Encoder: J levels of the bior4.4 periodization wavelet packet (every channel, bands stacked
per channel [LL, LH, HL, HH]: 3 -> 12 -> 48 -> 192 channels), the 1x1 conv `encoder.0`,
ToUniform y = 2 * LATENT_MAX * (Phi(u / SCALE) - 0.5), round half to even -> -127..127.
Decoder: ToNormal, diffusers' Decoder (`decoder.1.*`), J levels of packet synthesis, clamp
to [-0.5, 0.5]; as uint8 RGB, round((y + 0.5) * 255).

One analysis level along an axis of length N (periodization, PyWavelets' alignment):
    lo[k] = sum_j dec_lo[j] * x[(2k + 5 - j) mod N],   hi[k] likewise with dec_hi
synthesis: x[(2k - 4 + j) mod N] += rec_lo[j] * lo[k] + rec_hi[j] * hi[k].
The filters are buffers `wt.h0_col, wt.h1_col, wt.h0_row, wt.h1_row` (analysis, reversed,
as correlations) and `iwt.g0_*, iwt.g1_*` (synthesis), float32 like upstream's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from otterlite.errors import OtterliteError

# bior4.4 (CDF 9/7) filters as PyWavelets lists them (10 taps, index 0 first).
DEC_LO = [0.0, 0.03782845550726404, -0.023849465019556843, -0.11062440441843718, 0.37740285561283066,
          0.8526986790088938, 0.37740285561283066, -0.11062440441843718, -0.023849465019556843,
          0.03782845550726404]
DEC_HI = [0.0, -0.06453888262869706, 0.04068941760916406, 0.41809227322161724, -0.7884856164055829,
          0.41809227322161724, 0.04068941760916406, -0.06453888262869706, 0.0, 0.0]
REC_LO = [0.0, -0.06453888262869706, -0.04068941760916406, 0.41809227322161724, 0.7884856164055829,
          0.41809227322161724, -0.04068941760916406, -0.06453888262869706, 0.0, 0.0]
REC_HI = [0.0, -0.03782845550726404, -0.023849465019556843, 0.11062440441843718, 0.37740285561283066,
          -0.8526986790088938, 0.37740285561283066, 0.11062440441843718, -0.023849465019556843,
          -0.03782845550726404]
TAPS = 10
ANALYSIS_PAD = (4, 5)  # circular pad (before, after) of a correlation with the reversed filter
SYNTHESIS_SHIFT = 4  # the transposed conv's output index t is sample (t - 4) mod N


@dataclass(frozen=True)
class WallocConfig:
    channels: int = 3
    J: int = 3
    Nd: int = 768
    latent_dim: int = 12
    latent_bits: int = 8
    lightweight_encode: bool = True
    Ne: int | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "WallocConfig":
        for key in ("channels", "J", "Nd", "latent_dim", "latent_bits"):
            if not isinstance(d.get(key), int) or isinstance(d.get(key), bool) or d[key] < 1:
                raise OtterliteError(f"{where}: field '{key}' = {d.get(key)!r} must be a positive integer")
        if d["Nd"] % 32:
            raise OtterliteError(f"{where}: Nd = {d['Nd']} must be a multiple of 32 (the decoder's GroupNorm groups)")
        if d.get("lightweight_encode") is not True:
            raise OtterliteError(f"{where}: lightweight_encode = {d.get('lightweight_encode')!r}: only the "
                                 f"lightweight encoder (wavelet packet + 1x1 conv) is supported; the full "
                                 f"encoder has nonlinear layers, so it is not an exact linear map + step "
                                 f"and cannot be exported bit-exactly")
        if d["latent_bits"] != 8:
            raise OtterliteError(f"{where}: latent_bits = {d['latent_bits']}: only 8-bit latents are supported")
        return cls(d["channels"], d["J"], d["Nd"], d["latent_dim"], d["latent_bits"], True, d.get("Ne"))

    def to_dict(self) -> dict:
        return {"channels": self.channels, "J": self.J, "Ne": self.Ne, "Nd": self.Nd,
                "latent_dim": self.latent_dim, "latent_bits": self.latent_bits,
                "lightweight_encode": self.lightweight_encode}

    @property
    def stride(self) -> int:
        return 2 ** self.J

    @property
    def scale(self) -> float:
        return (2 ** (self.latent_bits - 1) - 1) / 1.85

    @property
    def latent_max(self) -> float:
        return 2 ** (self.latent_bits - 1) - 1 + 0.5 - 1e-3


def normal_cdf(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


class ToUniform(nn.Module):
    """y = 2 * latent_max * (Phi(u / scale) - 0.5)."""

    def __init__(self, config: WallocConfig):
        super().__init__()
        self.scale, self.latent_max = config.scale, config.latent_max

    def forward(self, u):
        return 2 * self.latent_max * (normal_cdf(u / self.scale) - 0.5)


class ToNormal(nn.Module):
    """u = scale * Phi^-1(clamp(y / (2 * latent_max) + 0.5, 1e-4, 0.9999))."""

    def __init__(self, config: WallocConfig):
        super().__init__()
        self.scale, self.latent_max = config.scale, config.latent_max

    def forward(self, y):
        p = (y / (2 * self.latent_max) + 0.5).clamp(1e-4, 0.9999)
        return self.scale * math.sqrt(2) * torch.erfinv(2 * p - 1)


def _analysis_1d(x: torch.Tensor, h0: torch.Tensor, h1: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C, ...) halved along dim (2: rows, 3: columns): per channel [lo, hi].
    The circular pad ANALYSIS_PAD is an index gather, so any even side works (even below 5)."""
    c, n = x.shape[1], x.shape[dim]
    before, after = ANALYSIS_PAD
    stride = (2, 1) if dim == 2 else (1, 2)
    w = torch.cat([h0, h1], 0).to(x.dtype).repeat(c, 1, 1, 1)
    wrapped = x.index_select(dim, torch.arange(-before, n + after) % n)
    return F.conv2d(wrapped, w, stride=stride, groups=c)


def _synthesis_1d(y: torch.Tensor, g0: torch.Tensor, g1: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, 2C, ...) per channel [lo, hi] -> (B, C, ...) doubled along dim: the transposed conv's
    output t lands on sample (t - SYNTHESIS_SHIFT) mod n (any n, even below the filter length)."""
    c = y.shape[1] // 2
    stride = (2, 1) if dim == 2 else (1, 2)
    w = torch.cat([g0, g1], 0).to(y.dtype).repeat(c, 1, 1, 1)
    t = F.conv_transpose2d(y, w, stride=stride, groups=c)
    n = 2 * y.shape[dim]
    shape = list(t.shape)
    shape[dim] = n
    index = (torch.arange(t.shape[dim]) - SYNTHESIS_SHIFT) % n
    return torch.zeros(shape, dtype=t.dtype).index_add_(dim, index, t)


class DWT(nn.Module):
    """One 2-D analysis level per channel: (B, C, H, W) -> (B, 4C, H/2, W/2), [LL, LH, HL, HH]
    per channel (LH: low-pass along the width, high-pass along the height = PyWavelets' cH)."""

    def __init__(self):
        super().__init__()
        lo, hi = torch.tensor(DEC_LO[::-1], dtype=torch.float32), torch.tensor(DEC_HI[::-1], dtype=torch.float32)
        self.register_buffer("h0_col", lo.reshape(1, 1, TAPS, 1))
        self.register_buffer("h1_col", hi.reshape(1, 1, TAPS, 1))
        self.register_buffer("h0_row", lo.reshape(1, 1, 1, TAPS))
        self.register_buffer("h1_row", hi.reshape(1, 1, 1, TAPS))

    def forward(self, x):
        y = _analysis_1d(x, self.h0_row, self.h1_row, 3)  # per channel [W-lo, W-hi]
        return _analysis_1d(y, self.h0_col, self.h1_col, 2)  # per (c, W band) [H-lo, H-hi]


class IDWT(nn.Module):
    """Inverse of DWT: (B, 4C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self):
        super().__init__()
        lo, hi = torch.tensor(REC_LO, dtype=torch.float32), torch.tensor(REC_HI, dtype=torch.float32)
        self.register_buffer("g0_col", lo.reshape(1, 1, TAPS, 1))
        self.register_buffer("g1_col", hi.reshape(1, 1, TAPS, 1))
        self.register_buffer("g0_row", lo.reshape(1, 1, 1, TAPS))
        self.register_buffer("g1_row", hi.reshape(1, 1, 1, TAPS))

    def forward(self, y):
        x = _synthesis_1d(y, self.g0_col, self.g1_col, 2)
        return _synthesis_1d(x, self.g0_row, self.g1_row, 3)


def make_decoder(config: WallocConfig) -> nn.Module:
    try:
        from diffusers.models.autoencoders.autoencoder_kl import Decoder
    except ImportError:
        raise OtterliteError("the WaLLoC decoder needs diffusers: pip install 'otterlite[walloc]'") from None
    return Decoder(in_channels=config.latent_dim, out_channels=config.channels * 4 ** config.J,
                   up_block_types=("UpDecoderBlock2D",), block_out_channels=(config.Nd,),
                   layers_per_block=2, norm_num_groups=32, act_fn="silu", mid_block_add_attention=True)


class WallocEncoder(nn.Module):
    """The sensor side as one module (sharing the model's wt and encoder): uint8 RGB in,
    [int8 latents] out (a list of one stage, like FrappeEncoder)."""

    def __init__(self, wt: DWT, encoder: nn.Sequential, config: WallocConfig):
        super().__init__()
        self.wt, self.encoder, self.config = wt, encoder, config

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.config.J):
            x = self.wt(x)
        return x

    def companded(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The float latents before rounding (float32, or float64 for a .double() copy)."""
        x = x_uint8.to(self.encoder[0].weight.dtype) / 255 - 0.5
        return self.encoder(self.analysis(x))

    def forward(self, x_uint8: torch.Tensor) -> list[torch.Tensor]:
        return [torch.clamp(torch.round(self.companded(x_uint8)), -127, 127).to(torch.int8)]

    def composed_kernel(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The analysis + 1x1 conv as one stride-s (s = 2^J) wrap-around convolution, float64:
            u[c, i, j] = bias[c] + sum W[c, k, a, b] * x[k, (s*i - pad + a) mod H, (s*j - pad + b) mod W]
        -> (W (C, channels, 2 pad + 1, 2 pad + 1), bias (C,), pad). The packet transform works
        on each input channel alone, so one channel's 4^J band kernels G[band, d_r, d_c] (the
        response at offset (d_r, d_c) from an output's corner) come from s*s impulses, one per
        phase, on a frame wider than the kernel (no wrap); W[c, k] = sum_band W1[c, k, band] G[band]."""
        s = self.config.stride
        outs = 2 * (-(-((TAPS - 1) * (s - 1) + 1) // s) + 1)  # outputs per side: twice the span in blocks
        centre = outs // 2
        impulses = torch.zeros(s * s, 1, s * outs, s * outs, dtype=torch.float64)
        for p in range(s):
            for q in range(s):
                impulses[p * s + q, 0, s * centre + p, s * centre + q] = 1
        with torch.no_grad():
            responses = self.analysis(impulses).numpy()  # (s*s, 4^J, outs, outs)
        offset = s * outs  # G index = d + offset, d = s * (centre - i) + p
        bands = np.zeros((responses.shape[1], 2 * offset, 2 * offset))
        steps = s * (centre - np.arange(outs)) + offset
        for p in range(s):
            for q in range(s):
                bands[:, (steps + p)[:, None], (steps + q)[None, :]] = responses[p * s + q]
        rows, cols = np.nonzero(np.abs(bands).sum(0))
        pad = int(max(offset - rows.min(), rows.max() - offset, offset - cols.min(), cols.max() - offset))
        window = bands[:, offset - pad: offset + pad + 1, offset - pad: offset + pad + 1]
        conv = self.encoder[0]
        w1 = conv.weight.detach().to(torch.float64).numpy()[:, :, 0, 0]
        w1 = w1.reshape(w1.shape[0], self.config.channels, -1)  # (C, k, band): packet channels are k-major
        kernel = np.einsum("ckb,bxy->ckxy", w1, window)
        return np.ascontiguousarray(kernel), conv.bias.detach().to(torch.float64).numpy(), pad


class WallocModel(nn.Module):
    """Codec2D (lightweight encoder) with the published keys wt.*, iwt.*, encoder.0.*,
    decoder.1.*. encode: uint8 (B, 3, H, W) -> [int8 latents (B, 12, H/8, W/8)];
    decode: latents -> RGB in [-0.5, 0.5]."""

    def __init__(self, config: WallocConfig, with_decoder: bool = True):
        super().__init__()
        self.config = config
        self.wt, self.iwt = DWT(), IDWT()
        bands = config.channels * 4 ** config.J
        self.encoder = nn.Sequential(nn.Conv2d(bands, config.latent_dim, 1), ToUniform(config))
        self.decoder = nn.Sequential(ToNormal(config), make_decoder(config)) if with_decoder else None

    def latent_groups(self) -> list[tuple[int, int, int]]:
        """One group: (2^J, 0, latent_dim), as the container records it."""
        return [(self.config.stride, 0, self.config.latent_dim)]

    @property
    def n_ch(self) -> int:
        return self.config.latent_dim

    def sensor_encoder(self) -> WallocEncoder:
        return WallocEncoder(self.wt, self.encoder, self.config)

    def synthesis(self, y: torch.Tensor) -> torch.Tensor:
        for _ in range(self.config.J):
            y = self.iwt(y)
        return y

    @torch.no_grad()
    def encode(self, x_uint8: torch.Tensor) -> list[torch.Tensor]:
        return self.sensor_encoder()(x_uint8)

    def decode_float(self, latents: torch.Tensor) -> torch.Tensor:
        """int8-valued latents (B, 12, h, w) -> RGB in [-0.5, 0.5] (B, 3, 8h, 8w)."""
        if self.decoder is None:
            raise OtterliteError("this WaLLoC model was loaded without its decoder")
        return self.synthesis(self.decoder(latents.to(torch.float32))).clamp(-0.5, 0.5)

    @torch.no_grad()
    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """[latents] (as encode returns them) -> uint8 RGB (B, 3, 8h, 8w), round((y + 0.5) * 255)."""
        return torch.round((self.decode_float(latents[0]) + 0.5) * 255).to(torch.uint8)

"""FRAPPE float model in torch: the sensor encoder groups and the cloud decoder.

Module and parameter names follow the published state-dict layout
(`merged.{n}.encoders.{s}.0.weight`, `.1.0._σ`, `.1.2.γ`, `merged.{n}.decoder.*`).

Encoder of group s (SC8):
    x_in   = x / 127.5 - 1                    (x uint8; optionally sRGB-linearised)
    u      = Conv2d(x_in, kernel=ps, stride=ps)
    y      = γ * (127 * u / (σ + |u|)),  σ = |_σ| + 1e-6
    latent = clamp(round_half_even(y), -127, 127) as int8
"""
from __future__ import annotations

import torch
from torch import nn

from otterlite.errors import OtterliteError
from otterlite.models.frappe_config import FrappeConfig, ScaleGroup

SOFTSIGN_R = 127
SIGMA_EPS = 1e-6


def per_channel(param: torch.Tensor) -> torch.Tensor:
    """View a (C,) parameter so it broadcasts over (N, C, H, W)."""
    return param.reshape(1, -1, 1, 1)


class Softsign(nn.Module):
    """r * u / (σ + |u|) with σ = |_σ| + 1e-6, per channel."""

    def __init__(self, channels: int, r: int = SOFTSIGN_R):
        super().__init__()
        self.r = r
        setattr(self, "_σ", nn.Parameter(torch.full((channels,), float(r - 1))))

    def sigma(self) -> torch.Tensor:
        return per_channel(getattr(self, "_σ").abs() + SIGMA_EPS)

    def forward(self, u):
        return self.r * u / (self.sigma() + u.abs())


class SoftsignExpand(nn.Module):
    """Inverse of Softsign: σ * v / max(r + 0.5 - |v|, 1e-3)."""

    def __init__(self, channels: int, r: int = SOFTSIGN_R, eps: float = 0.5):
        super().__init__()
        self.r, self.eps = r, eps
        setattr(self, "_σ", nn.Parameter(torch.full((channels,), float(r - 1))))

    def forward(self, v):
        sigma = per_channel(getattr(self, "_σ").abs() + SIGMA_EPS)
        return sigma * v / torch.clamp(self.r + self.eps - v.abs(), min=1e-3)


class ChannelAffine(nn.Module):
    """x * γ per channel (no bias)."""

    def __init__(self, channels: int):
        super().__init__()
        setattr(self, "γ", nn.Parameter(torch.ones(channels)))

    def forward(self, x):
        return x * per_channel(getattr(self, "γ"))


class Identity(nn.Module):
    """Placeholder at the index where the published models keep their training noise."""

    def forward(self, x):
        return x


def softsign_companding(channels: int) -> nn.Sequential:
    """SC8 companding in the published layout: [0] Softsign, [1] noise slot, [2] γ."""
    return nn.Sequential(Softsign(channels), Identity(), ChannelAffine(channels))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (N, C, H, W), eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        y = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    def __init__(self, channels: int, init: float):
        super().__init__()
        setattr(self, "γ", nn.Parameter(torch.full((channels,), float(init))))

    def forward(self, x):
        return x * per_channel(getattr(self, "γ"))


class ConvNeXtBlock(nn.Module):
    """x + γ * pw2(gelu_tanh(pw1(LN(dwconv(x)))))  (γ only with layerscale)."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: int, layerscale: bool, layerscale_init: float):
        super().__init__()
        mid = dim * mlp_ratio
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim),
            LayerNorm2d(dim),
            nn.Conv2d(dim, mid, 1),
            nn.GELU(approximate="tanh"),
            nn.Conv2d(mid, dim, 1),
        )
        self.scale = LayerScale(dim, layerscale_init) if layerscale else None

    def forward(self, x):
        branch = self.main(x)
        if self.scale is not None:
            branch = self.scale(branch)
        return x + branch


class Attention(nn.Module):
    """Multi-head self-attention over all positions; qkv and proj are 1x1 convs."""

    def __init__(self, channels: int, heads: int = 8, head_dim: int = 32):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Conv2d(channels, 3 * heads * head_dim, 1, bias=False)
        self.proj = nn.Conv2d(heads * head_dim, channels, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        qkv = self.qkv(x).flatten(2).unflatten(1, (3, self.heads, self.head_dim))
        q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)  # each (N, heads, HW, head_dim)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(2, 3).reshape(n, self.heads * self.head_dim, h, w))


def with_position_channels(x: torch.Tensor) -> torch.Tensor:
    """Append 2 channels of centred coordinates: row i - (H-1)/2, then column j - (W-1)/2."""
    n, _, h, w = x.shape
    rows = (torch.arange(h, dtype=x.dtype) - (h - 1) / 2).view(1, 1, h, 1).expand(n, 1, h, w)
    cols = (torch.arange(w, dtype=x.dtype) - (w - 1) / 2).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, rows, cols], dim=1)


class TransformerBlock(nn.Module):
    """Pre-norm attention + conv MLP on dim+2 channels (2 position channels), then strip them."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        inner = dim + 2
        mid = inner * mlp_ratio
        self.dim = dim
        self.norm1 = LayerNorm2d(inner)
        self.norm2 = LayerNorm2d(inner)
        self.attn = Attention(inner)
        self.mlp = nn.Sequential(
            nn.Conv2d(inner, mid, 1),
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid),
            nn.GELU(approximate="tanh"),
            nn.Conv2d(mid, inner, 1),
        )

    def forward(self, x):
        x = with_position_channels(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x[:, : self.dim]


def decoder_channels_per_latent(ps: int, decoder_ps: int) -> int:
    return (decoder_ps // ps) ** 2 if ps < decoder_ps else 1


def adapt_to_decoder_grid(z: torch.Tensor, ps: int, decoder_ps: int) -> torch.Tensor:
    """Bring one group's latents to the decoder grid (one cell per decoder_ps pixels).

    Finer groups: space-to-depth `b c (h p1) (w p2) -> b (c p1 p2) h w`, p = decoder_ps/ps.
    Coarser groups: nearest-neighbour upsampling by ps/decoder_ps.
    """
    if ps < decoder_ps:
        f = decoder_ps // ps
        n, c, h, w = z.shape
        z = z.reshape(n, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(n, c * f * f, h // f, w // f)
    if ps > decoder_ps:
        f = ps // decoder_ps
        return z.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)
    return z


def linearise_input(x_in: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear on [-1, 1]: x01 = x/2+0.5; lin = x01/12.92 or ((x01+0.055)/1.055)^2.4."""
    x01 = x_in / 2 + 0.5
    lin = torch.where(x01 <= 0.04045, x01 / 12.92, ((x01 + 0.055) / 1.055) ** 2.4)
    return 2 * lin - 1


class FrappeEncoder(nn.Module):
    """All scale groups of one n-channel snapshot; uint8 RGB in, int8 latents out."""

    def __init__(self, config: FrappeConfig, n_ch: int):
        super().__init__()
        self.groups: list[ScaleGroup] = config.scale_groups(n_ch)
        self.linear_input = config.linear_input
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Conv2d(config.input_channels, g.channels, g.ps, stride=g.ps),
                          softsign_companding(g.channels))
            for g in self.groups)

    def input_transform(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(self.encoders[0][0].weight.dtype) / 127.5 - 1  # float32, or float64 for a .double() copy
        return linearise_input(x) if self.linear_input else x

    def companded(self, x_uint8: torch.Tensor) -> list[torch.Tensor]:
        """Float companded values y per group, before rounding."""
        x = self.input_transform(x_uint8)
        return [enc(x) for enc in self.encoders]

    def forward(self, x_uint8: torch.Tensor) -> list[torch.Tensor]:
        return [torch.clamp(torch.round(y), -127, 127).to(torch.int8) for y in self.companded(x_uint8)]


class FrappeDecoder(nn.Module):
    """Latent groups -> RGB in [-1, 1] (published `decoder` Sequential layout)."""

    def __init__(self, config: FrappeConfig, n_ch: int):
        super().__init__()
        self.groups = config.scale_groups(n_ch)
        self.decoder_ps = dps = config.decoder_ps
        total_in = sum(g.channels * decoder_channels_per_latent(g.ps, dps) for g in self.groups)
        dim, k, ratio = config.decoder_dim, config.decoder_kernel_size, int(config.decoder_mlp_ratio)
        blocks = [ConvNeXtBlock(dim, k, ratio, config.decoder_layerscale, config.decoder_layerscale_init)
                  if kind == "C" else TransformerBlock(dim, ratio)
                  for kind in config.decoder_arch.upper()]
        out = config.input_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(total_in, dim, k, padding="same", padding_mode="reflect"),
            *blocks,
            nn.Conv2d(dim, out * dps * dps, 1),
            nn.ConvTranspose2d(out * dps * dps, out, dps, stride=dps),
            nn.Hardtanh(),
        )

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        dtype = self.decoder[0].weight.dtype
        adapted = [adapt_to_decoder_grid(z.to(dtype), g.ps, self.decoder_ps)
                   for z, g in zip(latents, self.groups)]
        return self.decoder(torch.cat(adapted, dim=1))


def to_rgb_uint8(y: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> uint8: round_half_even((y + 1) * 127.5), clamped."""
    return torch.clamp(torch.round((y + 1) * 127.5), 0, 255).to(torch.uint8)


class FrappeModel(nn.Module):
    """One n-channel snapshot: `encoders.*` and `decoder.*` as in `merged.{n}.*`."""

    def __init__(self, config: FrappeConfig, n_ch: int):
        super().__init__()
        self.config, self.n_ch = config, n_ch
        self.encoder = FrappeEncoder(config, n_ch)
        self.decoder_net = FrappeDecoder(config, n_ch)

    @property
    def groups(self) -> list[ScaleGroup]:
        return self.encoder.groups

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under the published names, without the `merged.{n}.` prefix."""
        out = {f"encoders.{k}": v for k, v in self.encoder.encoders.state_dict().items()}
        out.update({f"decoder.{k}": v for k, v in self.decoder_net.decoder.state_dict().items()})
        return out

    def load_published(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        enc = {k[len("encoders."):]: v for k, v in tensors.items() if k.startswith("encoders.")}
        dec = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
        for part, state, label in ((self.encoder.encoders, enc, "encoders"),
                                   (self.decoder_net.decoder, dec, "decoder")):
            try:
                part.load_state_dict(state, strict=True)
            except RuntimeError as err:
                first = str(err).strip().splitlines()
                detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
                raise OtterliteError(f"{source}: snapshot merged.{self.n_ch}.{label} does not match "
                                     f"config.json ({detail}); check the config belongs to this "
                                     f"weights file") from None

    def latent_groups(self) -> list[tuple[int, int, int]]:
        """(patch, first channel, end channel) per scale group, as the container records them."""
        return [(g.ps, g.start, g.end) for g in self.groups]

    def sensor_encoder(self) -> FrappeEncoder:
        return self.encoder

    @torch.no_grad()
    def encode(self, x_uint8: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x_uint8)

    @torch.no_grad()
    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """Latents -> uint8 RGB (N, 3, H, W)."""
        return to_rgb_uint8(self.decoder_net(latents))

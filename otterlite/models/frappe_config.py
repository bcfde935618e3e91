"""FRAPPE `config.json`: parsing, validation and scale groups (no torch needed).

Scale groups: consecutive latent channels with the same patch size form one group
`(ps, start, end)`; e.g. ps=[32]*3+[16]*6+[8]*3 with n=12 gives
(32,0,3), (16,3,9), (8,9,12).
"""
from __future__ import annotations

from dataclasses import dataclass

from otterlite.errors import OtterliteError


# Bounds far beyond the published models (ps <= 32, decoder_dim 64..768, kernel 3, ratio 2), so a
# corrupted config is refused before it makes torch allocate without bound.
MAX_PATCH, MAX_DIM, MAX_KERNEL, MAX_MLP_RATIO = 256, 8192, 63, 64.0


@dataclass(frozen=True)
class ScaleGroup:
    ps: int
    start: int
    end: int

    @property
    def channels(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class FrappeConfig:
    ps: tuple[int, ...]
    decoder_ps: int
    input_channels: int
    encoder_arch: str
    decoder_dim: int
    decoder_kernel_size: int
    decoder_arch: str
    decoder_mlp_ratio: float
    decoder_layerscale: bool
    decoder_layerscale_init: float
    linear_input: bool
    n_trained: int

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "FrappeConfig":
        def need(key, kind):
            if key not in raw:
                raise OtterliteError(f"{source}: missing field '{key}'; a FRAPPE config needs it "
                                     f"(see UPSTREAM format: ps, decoder_ps, decoder_dim, ...)")
            value = raw[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise OtterliteError(f"{source}: field '{key}' = {value!r} should be {kind.__name__}")
            return value

        ps = need("ps", list)
        if not ps or not all(isinstance(p, int) and p > 0 and p & (p - 1) == 0 for p in ps):
            raise OtterliteError(f"{source}: 'ps' = {ps!r} must be a non-empty list of powers of two")
        cfg = cls(
            ps=tuple(ps),
            decoder_ps=need("decoder_ps", int),
            input_channels=need("input_channels", int),
            encoder_arch=need("encoder_arch", str),
            decoder_dim=need("decoder_dim", int),
            decoder_kernel_size=need("decoder_kernel_size", int),
            decoder_arch=need("decoder_arch", str),
            decoder_mlp_ratio=need("decoder_mlp_ratio", float),
            decoder_layerscale=bool(raw.get("decoder_layerscale", False)),
            decoder_layerscale_init=float(raw.get("decoder_layerscale_init", 1e-6)),
            linear_input=bool(raw.get("linear_input", False)),
            n_trained=need("n_trained", int),
        )
        cfg._check(source)
        return cfg

    def _check(self, source: str) -> None:
        problems = []
        if self.encoder_arch != "SC8":
            problems.append(f"encoder_arch = {self.encoder_arch!r} (only 'SC8' is supported)")
        if self.input_channels != 3:
            problems.append(f"input_channels = {self.input_channels} (must be 3)")
        if self.decoder_ps <= 0 or self.decoder_ps & (self.decoder_ps - 1):
            problems.append(f"decoder_ps = {self.decoder_ps} (must be a power of two)")
        if set(self.decoder_arch.upper()) - {"C", "T"}:
            problems.append(f"decoder_arch = {self.decoder_arch!r} (letters C and T only)")
        if not 1 <= self.n_trained <= len(self.ps):
            problems.append(f"n_trained = {self.n_trained} (must be 1..len(ps) = {len(self.ps)})")
        if max(self.ps) > MAX_PATCH or self.decoder_ps > MAX_PATCH:
            problems.append(f"patch sizes {list(self.ps)}, decoder_ps {self.decoder_ps} (at most {MAX_PATCH})")
        if not 1 <= self.decoder_dim <= MAX_DIM:
            problems.append(f"decoder_dim = {self.decoder_dim} (must be 1..{MAX_DIM})")
        if not 1 <= self.decoder_kernel_size <= MAX_KERNEL:
            problems.append(f"decoder_kernel_size = {self.decoder_kernel_size} (must be 1..{MAX_KERNEL})")
        if not 0 < self.decoder_mlp_ratio <= MAX_MLP_RATIO or int(self.decoder_mlp_ratio) < 1:
            problems.append(f"decoder_mlp_ratio = {self.decoder_mlp_ratio} (must be 1..{MAX_MLP_RATIO:g}; the "
                            f"decoder uses its integer part)")
        if problems:
            raise OtterliteError(f"{source}: invalid FRAPPE config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["ps"] = list(self.ps)
        return out

    def check_n_ch(self, n_ch: int) -> int:
        if not 1 <= n_ch <= self.n_trained:
            raise OtterliteError(f"--n-ch {n_ch} is out of range: this checkpoint has snapshots "
                                 f"for 1..{self.n_trained} channels")
        return n_ch

    def scale_groups(self, n_ch: int) -> list[ScaleGroup]:
        self.check_n_ch(n_ch)
        return scale_groups(self.ps[:n_ch])

    def largest_patch(self, n_ch: int) -> int:
        return max(self.ps[:n_ch])


def scale_groups(ps) -> list[ScaleGroup]:
    groups: list[ScaleGroup] = []
    for i, p in enumerate(ps):
        if groups and groups[-1].ps == p:
            groups[-1] = ScaleGroup(p, groups[-1].start, i + 1)
        else:
            groups.append(ScaleGroup(p, i, i + 1))
    return groups

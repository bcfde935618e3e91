"""Random-weight checkpoints written in the published formats, key by key from the
format description (not from our modules), plus an independent float64 computation of
the published model formulas to check the loaders and models against."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

PUBLISHED_PS = [32, 32, 32, 16, 16, 16, 16, 16, 16, 8, 8, 8]  # the published 12-channel layout
SMALL_FRAPPE = {
    "ps": [32, 16, 16, 8, 8, 4], "decoder_ps": 16, "input_channels": 3, "encoder_arch": "SC8",
    "decoder_dim": 16, "decoder_kernel_size": 3, "decoder_arch": "CT", "decoder_mlp_ratio": 2,
    "decoder_layerscale": True, "decoder_layerscale_init": 1e-6, "linear_input": False, "n_trained": 6,
}


def groups_of(ps):
    out = []
    for i, p in enumerate(ps):
        if out and out[-1][0] == p:
            out[-1][2] = i + 1
        else:
            out.append([p, i, i + 1])
    return [tuple(g) for g in out]


def decoder_in_channels(ps, dps):
    return sum((e - s) * ((dps // p) ** 2 if p < dps else 1) for p, s, e in groups_of(ps))


def frappe_snapshot(cfg, n, rng, realistic=False):
    """Random snapshot n. The default is a stress test (|σ| 1..5: a companding far steeper than
    trained models have, which even 12-bit weights cannot follow to 99%); realistic=True draws
    encoders at the scale of trained ones (weights N(0, 1/ps) as the embedded default's,
    |σ| 20..150 around upstream's initial r - 1 = 126, γ 0.7..1.6)."""
    t = {}
    r = lambda *shape, scale=0.1: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
    sigma, gamma, weight = ((20.0, 150.0), (0.7, 1.6), 1.0) if realistic else ((1.0, 5.0), (0.5, 1.5), 2.0)
    for s, (p, a, b) in enumerate(groups_of(cfg["ps"][:n])):
        c = b - a
        t[f"merged.{n}.encoders.{s}.0.weight"] = r(c, 3, p, p, scale=weight / p)
        t[f"merged.{n}.encoders.{s}.0.bias"] = r(c)
        t[f"merged.{n}.encoders.{s}.1.0._σ"] = (rng.uniform(*sigma, c) * rng.choice([-1, 1], c)).astype(np.float32)
        t[f"merged.{n}.encoders.{s}.1.2.γ"] = rng.uniform(*gamma, c).astype(np.float32)
    d, k, dps = cfg["decoder_dim"], cfg["decoder_kernel_size"], cfg["decoder_ps"]
    mlp = int(cfg["decoder_mlp_ratio"])
    pre = f"merged.{n}.decoder."
    t[pre + "0.weight"] = r(d, decoder_in_channels(cfg["ps"][:n], dps), k, k, scale=0.02)
    t[pre + "0.bias"] = r(d)
    i = 1
    for kind in cfg["decoder_arch"]:
        b = f"{pre}{i}."
        if kind == "C":
            t[b + "main.0.weight"], t[b + "main.0.bias"] = r(d, 1, k, k), r(d)
            t[b + "main.1.weight"], t[b + "main.1.bias"] = 1 + r(d), r(d)
            t[b + "main.2.weight"], t[b + "main.2.bias"] = r(d * mlp, d, 1, 1), r(d * mlp)
            t[b + "main.4.weight"], t[b + "main.4.bias"] = r(d, d * mlp, 1, 1), r(d)
            if cfg["decoder_layerscale"]:
                t[b + "scale.γ"] = 1 + r(d)
        else:
            inner = d + 2
            for nm in ("norm1", "norm2"):
                t[b + nm + ".weight"], t[b + nm + ".bias"] = 1 + r(inner), r(inner)
            t[b + "attn.qkv.weight"] = r(3 * 256, inner, 1, 1)
            t[b + "attn.proj.weight"], t[b + "attn.proj.bias"] = r(inner, 256, 1, 1, scale=0.05), r(inner)
            t[b + "mlp.0.weight"], t[b + "mlp.0.bias"] = r(inner * mlp, inner, 1, 1), r(inner * mlp)
            t[b + "mlp.1.weight"], t[b + "mlp.1.bias"] = r(inner * mlp, 1, 3, 3), r(inner * mlp)
            t[b + "mlp.3.weight"], t[b + "mlp.3.bias"] = r(inner, inner * mlp, 1, 1), r(inner)
        i += 1
    t[f"{pre}{i}.weight"], t[f"{pre}{i}.bias"] = r(3 * dps * dps, d, 1, 1), r(3 * dps * dps)
    t[f"{pre}{i + 1}.weight"], t[f"{pre}{i + 1}.bias"] = r(3 * dps * dps, 3, dps, dps), r(3)
    return t


def hub_snapshot(cache_dir, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` ("owner/name") in a Hugging Face cache laid out as
    huggingface_hub writes it (models--owner--name/refs/main + snapshots/REVISION), created."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def write_frappe(folder, cfg=SMALL_FRAPPE, seed=0, snapshots=None, realistic=False):
    rng = np.random.default_rng(seed)
    tensors = {}
    for n in snapshots or range(1, cfg["n_trained"] + 1):
        tensors.update(frappe_snapshot(cfg, n, rng, realistic))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "FRAPPE_pytorch_model.safetensors"))
    return folder


# --- SEA OTTER ------------------------------------------------------------------------------

def seaotter_tensors(arch, rng):
    r = lambda *s, scale=0.3: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    ks = 3 if arch == "D" else 1
    conv_w = lambda: (np.eye(3)[:, :, None, None] * (1 if ks == 1 else 0) + r(3, 3, ks, ks)).astype(np.float32)  # noqa: E731
    sig = lambda: rng.uniform(20, 200, 3).astype(np.float32)  # noqa: E731
    gam = lambda: rng.uniform(0.6, 1.4, 3).astype(np.float32)  # noqa: E731
    t = {"fwd.analysis_transform.0.weight": conv_w(), "fwd.analysis_transform.0.bias": r(3, scale=20) - 100}
    if arch in "ADFG":
        t["fwd.analysis_transform.1._σ"], t["fwd.analysis_transform.3.γ"] = sig(), gam()
    if arch == "E":
        t["fwd.analysis_transform.1.0._σ"], t["fwd.analysis_transform.1.2.γ"] = sig(), gam()
    if arch in "ADF":
        t["inv.synthesis_transform.1.γ"], t["inv.synthesis_transform.2._σ"] = gam(), sig()
        t["inv.synthesis_transform.3.weight"], t["inv.synthesis_transform.3.bias"] = conv_w() * 1.5, r(3, scale=20)
    if arch in "BE":
        scale = 0.01 if arch == "E" else 1.0
        t["inv.synthesis_transform.1.weight"] = conv_w() * scale
        t["inv.synthesis_transform.1.bias"] = r(3, scale=0.2 if arch == "E" else 20)
    if arch == "G":
        t["inv.synthesis_transform.0._σ"] = sig()
        for i in (2, 3, 5):
            t[f"inv.synthesis_transform.{i}.γ"] = gam()
        t["inv.synthesis_transform.4._σ"], t["inv.synthesis_transform.6._σ"] = sig(), sig()
        t["inv.synthesis_transform.7.weight"], t["inv.synthesis_transform.7.bias"] = conv_w(), r(3, scale=20)
    return t


def write_seaotter(folder, arch="A", K=3, seed=0):
    rng = np.random.default_rng(seed)
    t = seaotter_tensors(arch, rng)
    for i in range(K):
        t[f"qtable.{i}"] = rng.integers(1, 60, (3, 8, 8)).astype(np.int64)
        t[f"proxy.{i}.Q_unconstrained"] = rng.standard_normal((3, 8, 8)).astype(np.float32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"K": K, "color_xform_arch": arch, "lambdas": [0.1] * K}))
    save_file(t, str(folder / "seaotter_jpeg_pytorch_model.safetensors"))
    return folder, t


# --- independent float64 formulas -------------------------------------------------------------

def softsign(u, sigma_raw, r):
    sigma = np.abs(sigma_raw).reshape(1, -1, 1, 1) + 1e-6
    return r * u / (sigma + np.abs(u))


def expand(v, sigma_raw, r):
    sigma = np.abs(sigma_raw).reshape(1, -1, 1, 1) + 1e-6
    return sigma * v / np.maximum(r + 0.5 - np.abs(v), 1e-3)


def conv(x, w, b):
    pad = w.shape[-1] // 2
    out = F.conv2d(torch.from_numpy(x), torch.from_numpy(w.astype(np.float64)),
                   torch.from_numpy(b.astype(np.float64)), padding=pad)
    return out.numpy()


def scale(x, g):
    return x * g.reshape(1, -1, 1, 1).astype(np.float64)


def seaotter_forward(t, arch, rgb):
    """rgb (1,3,H,W) float64 -> float codec values (before clamp/round)."""
    a = "fwd.analysis_transform."
    u = conv(rgb, t[a + "0.weight"], t[a + "0.bias"])
    if arch == "B":
        return np.clip(u, -128, 127) + 128
    r = 31 if arch == "F" else 127
    if arch == "E":
        return scale(softsign(u, t[a + "1.0._σ"], r), t[a + "1.2.γ"]) + 128
    return scale(softsign(u, t[a + "1._σ"], r), t[a + "3.γ"]) + 128


def seaotter_inverse(t, arch, z):
    s = "inv.synthesis_transform."
    r = 31 if arch == "F" else 127
    if arch == "E":
        y = np.clip(conv((z - 128) / 126, t[s + "1.weight"], t[s + "1.bias"]), -1, 1)
        return 127.5 * y + 127.5
    v = z - 128
    if arch == "B":
        return np.clip(conv(v, t[s + "1.weight"], t[s + "1.bias"]), -128, 127) + 128
    if arch == "G":
        v = scale(softsign(v, t[s + "0._σ"], r), t[s + "2.γ"])
        v = expand(scale(v, t[s + "3.γ"]), t[s + "4._σ"], r)
        v = expand(scale(v, t[s + "5.γ"]), t[s + "6._σ"], r)
        return conv(v, t[s + "7.weight"], t[s + "7.bias"]) + 128
    v = expand(scale(v, t[s + "1.γ"]), t[s + "2._σ"], r)
    return conv(v, t[s + "3.weight"], t[s + "3.bias"]) + 128


def frappe_encode(t, cfg, n, x_uint8):
    """x (1,3,H,W) uint8 -> list of int8 latents, per UPSTREAM in float64."""
    x = x_uint8.astype(np.float64) / 127.5 - 1
    if cfg.get("linear_input"):
        x01 = x / 2 + 0.5
        x = 2 * np.where(x01 <= 0.04045, x01 / 12.92, ((x01 + 0.055) / 1.055) ** 2.4) - 1
    out = []
    for s, (p, a, b) in enumerate(groups_of(cfg["ps"][:n])):
        pre = f"merged.{n}.encoders.{s}."
        w = t[pre + "0.weight"].astype(np.float64)
        _, _, hh, ww = x.shape
        patches = x[0].reshape(3, hh // p, p, ww // p, p).transpose(1, 3, 0, 2, 4).reshape(hh // p, ww // p, -1)
        u = patches @ w.reshape(w.shape[0], -1).T + t[pre + "0.bias"]
        u = u.transpose(2, 0, 1)[None]
        y = scale(softsign(u, t[pre + "1.0._σ"], 127), t[pre + "1.2.γ"])
        out.append(np.clip(np.round(y), -127, 127).astype(np.int8))
    return out


def layer_norm(x, w, b):
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def dwconv(x, w, b):
    out = F.conv2d(torch.from_numpy(x), torch.from_numpy(w.astype(np.float64)),
                   torch.from_numpy(b.astype(np.float64)), padding=w.shape[-1] // 2, groups=x.shape[1])
    return out.numpy()


def frappe_decode(t, cfg, n, latents):
    """latents -> decoder output in [-1, 1], float64, per UPSTREAM."""
    dps, pre = cfg["decoder_ps"], f"merged.{n}.decoder."
    parts = []
    for z, (p, _, _) in zip(latents, groups_of(cfg["ps"][:n])):
        z = z.astype(np.float64)
        if p < dps:
            f = dps // p
            c, h, w = z.shape[1:]
            z = z.reshape(1, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4).reshape(1, c * f * f, h // f, w // f)
        elif p > dps:
            f = p // dps
            z = z.repeat(f, axis=2).repeat(f, axis=3)
        parts.append(z)
    x = np.concatenate(parts, axis=1)
    k = cfg["decoder_kernel_size"]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="reflect")
    x = F.conv2d(torch.from_numpy(xp), torch.from_numpy(t[pre + "0.weight"].astype(np.float64)),
                 torch.from_numpy(t[pre + "0.bias"].astype(np.float64))).numpy()
    i = 1
    for kind in cfg["decoder_arch"]:
        b = f"{pre}{i}."
        if kind == "C":
            h = dwconv(x, t[b + "main.0.weight"], t[b + "main.0.bias"])
            h = layer_norm(h, t[b + "main.1.weight"], t[b + "main.1.bias"])
            h = gelu_tanh(conv(h, t[b + "main.2.weight"], t[b + "main.2.bias"]))
            h = conv(h, t[b + "main.4.weight"], t[b + "main.4.bias"])
            if b + "scale.γ" in t:
                h = scale(h, t[b + "scale.γ"])
            x = x + h
        else:
            _, c, hh, ww = x.shape
            rows = np.broadcast_to((np.arange(hh) - (hh - 1) / 2)[:, None], (hh, ww))
            cols = np.broadcast_to((np.arange(ww) - (ww - 1) / 2)[None, :], (hh, ww))
            xp = np.concatenate([x, rows[None, None], cols[None, None]], axis=1)
            h = layer_norm(xp, t[b + "norm1.weight"], t[b + "norm1.bias"])
            qkv = conv(h, t[b + "attn.qkv.weight"], np.zeros(768)).reshape(3, 8, 32, hh * ww)
            att = np.einsum("hdn,hdm->hnm", qkv[0], qkv[1]) / np.sqrt(32)
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            o = np.einsum("hnm,hdm->hdn", att, qkv[2]).reshape(1, 256, hh, ww)
            xp = xp + conv(o, t[b + "attn.proj.weight"], t[b + "attn.proj.bias"])
            h = layer_norm(xp, t[b + "norm2.weight"], t[b + "norm2.bias"])
            h = conv(h, t[b + "mlp.0.weight"], t[b + "mlp.0.bias"])
            h = gelu_tanh(dwconv(h, t[b + "mlp.1.weight"], t[b + "mlp.1.bias"]))
            xp = xp + conv(h, t[b + "mlp.3.weight"], t[b + "mlp.3.bias"])
            x = xp[:, :c]
        i += 1
    x = conv(x, t[f"{pre}{i}.weight"], t[f"{pre}{i}.bias"])
    w = t[f"{pre}{i + 1}.weight"].astype(np.float64)  # (Cin, 3, dps, dps)
    _, cin, hh, ww = x.shape
    y = np.einsum("chw,cokl->ohkwl", x[0], w).reshape(3, hh * dps, ww * dps)
    y = y + t[f"{pre}{i + 1}.bias"].reshape(3, 1, 1)
    return np.clip(y, -1, 1)[None]


# --- SEA OTTER as upstream initialises it -------------------------------------------------------

JFIF_FORWARD = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
JFIF_INVERSE = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def centre_tap_conv(matrix, ks):
    """(3, 3) matrix -> (3, 3, ks, ks) conv weight holding it at the centre tap, zeros elsewhere."""
    w = np.zeros((3, 3, ks, ks))
    w[:, :, ks // 2, ks // 2] = matrix
    return w


def upstream_seaotter_tensors(arch, init, rng, perturb=0.01):
    """`fwd.*` / `inv.*` as upstream sets them before training (UPSTREAM.md): init "jfif" (conv
    = the JFIF matrices at the centre tap, forward bias (-128, 0, 0), inverse bias 0) or
    "identity" (conv = I, forward bias -128, inverse bias 0); every Softsign / SoftsignExpand
    _σ = r - 1 and every γ = 1. Then each parameter p becomes p * (1 + perturb * N(0, 1)), and
    each conv weight also gets + perturb * 0.01 * N(0, 1), so zero taps become small, not zero."""
    ks = 3 if arch == "D" else 1
    sigma = 30.0 if arch == "F" else 126.0
    fwd_m, inv_m = (JFIF_FORWARD, JFIF_INVERSE) if init == "jfif" else (np.eye(3), np.eye(3))
    fwd_b = np.array([-128.0, 0.0, 0.0]) if init == "jfif" else np.full(3, -128.0)
    a, s = "fwd.analysis_transform.", "inv.synthesis_transform."
    t = {a + "0.weight": centre_tap_conv(fwd_m, ks), a + "0.bias": fwd_b}
    if arch in "ADFG":
        t[a + "1._σ"], t[a + "3.γ"] = np.full(3, sigma), np.ones(3)
    if arch == "E":
        t[a + "1.0._σ"], t[a + "1.2.γ"] = np.full(3, sigma), np.ones(3)
    inv_conv = {"A": 3, "D": 3, "F": 3, "B": 1, "E": 1, "G": 7}[arch]
    t[f"{s}{inv_conv}.weight"], t[f"{s}{inv_conv}.bias"] = centre_tap_conv(inv_m, ks), np.zeros(3)
    if arch in "ADF":
        t[s + "1.γ"], t[s + "2._σ"] = np.ones(3), np.full(3, sigma)
    if arch == "G":
        for i in (2, 3, 5):
            t[f"{s}{i}.γ"] = np.ones(3)
        for i in (0, 4, 6):
            t[f"{s}{i}._σ"] = np.full(3, sigma)
    out = {}
    for key, value in t.items():
        value = value * (1 + perturb * rng.standard_normal(value.shape))
        if key.endswith(".weight"):
            value = value + perturb * 0.01 * rng.standard_normal(value.shape)
        out[key] = value.astype(np.float32)
    return out


def write_upstream_seaotter(folder, arch="A", init="jfif", perturb=0.01, seed=0, K=2):
    """A SEA OTTER checkpoint folder initialised as upstream does (upstream_seaotter_tensors)."""
    rng = np.random.default_rng(seed)
    t = upstream_seaotter_tensors(arch, init, rng, perturb)
    for i in range(K):
        t[f"qtable.{i}"] = rng.integers(1, 60, (3, 8, 8)).astype(np.int64)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"K": K, "color_xform_arch": arch, "lambdas": [0.1] * K}))
    save_file(t, str(folder / "seaotter_jpeg_pytorch_model.safetensors"))
    return folder, t


# WaLLoC (WALLOC.md): RGB_16x.json + RGB_16x.pth, a torch.save'd {"model_state_dict": ...}
WALLOC_CONFIG = {"channels": 3, "J": 3, "Ne": None, "Nd": 32, "latent_dim": 12, "latent_bits": 8,
                 "lightweight_encode": True}


def walloc_state(cfg: dict, seed: int = 0, conv_scale: float = 1.0) -> dict:
    """The published key layout: the wavelet buffers as pytorch_wavelets registers them
    (analysis filters reversed, (1, 1, 10, 1) columns and (1, 1, 1, 10) rows), the 1x1 conv
    `encoder.0`, and diffusers' Decoder under `decoder.1.` (random weights)."""
    import pywt
    from diffusers.models.autoencoders.autoencoder_kl import Decoder

    g = torch.Generator().manual_seed(seed)
    w = pywt.Wavelet("bior4.4")
    state = {}
    for prefix, (lo, hi), names in (("wt", (w.dec_lo[::-1], w.dec_hi[::-1]), ("h0", "h1")),
                                     ("iwt", (w.rec_lo, w.rec_hi), ("g0", "g1"))):
        for name, taps in zip(names, (lo, hi)):
            t = torch.tensor(list(taps), dtype=torch.float32)
            state[f"{prefix}.{name}_col"] = t.reshape(1, 1, -1, 1)
            state[f"{prefix}.{name}_row"] = t.reshape(1, 1, 1, -1)
    bands = cfg["channels"] * 4 ** cfg["J"]
    state["encoder.0.weight"] = conv_scale * torch.randn(cfg["latent_dim"], bands, 1, 1, generator=g) / bands ** 0.5 * 8
    state["encoder.0.bias"] = torch.randn(cfg["latent_dim"], generator=g)
    torch.manual_seed(seed)
    decoder = Decoder(in_channels=cfg["latent_dim"], out_channels=bands, up_block_types=("UpDecoderBlock2D",),
                      block_out_channels=(cfg["Nd"],), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                      mid_block_add_attention=True)
    state.update({f"decoder.1.{k}": v for k, v in decoder.state_dict().items()})
    return state


def write_walloc(folder: Path, cfg: dict | None = None, state: dict | None = None, name: str = "RGB_16x") -> Path:
    cfg = cfg or WALLOC_CONFIG
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    torch.save({"model_state_dict": state if state is not None else walloc_state(cfg)}, folder / f"{name}.pth")
    return folder


def walloc_latents_float64(state: dict, cfg: dict, rgb_uint8: np.ndarray) -> np.ndarray:
    """WALLOC.md's encoder formulas computed independently: PyWavelets' dwt2 (periodization)
    per channel and level, bands stacked [cA, cH, cV, cD] per channel, the 1x1 conv,
    ToUniform with math.erf, round half to even. (H, W, 3) uint8 -> (12, H/8, W/8)."""
    import math

    import pywt

    x = [rgb_uint8[..., c].astype(np.float64) / 255 - 0.5 for c in range(3)]
    for _ in range(cfg["J"]):
        nxt = []
        for band in x:
            a, (h, v, d) = pywt.dwt2(band, "bior4.4", mode="periodization")
            nxt += [a, h, v, d]
        x = nxt
    bands = np.stack(x)
    w = state["encoder.0.weight"].double().numpy()[:, :, 0, 0]
    u = np.einsum("ob,bhw->ohw", w, bands) + state["encoder.0.bias"].double().numpy()[:, None, None]
    scale = (2 ** (cfg["latent_bits"] - 1) - 1) / 1.85
    latent_max = 2 ** (cfg["latent_bits"] - 1) - 1 + 0.5 - 1e-3
    phi = np.vectorize(lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2))))(u / scale)
    return 2 * latent_max * (phi - 0.5)

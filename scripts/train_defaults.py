"""Train the embedded default FRAPPE and SEA OTTER checkpoints (deterministic, CPU).

    python scripts/train_defaults.py [--out otterlite/models/defaults] [--frappe-steps N]
                                     [--walloc-steps N] [--models frappe,seaotter,walloc]

Data: scikit-image's bundled photos. Held out (never trained on): astronaut, rocket,
motorcycle_right. Writes both checkpoints in the published formats and prints PSNR / bpp
on the held-out photos.

FRAPPE: one 12-channel model (3 at patch 32, 6 at 16, 3 at 8; decoder_ps 8, so coarser
latents are nearest-upsampled and each latent channel is one decoder input channel) is
trained with a random channel prefix n per batch (channels >= n zeroed, straight-through
rounding). Snapshot `merged.{n}` is that model with the decoder's first conv restricted to
the first n input channels, which equals feeding zeros, so all 12 snapshots are exact
restrictions of one trained model.

WaLLoC: the published Codec2D layout (J = 3, 12 latent channels, lightweight encoder) with
a small decoder (Nd = 64 instead of 768), trained end to end on MSE with straight-through
rounding of the ToUniform latents plus a small log-magnitude rate term, like FRAPPE's.

SEA OTTER: arch A set to the JFIF YCbCr matrices with near-linear companding, K = 3
operating points at the IJG qtables of quality 25, 50, 75, and the inverse's channel mix
refitted by least squares on the real libjpeg decodes of the training photos. (Training
all parameters through a differentiable JPEG proxy did not beat JFIF in short runs, so
the default stays this simple.)
"""
from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from otterlite.container import LatentFrame, write_container
from otterlite.images import load_rgb, pad_to_multiple, psnr, sample_photo
from otterlite.models import checkpoint
from otterlite.models.frappe import FrappeModel
from otterlite.models.frappe_config import FrappeConfig
from otterlite.models.jpeg import read_codec_jpeg, write_codec_jpeg
from otterlite.models.seaotter import SeaOtterBundle
from otterlite.models.walloc import WallocConfig, WallocModel

TRAIN = ["chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
         "retina.jpg", "color.png"]
HELD_OUT = ["astronaut.png", "rocket.jpg", "motorcycle_right.png"]
FRAPPE_CONFIG = {
    "ps": [32] * 3 + [16] * 6 + [8] * 3, "decoder_ps": 8, "input_channels": 3,
    "encoder_arch": "SC8", "decoder_dim": 64, "decoder_kernel_size": 3, "decoder_arch": "CCC",
    "decoder_mlp_ratio": 2, "decoder_layerscale": True, "decoder_layerscale_init": 0.1,
    "linear_input": False, "n_trained": 12,
}
LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
          47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32
QUALITIES = [25, 50, 75]
LAMBDAS = [0.0, 0.0, 0.0]  # no rate-distortion training: recorded as 0
WALLOC_CONFIG = WallocConfig(channels=3, J=3, Nd=64, latent_dim=12, latent_bits=8)


def ijg_table(base: list[int], quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (b * scale + 50) // 100)) for b in base]


def photos(names):
    return [load_rgb(sample_photo(n)) for n in names]


def random_crops(images, rng, batch, size):
    out = np.empty((batch, 3, size, size), np.uint8)
    for i in range(batch):
        img = images[rng.integers(len(images))]
        y = rng.integers(img.shape[0] - size + 1)
        x = rng.integers(img.shape[1] - size + 1)
        crop = img[y:y + size, x:x + size]
        if rng.integers(2):
            crop = crop[:, ::-1]
        out[i] = crop.transpose(2, 0, 1)
    return torch.from_numpy(out)


def ste_round(x):
    return x + (torch.round(x) - x).detach()


def train_frappe(images, steps, rng):
    config = FrappeConfig.from_dict(FRAPPE_CONFIG)
    model = FrappeModel(config, 12)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=2e-5)
    start = time.time()
    for step in range(steps):
        x = random_crops(images, rng, 16, 128)
        n = int(rng.integers(1, 13))
        ys = model.encoder.companded(x)
        latents = []
        for g, y in zip(model.groups, ys):
            keep = torch.zeros(1, g.channels, 1, 1)
            keep[:, : max(0, min(n, g.end) - g.start)] = 1
            latents.append(torch.clamp(ste_round(y), -127, 127) * keep)
        out = model.decoder_net(latents)
        target = x.to(torch.float32) / 127.5 - 1
        rate = sum(torch.log2(1 + y.abs()).mean() for y in ys) / len(ys)
        loss = torch.mean((out - target) ** 2) + 2e-4 * rate
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            mse = torch.mean(((out.clamp(-1, 1) - target) * 127.5) ** 2).item()
            print(f"frappe step {step:5d} n={n:2d} psnr {10 * math.log10(255 ** 2 / mse):5.2f} dB "
                  f"rate {rate.item():.2f} ({time.time() - start:.0f}s)", flush=True)
    return model.eval()


def train_walloc(images, steps, rng):
    model = WallocModel(WALLOC_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    encoder, start = model.sensor_encoder(), time.time()
    for step in range(steps):
        x = random_crops(images, rng, 16, 128)
        y = encoder.companded(x)
        out = model.decode_float(torch.clamp(ste_round(y), -127, 127))
        target = x.to(torch.float32) / 255 - 0.5
        rate = torch.log2(1 + y.abs()).mean()
        loss = torch.mean((out - target) ** 2) + 5e-5 * rate
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            mse = torch.mean(((out - target) * 255) ** 2).item()
            print(f"walloc step {step:5d} psnr {10 * math.log10(255 ** 2 / mse):5.2f} dB "
                  f"rate {rate.item():.2f} ({time.time() - start:.0f}s)", flush=True)
    return model.eval()


def evaluate_walloc(model, sha):
    rows = []
    for name, rgb in zip(HELD_OUT, photos(HELD_OUT)):
        padded = pad_to_multiple(rgb, WALLOC_CONFIG.stride)
        x = torch.from_numpy(padded.transpose(2, 0, 1).copy())[None]
        lat = model.encode(x)[0]
        rec = model.decode([lat])[0].numpy().transpose(1, 2, 0)[: rgb.shape[0], : rgb.shape[1]]
        frame = LatentFrame(sha, rgb.shape[1], rgb.shape[0], [(WALLOC_CONFIG.stride, 0, 12)], [lat[0].numpy()])
        bpp = 8 * len(write_container(frame)) / (rgb.shape[0] * rgb.shape[1])
        rows.append(f"{name} {psnr(rgb, rec):.2f} dB {bpp:.4f} bpp")
    print("WaLLoC: " + "; ".join(rows))


def snapshot(full: FrappeModel, n: int) -> FrappeModel:
    """The n-channel restriction of the prefix-trained model."""
    snap = FrappeModel(full.config, n)
    with torch.no_grad():
        for enc_s, enc_f, g in zip(snap.encoder.encoders, full.encoder.encoders, snap.groups):
            c = g.channels
            enc_s[0].weight.copy_(enc_f[0].weight[:c])
            enc_s[0].bias.copy_(enc_f[0].bias[:c])
            getattr(enc_s[1][0], "_σ").copy_(getattr(enc_f[1][0], "_σ")[:c])
            getattr(enc_s[1][2], "γ").copy_(getattr(enc_f[1][2], "γ")[:c])
        state = full.decoder_net.decoder.state_dict()
        state["0.weight"] = state["0.weight"][:, :n]
        snap.decoder_net.decoder.load_state_dict(state)
    return snap.eval()


def jfif_init(bundle: SeaOtterBundle, sigma: float = 1e5):
    """JFIF matrices; σ large so the companding is linear to within 0.2%; the inverse σ is
    scaled by 127.5/127 to cancel SoftsignExpand's eps = 0.5 near v = 0."""
    fwd_m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    inv_m = torch.linalg.inv(fwd_m)
    gamma = sigma / 127.0
    with torch.no_grad():
        a, s = bundle.fwd.analysis_transform, bundle.inv.synthesis_transform
        a[0].weight.copy_(fwd_m.view(3, 3, 1, 1))
        a[0].bias.copy_(torch.tensor([-128.0, 0.0, 0.0]))
        getattr(a[1], "_σ").fill_(sigma)
        getattr(a[3], "γ").fill_(gamma)
        getattr(s[1], "γ").fill_(1 / gamma)
        getattr(s[2], "_σ").fill_(sigma * 127.5 / 127)
        s[3].weight.copy_(inv_m.view(3, 3, 1, 1))
        s[3].bias.zero_()


def fit_inverse(bundle: SeaOtterBundle, images) -> None:
    """Least-squares fit of the inverse's final 1x1 conv (3x3 weights + bias) to the
    training photos, on the real libjpeg decode at every operating point."""
    s = bundle.inv.synthesis_transform
    feats, targets = [], []
    for rgb in images:
        codec = bundle.fwd.to_codec_uint8(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])
        codec = codec[0].numpy().transpose(1, 2, 0)
        for k in range(bundle.K):
            comps, _ = read_codec_jpeg(write_codec_jpeg(codec, bundle.qtables[k], "00" * 32, k))
            z = torch.from_numpy(comps.transpose(2, 0, 1).astype(np.float32))[None] - 128
            with torch.no_grad():
                v = s[2](s[1](s[0](z)))[0].reshape(3, -1).T.double().numpy()
            feats.append(np.hstack([v, np.ones((len(v), 1))]))
            targets.append(rgb.reshape(-1, 3).astype(np.float64) - 128)
    sol, *_ = np.linalg.lstsq(np.concatenate(feats), np.concatenate(targets), rcond=None)
    with torch.no_grad():
        s[3].weight.copy_(torch.tensor(sol[:3].T, dtype=torch.float32).view(3, 3, 1, 1))
        s[3].bias.copy_(torch.tensor(sol[3], dtype=torch.float32))


def build_seaotter(images) -> SeaOtterBundle:
    qtables = [[ijg_table(LUMA, q), ijg_table(CHROMA, q), ijg_table(CHROMA, q)] for q in QUALITIES]
    bundle = SeaOtterBundle("A", [np.array(t).reshape(3, 8, 8) for t in qtables], LAMBDAS).eval()
    jfif_init(bundle)
    fit_inverse(bundle, images)
    return bundle


def evaluate_frappe(snaps, sha):
    for n in (3, 6, 12):
        model = snaps[n]
        big = max(g.ps for g in model.groups)
        rows = []
        for name, rgb in zip(HELD_OUT, photos(HELD_OUT)):
            padded = pad_to_multiple(rgb, big)
            x = torch.from_numpy(padded.transpose(2, 0, 1).copy())[None]
            lat = model.encode(x)
            rec = model.decode(lat)[0].numpy().transpose(1, 2, 0)[: rgb.shape[0], : rgb.shape[1]]
            frame = LatentFrame(sha, rgb.shape[1], rgb.shape[0],
                                [(g.ps, g.start, g.end) for g in model.groups], [z[0].numpy() for z in lat])
            bpp = 8 * len(write_container(frame)) / (rgb.shape[0] * rgb.shape[1])
            rows.append(f"{name} {psnr(rgb, rec):.2f} dB {bpp:.4f} bpp")
        print(f"FRAPPE n={n}: " + "; ".join(rows))


def jfif_bytes_psnr(rgb, tables):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", qtables=tables, subsampling=0)
    rec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return len(buf.getvalue()), psnr(rgb, rec)


def evaluate_seaotter(bundle):
    for name, rgb in zip(HELD_OUT, photos(HELD_OUT)):
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
        codec = bundle.fwd.to_codec_uint8(x)[0].numpy().transpose(1, 2, 0)
        for k in range(bundle.K):
            data = write_codec_jpeg(codec, bundle.qtables[k], "00" * 32, k)
            comps, _ = read_codec_jpeg(data)
            rec = bundle.inv.to_rgb_uint8(torch.from_numpy(comps.transpose(2, 0, 1).copy())[None])
            p = psnr(rgb, rec[0].numpy().transpose(1, 2, 0))
            size, jp = jfif_bytes_psnr(rgb, bundle.qtables[k][:2])
            pixels = rgb.shape[0] * rgb.shape[1]
            print(f"SEA OTTER {name} k={k}: {8 * len(data) / pixels:.3f} bpp {p:.2f} dB | "
                  f"JFIF same qtables {8 * size / pixels:.3f} bpp {jp:.2f} dB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="otterlite/models/defaults")
    parser.add_argument("--frappe-steps", type=int, default=3000)
    parser.add_argument("--walloc-steps", type=int, default=3000)
    parser.add_argument("--models", default="frappe,seaotter,walloc", help="which defaults to (re)train")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    images = photos(TRAIN)
    out = Path(args.out)
    chosen = args.models.split(",")
    if "walloc" in chosen:
        torch.manual_seed(0)
        walloc = train_walloc(images, args.walloc_steps, np.random.default_rng(0))
        checkpoint.write_walloc_checkpoint(out / "walloc", walloc)
        evaluate_walloc(walloc, checkpoint.load_walloc(str(out / "walloc"))[1].sha256)
    if "frappe" in chosen:
        train_and_write_frappe(images, args.frappe_steps, out)
    if "seaotter" in chosen:
        train_and_write_seaotter(images, out)


def train_and_write_frappe(images, steps, out):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    full = train_frappe(images, steps, rng)
    snaps = {n: snapshot(full, n) for n in range(1, 13)}
    checkpoint.write_checkpoint(out / "frappe", checkpoint.FRAPPE, FRAPPE_CONFIG, checkpoint.frappe_tensors(snaps))
    sha = checkpoint.read_checkpoint(str(out / "frappe"), checkpoint.FRAPPE).sha256
    evaluate_frappe(snaps, sha)


def train_and_write_seaotter(images, out):
    bundle = build_seaotter(images)
    so_config = {"K": bundle.K, "color_xform_arch": "A", "lambdas": LAMBDAS,
                 "qtable_source": f"IJG tables at quality {QUALITIES}"}
    checkpoint.write_checkpoint(out / "seaotter", checkpoint.SEAOTTER, so_config, checkpoint.seaotter_tensors(bundle))
    evaluate_seaotter(bundle)


if __name__ == "__main__":
    main()
